// Pieces shared by the attention kernels (attention_fwd.cu, attention_bwd.cu): tile shapes, tile
// loads into shared memory, the score of one (query, key) pair (scale, bias, causal mask) and the
// dropout mask. Device code and small host helpers; no torch.
//
// Every kernel gives each warp 16 rows (the forward: 16 or 32) of a "main" tile (queries, or keys
// for dK/dV) and streams tiles of the other sequence through shared memory. Tiles live in shared
// memory row-major with leading dimension kD + 16 bytes: the padding spreads the 8 rows of an
// ldmatrix (and of the 32-bit fragment loads) over all banks, and keeps every row 16-byte aligned
// for ldmatrix and cp.async.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention/attention.h"
#include "common/async_copy.cuh"
#include "common/dlk_cuda.cuh"
#include "common/mma.cuh"
#include "common/philox.cuh"

namespace dlk {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory leading dimension (elements) of a tile of head dimension kD.
template <typename T, int kD>
constexpr int kLd = kD + 16 / int(sizeof(T));

// main: rows of the tile each block owns (16 per warp); streamed: rows of each streamed tile.
struct Tiles {
  int main, streamed;
};

// Backward (dK/dV: main = keys, streamed = queries; dQ: main = queries, streamed = keys).
template <typename T, int kD>
__host__ __device__ constexpr Tiles bwd_tiles() {
  if constexpr (sizeof(T) == 2) return {kD <= 128 ? 64 : 32, kD <= 64 ? 64 : kD <= 128 ? 32 : 16};
  if constexpr (kD <= 32) return {64, 64};
  if constexpr (kD <= 64) return {64, 32};
  if constexpr (kD <= 96) return {32, 32};
  return {kD <= 128 ? 32 : 16, 16};
}

// kD: the head dimension rounded up to a supported tile width; f(integral_constant<int, kD>).
template <typename F>
void dispatch_head_dim(int D, F&& f) {
  if (D <= 16) return f(std::integral_constant<int, 16>{});
  if (D <= 32) return f(std::integral_constant<int, 32>{});
  if (D <= 64) return f(std::integral_constant<int, 64>{});
  if (D <= 96) return f(std::integral_constant<int, 96>{});
  if (D <= 128) return f(std::integral_constant<int, 128>{});
  if (D <= 256) return f(std::integral_constant<int, 256>{});
  throw std::invalid_argument("dlkern attention: head dimension D must be <= 256, got " +
                              std::to_string(D));
}

// Rows [row0, row0 + R) of a (L, D) matrix (row stride `stride`, unit column stride) into the
// shared tile s (R, kLd), zero where row >= L or column >= D (zeros keep the padded products
// finite: the emulator and uninitialized shared memory hold NaN). vec: 16-byte accesses (D, the
// stride and the pointer are multiples of 16 bytes).
template <typename T, int kD, int R>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t stride, int row0, int L, int D,
                                          bool vec) {
  constexpr int V = kVec<T>;
  constexpr int kChunks = kD / V;  // per row
  for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = (idx % kChunks) * V;
    T* dst = s + r * kLd<T, kD> + c;
    const T* src = g + int64_t(row0 + r) * stride + c;
    const bool row_ok = row0 + r < L;
    if (vec && row_ok && c < D) {
      *reinterpret_cast<Vec<T, V>*>(dst) = *reinterpret_cast<const Vec<T, V>*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) dst[e] = row_ok && c + e < D ? src[e] : from_float<T>(0.f);
    }
  }
}

// load_tile through cp.async (common/async_copy.cuh) when vec: 16-byte copies, zero fill for rows
// >= L and columns >= D, complete at the caller's cp_async_wait; else the synchronous load_tile.
// Either way the tile is visible to the block after the wait and the next __syncthreads. The
// caller commits the group.
// kThreads: the block size. The loop stays rolled: unrolled, its addresses cost the forward
// kernel registers it does not have (spills at head dim 128).
template <typename T, int kD, int R, int kThreads>
__device__ __forceinline__ void load_tile_async(T* s, const T* g, int64_t stride, int row0, int L, int D,
                                                bool vec) {
  if (!vec) return load_tile<T, kD, R>(s, g, stride, row0, L, D, false);
  constexpr int V = kVec<T>;
  constexpr int kChunks = kD / V;  // per row
#pragma unroll 1
  for (int idx = threadIdx.x; idx < R * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * V;
    const bool ok = row0 + r < L && c < D;
    cp_async_16(s + r * kLd<T, kD> + c, ok ? g + int64_t(row0 + r) * stride + c : g, ok);
  }
}

// The (L, D) matrix of batch b, head h of a (B, H, L, D) operand.
template <typename T>
__device__ __forceinline__ const T* head_ptr(const void* base, const AttentionStrides& s, int b, int h) {
  return static_cast<const T*>(base) + b * s.b + h * s.h;
}

// Where the rows of sequence b lie (AttentionSeqs): its lengths, and the first packed row of its
// queries and keys (0 in the padded layout, whose lengths are the shape's).
struct Seq {
  int Lq, Lk;
  int q_start, k_start;  // int32 as cu_seqlens
  bool packed;
  int64_t total_q;

  __device__ __forceinline__ static Seq make(const AttentionSeqs& s, const AttentionShape& sh, int b) {
    if (s.cu_q == nullptr) return {sh.Lq, sh.Lk, 0, 0, false, 0};
    const int q0 = s.cu_q[b], k0 = s.cu_k[b];
    return {s.cu_q[b + 1] - q0, s.cu_k[b + 1] - k0, q0, k0, true, s.total_q};
  }
  // The (L, D) matrix of an input operand (q, do: query rows; k, v: key rows) of head h.
  template <typename T>
  __device__ __forceinline__ const T* in(const void* base, const AttentionStrides& st, int b, int h,
                                         bool keys) const {
    return head_ptr<T>(base, st, b, h) + int64_t(keys ? k_start : q_start) * st.l;
  }
  // A contiguous output's (L, D) matrix of head h among H heads and its row stride: (B, H, L, D)
  // padded, (total, H, D) packed. L is the sequence's length of that side.
  __device__ __forceinline__ int64_t out_offset(int b, int h, int H, int L, int D, bool keys) const {
    return packed ? (int64_t(keys ? k_start : q_start) * H + h) * D : (int64_t(b) * H + h) * L * D;
  }
  __device__ __forceinline__ int64_t out_ld(int H, int D) const { return packed ? int64_t(H) * D : D; }
  // The per-query-row fp32 vectors (lse, delta) of head h: (B, Hq, Lq) padded, (Hq, total_q) packed.
  __device__ __forceinline__ int64_t row_offset(int b, int h, int Hq) const {
    return packed ? h * total_q + q_start : (int64_t(b) * Hq + h) * Lq;
  }
};

// A (16, 8) fp32 accumulator tile per entry of n-tiles.
template <int N>
struct Acc {
  float c[N][4];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) c[n][i] = 0.f;
  }
};

// acc[mt][n] += A_mt · B_nᵀ for the warp's kMT m16 tiles: A_mt = a_tile[16 mt : 16 mt + 16, 0:kK],
// B_n = b_tile[8n : 8n + 8, 0:kK] (both row-major in shared memory; the "x · yᵀ" products Q·Kᵀ,
// dO·Vᵀ, K·Qᵀ, V·dOᵀ). Per k-step: kMT A loads and N / 2 B loads (one ldmatrix.x4 each for 16-bit
// T) for kMT·N products, the B fragments shared by the m-tiles (FlashAttention-2's warp tile).
template <typename T, int kK, int N, int kMT>
__device__ __forceinline__ void mma_abt(Acc<N> (&acc)[kMT], const T* a_tile, int lda, const T* b_tile,
                                        int ldb) {
  static_assert(N % 2 == 0 && kK % 16 == 0, "n-tiles in pairs, k in steps of 16");
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    FragA<T> a[kMT];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) load_a_x4(a[mt], a_tile + mt * 16 * lda + kk * 16, lda);
#pragma unroll
    for (int n = 0; n < N; n += 2) {
      FragB<T> b[2];
      load_b_x4(b, b_tile + n * 8 * ldb + kk * 16, ldb);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_m16n8k16(acc[mt].c[n], a[mt], b[0]);
        mma_m16n8k16(acc[mt].c[n + 1], a[mt], b[1]);
      }
    }
  }
}
template <typename T, int kK, int N>
__device__ __forceinline__ void mma_abt(Acc<N>& acc, const T* a_tile, const T* b_tile, int ld) {
  mma_abt<T, kK, N, 1>(reinterpret_cast<Acc<N>(&)[1]>(acc), a_tile, ld, b_tile, ld);
}

// acc[mt][n] += P_mt · B[:, 8n : 8n + 8] with P_mt the (16, kK) matrix held as C fragments
// p[mt].c[kK / 8] (rounded to T) and B = b_tile[0:kK, 0:N*8] row-major in shared memory (P·V,
// Pᵀ·dO, dS·K, dSᵀ·Q): B pairs through the transposing ldmatrix for 16-bit T.
// P converted to the A fragments of the next product (a[mt][kk]: columns 16 kk + [0, 16)).
template <typename T, int kK, int kMT>
__device__ __forceinline__ void a_frags(FragA<T> (&a)[kMT][kK / 16], const Acc<kK / 8> (&p)[kMT]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int kk = 0; kk < kK / 16; ++kk) a[mt][kk] = a_from_c<T>(p[mt].c[2 * kk], p[mt].c[2 * kk + 1]);
}
// mma_pb with P already in A fragments: the forward rounds P as soon as it is final, so that half
// the registers (16-bit T) carry it through its barrier and the K prefetch.
template <typename T, int kK, int N, int kMT>
__device__ __forceinline__ void mma_ab_rows(Acc<N> (&acc)[kMT], const FragA<T> (&a)[kMT][kK / 16],
                                            const T* b_tile, int ld) {
  static_assert(N % 2 == 0 && kK % 16 == 0, "n-tiles in pairs, k in steps of 16");
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk)
#pragma unroll
    for (int n = 0; n < N; n += 2) {
      FragB<T> b[2];
      load_b_rows_x4(b, b_tile + kk * 16 * ld + n * 8, ld);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        mma_m16n8k16(acc[mt].c[n], a[mt][kk], b[0]);
        mma_m16n8k16(acc[mt].c[n + 1], a[mt][kk], b[1]);
      }
    }
}
template <typename T, int kK, int N, int kMT>
__device__ __forceinline__ void mma_pb(Acc<N> (&acc)[kMT], const Acc<kK / 8> (&p)[kMT], const T* b_tile,
                                       int ld) {
  FragA<T> a[kMT][kK / 16];
  a_frags<T, kK, kMT>(a, p);
  mma_ab_rows<T, kK, N, kMT>(acc, a, b_tile, ld);
}
template <typename T, int kK, int N>
__device__ __forceinline__ void mma_pb(Acc<N>& acc, const Acc<kK / 8>& p, const T* b_tile, int ld) {
  mma_pb<T, kK, N, 1>(reinterpret_cast<Acc<N>(&)[1]>(acc), reinterpret_cast<const Acc<kK / 8>(&)[1]>(p),
                      b_tile, ld);
}

// Max and sum over the 4 lanes of a quad: the lanes that hold one row of a C fragment.
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The warp's 16 rows [row0, row0 + 16) of acc, row r scaled by mul[r / 8], into the (L, D) matrix
// out with row stride ld (rows >= L and columns >= D are padding: not stored).
template <typename T, int N>
__device__ __forceinline__ void store_rows(T* out, const Acc<N>& acc, int row0, int L, int D,
                                           const float (&mul)[2], int64_t ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + g + 8 * (e / 2), col = n * 8 + 2 * t + e % 2;
      if (row < L && col < D) out[int64_t(row) * ld + col] = from_float<T>(acc.c[n][e] * mul[e / 2]);
    }
}

// Scale, bias and causal mask of one (batch, head); scores in base 2 (s * log2 e) for exp2_approx.
struct Scorer {
  const void* bias;  // at (b, h); null: none
  int64_t bias_si, bias_sj;
  bool bias_is_f32;
  float scale;        // scale[h]
  float scale2;       // scale[h] * log2 e
  bool causal;
  int causal_offset;  // key j is masked for query i when j > i + offset
  int Lq, Lk;

  template <typename T>
  __device__ __forceinline__ static Scorer make(const AttentionMask& m, int b, int h, int Lq, int Lk) {
    Scorer s;
    s.bias = nullptr;
    if (m.bias != nullptr) {
      const int64_t off = int64_t(b) * m.bias_strides[0] + int64_t(h) * m.bias_strides[1];
      s.bias = m.bias_is_f32 ? static_cast<const void*>(static_cast<const float*>(m.bias) + off)
                             : static_cast<const void*>(static_cast<const T*>(m.bias) + off);
    }
    s.bias_si = m.bias_strides[2];
    s.bias_sj = m.bias_strides[3];
    s.bias_is_f32 = m.bias_is_f32;
    s.scale = m.scale[h];
    s.scale2 = s.scale * kLog2e;
    s.causal = m.is_causal;
    s.causal_offset = m.bottom_right ? Lk - Lq : 0;
    s.Lq = Lq;
    s.Lk = Lk;
    return s;
  }

  // Base-2 score of query i, key j from their dot product; -inf when masked or out of range.
  template <typename T>
  __device__ __forceinline__ float at(float dot, int i, int j) const {
    if (i >= Lq || j >= Lk || (causal && j > i + causal_offset)) return -INFINITY;
    return dot * scale2 + bias2<T>(i, j);
  }

  // The bias of (i, j) in base 2 (0 without bias); i < Lq, j < Lk.
  template <typename T>
  __device__ __forceinline__ float bias2(int i, int j) const {
    if (bias == nullptr) return 0.f;
    const int64_t off = int64_t(i) * bias_si + int64_t(j) * bias_sj;
    return kLog2e * (bias_is_f32 ? static_cast<const float*>(bias)[off]
                                 : to_float(static_cast<const T*>(bias)[off]));
  }

  // The last key query i sees (Lk - 1 without a causal limit): the forward masks key j of row i
  // with one comparison, j > key_last(i).
  __device__ __forceinline__ int key_last(int i) const {
    return causal ? min(Lk - 1, i + causal_offset) : Lk - 1;
  }

  // One past the last key any of the queries [q0, q0 + rows) sees.
  __device__ __forceinline__ int key_end(int q0, int rows) const {
    return causal ? max(0, min(Lk, q0 + rows + causal_offset)) : Lk;
  }
  // The first query that sees any of the keys [k0, ...).
  __device__ __forceinline__ int query_begin(int k0) const {
    return causal ? max(0, k0 - causal_offset) : 0;
  }
};

// Dropout: Z = keep / (1 - p). One Philox call draws the 2x2 block of (query, key) pairs
// {i, i + 1} x {j, j + 1} (i, j even; counter (j / 2, i / 2, bh low, bh high)): a thread of the
// forward or dQ pass holds two neighbouring keys of a query, one of the dK/dV pass two
// neighbouring queries of a key, and both use two of the four draws.
struct Dropout {
  uint32_t key0, key1;  // the seed
  uint32_t threshold;   // keep when the draw >= threshold (= p * 2^32)
  float rescale;        // 1 / (1 - p)
  bool on;

  static Dropout make(const AttentionMask& m) {
    Dropout d;
    d.on = m.dropout_p > 0.f;
    d.key0 = uint32_t(m.seed);
    d.key1 = uint32_t(m.seed >> 32);
    const double t = std::floor(double(m.dropout_p) * 4294967296.0);
    d.threshold = t >= 4294967295.0 ? 0xffffffffu : uint32_t(t);
    d.rescale = d.on ? float(1.0 / (1.0 - double(m.dropout_p))) : 1.f;
    return d;
  }

  __device__ __forceinline__ Philox4 draw(int64_t bh, int i, int j) const {
    return philox4x32_10({{uint32_t(j) >> 1, uint32_t(i) >> 1, uint32_t(bh), uint32_t(bh >> 32)}},
                         key0, key1);
  }
  __device__ __forceinline__ float z(uint32_t r) const { return r >= threshold ? rescale : 0.f; }

  // Z of query i with keys j and j + 1 (j even).
  __device__ __forceinline__ void key_pair(int64_t bh, int i, int j, float& z0, float& z1) const {
    const Philox4 r = draw(bh, i, j);
    const bool odd = i & 1;  // selects, not r.x[2 * (i & 1)]: a runtime index puts r in local memory
    z0 = z(odd ? r.x[2] : r.x[0]);
    z1 = z(odd ? r.x[3] : r.x[1]);
  }
  // Z of key j with queries i and i + 1 (i even).
  __device__ __forceinline__ void query_pair(int64_t bh, int i, int j, float& z0, float& z1) const {
    const Philox4 r = draw(bh, i, j);
    const bool odd = j & 1;
    z0 = z(odd ? r.x[1] : r.x[0]);
    z1 = z(odd ? r.x[3] : r.x[2]);
  }
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte tile loads are possible for a (B, H, L, D) operand: every row of every head starts on a
// 16-byte boundary and D is a multiple of 16 bytes.
template <typename T>
bool vec_ok(const void* p, const AttentionStrides& s, int D) {
  constexpr int V = kVec<T>;
  return aligned16(p) && s.b % V == 0 && s.h % V == 0 && s.l % V == 0 && D % V == 0;
}

// Opt in to more than 48 KiB of dynamic shared memory when a tile configuration needs it.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* name) {
  if (bytes > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("dlkern: ") + name + " needs " + std::to_string(bytes) +
                             " bytes of shared memory per block, more than this GPU allows");
  }
}

inline void check_attention_shape(const AttentionShape& s) {
  if (s.B < 1 || s.Hq < 1 || s.Hkv < 1 || s.Lq < 1 || s.Lk < 1 || s.D < 1 || s.D > 256 ||
      s.Hq % s.Hkv != 0 || s.B > 65535 || s.Hq > 65535) {
    throw std::invalid_argument(
        "dlkern attention: need 1 <= B, Hq <= 65535, Hkv >= 1 dividing Hq, Lq, Lk >= 1 and "
        "1 <= D <= 256; got B=" + std::to_string(s.B) + " Hq=" + std::to_string(s.Hq) +
        " Hkv=" + std::to_string(s.Hkv) + " Lq=" + std::to_string(s.Lq) + " Lk=" +
        std::to_string(s.Lk) + " D=" + std::to_string(s.D));
  }
}

inline unsigned cdiv(int a, int b) { return unsigned((a + b - 1) / b); }

}  // namespace attn
}  // namespace dlk
