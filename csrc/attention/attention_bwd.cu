// Attention backward (math: attention.h), FlashAttention-2 style, in three passes without atomics:
// 1. delta = rowsum(do * o), one warp per query row.
// 2. dK, dV: one block per (tile of keys, kv head, batch); each warp owns 16 keys and keeps their
//    dK, dV accumulators in registers while the block loops over the group's query heads and the
//    query tiles that see its keys (causal limit): Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ on tensor cores, P
//    recomputed from the saved lse, then dV += (P∘Z)ᵀ·dO and dK += scale·dSᵀ·Q (above head dim
//    128: dV and dK in two launches, see kOut).
// 3. dQ: one block per (tile of queries, query head, batch): S = Q·Kᵀ, dP = dO·Vᵀ, dS, dQ += scale·
//    dS·K; writes dS to dscores when the bias needs its gradient (zeros beyond the causal limit).
// Passes 2 and 3 stream their tiles (Q, dO, lse, delta; K, V) through two shared buffers filled
// by cp.async: the next tile loads while the current one computes, one barrier per tile. Fragment
// loads are ldmatrix.x4 (.trans for the row-major B operands) for 16-bit types.
// The recomputed P of a masked (or out-of-range) pair is exactly 0; a fully masked row's lse is
// -inf, replaced by +inf here so that its P is 0 too (no NaN).
#include "attention/attention_common.cuh"

namespace dlk {
namespace {

using namespace attn;

constexpr int kDeltaThreads = 128;

// Rows of delta (and lse): B·Hq·Lq padded, Hq·total_q packed.
__host__ __device__ inline int64_t delta_rows(const AttentionBwdParams& p) {
  return p.seqs.cu_q != nullptr ? int64_t(p.shape.Hq) * p.seqs.total_q
                                : int64_t(p.shape.B) * p.shape.Hq * p.shape.Lq;
}

template <typename T>
__global__ void __launch_bounds__(kDeltaThreads)
attention_bwd_delta_kernel(const AttentionBwdParams p) {
  const AttentionShape& sh = p.shape;
  const bool packed = p.seqs.cu_q != nullptr;
  const int64_t rows = delta_rows(p);
  const int lane = threadIdx.x & 31;
  for (int64_t row = int64_t(blockIdx.x) * (kDeltaThreads / 32) + (threadIdx.x >> 5); row < rows;
       row += int64_t(gridDim.x) * (kDeltaThreads / 32)) {
    // row: (b, h, i) of (B, Hq, Lq) padded; (h, packed token i) of (Hq, total_q) packed
    const int64_t bh = packed ? row / p.seqs.total_q : row / sh.Lq;
    const int64_t i = packed ? row % p.seqs.total_q : row % sh.Lq;
    const int b = packed ? 0 : int(bh / sh.Hq), h = packed ? int(bh) : int(bh % sh.Hq);
    const T* dout = head_ptr<T>(p.dout, p.dout_strides, b, h) + i * p.dout_strides.l;
    const T* o = static_cast<const T*>(p.o) + (packed ? (i * sh.Hq + h) * sh.D : row * sh.D);
    float acc = 0.f;
    for (int d = lane; d < sh.D; d += 32) acc += to_float(dout[d]) * to_float(o[d]);
    acc = warp_sum(acc);
    if (lane == 0) p.delta[row] = acc;
  }
}

// Base-2 lse of query i for the recomputation: +inf for a fully masked row or i >= Lq (P = 0).
__device__ __forceinline__ float lse2_or_inf(const float* lse, int i, int Lq) {
  const float v = i < Lq ? lse[i] : -INFINITY;
  return v == -INFINITY ? INFINITY : v * kLog2e;
}

// kOut: kDV | kDK, the outputs of this launch. Head dims above 128 compute dV and dK in two
// launches (Sᵀ computed twice) so that one (16, kD) fp32 accumulator, not two, is live per warp:
// two do not fit in 255 registers.
constexpr int kDV = 1, kDK = 2;

template <typename T, int kD, int kOut>
__global__ void __launch_bounds__(bwd_tiles<T, kD>().main * 2, 1)
attention_bwd_dkdv_kernel(const AttentionBwdParams p, const Dropout drop, const bool q_vec,
                          const bool k_vec, const bool v_vec, const bool do_vec) {
  constexpr int BK = bwd_tiles<T, kD>().main, BQ = bwd_tiles<T, kD>().streamed;
  constexpr int LD = kLd<T, kD>, kThreads = BK * 2;
  DLK_DYNAMIC_SHARED(T, smem);
  T* k_s = smem;               // (BK, LD)
  T* v_s = k_s + BK * LD;      // (BK, LD)
  T* qdo_s = v_s + BK * LD;    // [2][Q (BQ, LD), dO (BQ, LD)]: double buffer
  float* stats_s = reinterpret_cast<float*>(qdo_s + 4 * BQ * LD);  // [2][lse (BQ,) base 2, delta (BQ,)]

  const int k0 = blockIdx.x * BK, hk = blockIdx.y, b = blockIdx.z;
  const Seq seq = Seq::make(p.seqs, p.shape, b);
  if (k0 >= seq.Lk) return;  // a packed sequence shorter than the grid's longest
  AttentionShape sh = p.shape;
  sh.Lq = seq.Lq;
  sh.Lk = seq.Lk;
  const int group = sh.Hq / sh.Hkv;
  const T* k = seq.in<T>(p.k, p.k_strides, b, hk, true);
  const T* v = seq.in<T>(p.v, p.v_strides, b, hk, true);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int key0 = k0 + warp * 16;  // the warp's keys; this thread's: key0 + g, key0 + g + 8

  // The (query head, query tile) steps of this block, flattened: every head of the group sees the
  // same query tiles (the causal limit does not depend on the head).
  const int q_start = Scorer::make<T>(p.mask, b, hk * group, sh.Lq, sh.Lk).query_begin(k0) / BQ * BQ;
  const int n_q = q_start < sh.Lq ? int((sh.Lq - q_start + BQ - 1) / BQ) : 0;
  const int steps = group * n_q;
  // Step `it`'s Q, dO tiles (cp.async), lse and delta into buffer it % 2.
  auto issue = [&](int it) {
    const int h = hk * group + it / n_q, q0 = q_start + (it % n_q) * BQ;
    const int64_t rows = seq.row_offset(b, h, sh.Hq);
    T* q_buf = qdo_s + (it % 2) * 2 * BQ * LD;
    load_tile_async<T, kD, BQ, kThreads>(q_buf, seq.in<T>(p.q, p.q_strides, b, h, false), p.q_strides.l, q0,
                                         sh.Lq, sh.D, q_vec);
    load_tile_async<T, kD, BQ, kThreads>(q_buf + BQ * LD, seq.in<T>(p.dout, p.dout_strides, b, h, false),
                                         p.dout_strides.l, q0, sh.Lq, sh.D, do_vec);
    float* st = stats_s + (it % 2) * 2 * BQ;
    for (int r = threadIdx.x; r < BQ; r += kThreads) {
      st[r] = lse2_or_inf(p.lse + rows, q0 + r, sh.Lq);
      st[BQ + r] = q0 + r < sh.Lq ? p.delta[rows + q0 + r] : 0.f;
    }
    cp_async_commit();
  };

  load_tile_async<T, kD, BK, kThreads>(k_s, k, p.k_strides.l, k0, sh.Lk, sh.D, k_vec);
  if constexpr (kOut & kDK) load_tile_async<T, kD, BK, kThreads>(v_s, v, p.v_strides.l, k0, sh.Lk, sh.D, v_vec);
  if (steps > 0) issue(0);
  cp_async_commit();
  Acc<kD / 8> dk, dv;  // the one this launch does not compute is dead code
  dk.zero();
  dv.zero();

  // One barrier per step: after it, step it's tiles are visible and every warp is done with step
  // it - 1, whose buffer then receives step it + 1 while step it computes.
  for (int it = 0; it < steps; ++it) {
    cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < steps) issue(it + 1);
    const int h = hk * group + it / n_q, q0 = q_start + (it % n_q) * BQ;
    const int64_t bh = int64_t(b) * sh.Hq + h;
    const Scorer score = Scorer::make<T>(p.mask, b, h, sh.Lq, sh.Lk);
    const T* q_s = qdo_s + (it % 2) * 2 * BQ * LD;
    const T* do_s = q_s + BQ * LD;
    const float* lse_s = stats_s + (it % 2) * 2 * BQ;
    const float* delta_s = lse_s + BQ;

    Acc<BQ / 8> pt, dpt;  // Pᵀ and dPᵀ: rows are the warp's keys, columns queries
    pt.zero();
    dpt.zero();
    mma_abt<T, kD, BQ / 8>(pt, k_s + warp * 16 * LD, q_s, LD);
    if constexpr (kOut & kDK) mma_abt<T, kD, BQ / 8>(dpt, v_s + warp * 16 * LD, do_s, LD);
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int j = key0 + g + 8 * r, c = n * 8 + 2 * t;  // c: query of element 2r, in tile
        float z[2] = {1.f, 1.f};
        if (drop.on) drop.query_pair(bh, q0 + c, j, z[0], z[1]);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& pe = pt.c[n][2 * r + e];
          float& dpe = dpt.c[n][2 * r + e];
          const float prob = exp2_approx(score.at<T>(pe, q0 + c + e, j) - lse_s[c + e]);
          pe = prob * z[e];                                            // (P∘Z)ᵀ for dV
          dpe = prob * (dpe * z[e] - delta_s[c + e]) * score.scale;  // scale·dSᵀ for dK
        }
      }
    if constexpr (kOut & kDV) mma_pb<T, BQ, kD / 8>(dv, pt, do_s, LD);
    if constexpr (kOut & kDK) mma_pb<T, BQ, kD / 8>(dk, dpt, q_s, LD);
  }
  cp_async_wait<0>();  // nothing may be in flight when the block's shared memory is reused
  const float one[2] = {1.f, 1.f};
  // the outputs' place from the parameters again, not kept live through the loop (as the forward)
  const Seq out_seq = Seq::make(p.seqs, p.shape, b);
  const int64_t out = out_seq.out_offset(b, hk, sh.Hkv, out_seq.Lk, sh.D, true), ld = out_seq.out_ld(sh.Hkv, sh.D);
  if constexpr (kOut & kDK) store_rows<T>(static_cast<T*>(p.dk) + out, dk, key0, sh.Lk, sh.D, one, ld);
  if constexpr (kOut & kDV) store_rows<T>(static_cast<T*>(p.dv) + out, dv, key0, sh.Lk, sh.D, one, ld);
}

template <typename T, int kD>
__global__ void __launch_bounds__(bwd_tiles<T, kD>().main * 2, 1)
attention_bwd_dq_kernel(const AttentionBwdParams p, const Dropout drop, const bool q_vec,
                        const bool k_vec, const bool v_vec, const bool do_vec) {
  constexpr int BQ = bwd_tiles<T, kD>().main, BK = bwd_tiles<T, kD>().streamed;
  constexpr int LD = kLd<T, kD>, kThreads = BQ * 2;
  DLK_DYNAMIC_SHARED(T, smem);
  T* q_s = smem;             // (BQ, LD)
  T* do_s = q_s + BQ * LD;   // (BQ, LD)
  T* kv_s = do_s + BQ * LD;  // [2][K (BK, LD), V (BK, LD)]: double buffer

  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const Seq seq = Seq::make(p.seqs, p.shape, b);
  if (q0 >= seq.Lq) return;  // a packed sequence shorter than the grid's longest
  AttentionShape sh = p.shape;
  sh.Lq = seq.Lq;
  sh.Lk = seq.Lk;
  const int hk = h / (sh.Hq / sh.Hkv);
  const int64_t bh = int64_t(b) * sh.Hq + h;
  const int64_t rows = seq.row_offset(b, h, sh.Hq);
  const T* q = seq.in<T>(p.q, p.q_strides, b, h, false);
  const T* dout = seq.in<T>(p.dout, p.dout_strides, b, h, false);
  const T* k = seq.in<T>(p.k, p.k_strides, b, hk, true);
  const T* v = seq.in<T>(p.v, p.v_strides, b, hk, true);
  const Scorer score = Scorer::make<T>(p.mask, b, h, sh.Lq, sh.Lk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row0 = q0 + warp * 16;  // the warp's queries; this thread's: row0 + g, row0 + g + 8
  float* dscores = p.dscores == nullptr ? nullptr : p.dscores + bh * sh.Lq * sh.Lk;

  const int key_end = score.key_end(q0, BQ);
  const int n_k = (key_end + BK - 1) / BK;
  // Key tile j's K and V into buffer j % 2 (cp.async).
  auto issue = [&](int j) {
    T* buf = kv_s + (j % 2) * 2 * BK * LD;
    load_tile_async<T, kD, BK, kThreads>(buf, k, p.k_strides.l, j * BK, sh.Lk, sh.D, k_vec);
    load_tile_async<T, kD, BK, kThreads>(buf + BK * LD, v, p.v_strides.l, j * BK, sh.Lk, sh.D, v_vec);
    cp_async_commit();
  };
  load_tile_async<T, kD, BQ, kThreads>(q_s, q, p.q_strides.l, q0, sh.Lq, sh.D, q_vec);
  load_tile_async<T, kD, BQ, kThreads>(do_s, dout, p.dout_strides.l, q0, sh.Lq, sh.D, do_vec);
  if (n_k > 0) issue(0);
  cp_async_commit();
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + g + 8 * r;
    lse2[r] = lse2_or_inf(p.lse + rows, i, sh.Lq);
    delta[r] = i < sh.Lq ? p.delta[rows + i] : 0.f;
  }
  Acc<kD / 8> dq;
  dq.zero();

  // One barrier per key tile: after it, tile j is visible and every warp is done with tile j - 1,
  // whose buffer then receives tile j + 1 while tile j computes.
  int k0 = 0;
  for (int j = 0; j < n_k; ++j, k0 += BK) {
    cp_async_wait<0>();
    __syncthreads();
    if (j + 1 < n_k) issue(j + 1);
    const T* k_s = kv_s + (j % 2) * 2 * BK * LD;
    const T* v_s = k_s + BK * LD;
    Acc<BK / 8> s, dp;
    s.zero();
    dp.zero();
    mma_abt<T, kD, BK / 8>(s, q_s + warp * 16 * LD, k_s, LD);
    mma_abt<T, kD, BK / 8>(dp, do_s + warp * 16 * LD, v_s, LD);
#pragma unroll
    for (int n = 0; n < BK / 8; ++n)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = row0 + g + 8 * r, jj = k0 + n * 8 + 2 * t;
        float z[2] = {1.f, 1.f};
        if (drop.on) drop.key_pair(bh, i, jj, z[0], z[1]);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& se = s.c[n][2 * r + e];
          const float prob = exp2_approx(score.at<T>(se, i, jj + e) - lse2[r]);
          const float ds = prob * (dp.c[n][2 * r + e] * z[e] - delta[r]);
          if (dscores != nullptr && i < sh.Lq && jj + e < sh.Lk) dscores[int64_t(i) * sh.Lk + jj + e] = ds;
          se = ds * score.scale;
        }
      }
    mma_pb<T, BK, kD / 8>(dq, s, k_s, LD);
  }
  cp_async_wait<0>();  // nothing may be in flight when the block's shared memory is reused
  if (dscores != nullptr) {  // keys past the causal limit: dS = 0
    const int width = sh.Lk - min(k0, sh.Lk);
    for (int64_t idx = threadIdx.x; idx < int64_t(BQ) * width; idx += blockDim.x) {
      const int i = q0 + int(idx / width);
      if (i < sh.Lq) dscores[int64_t(i) * sh.Lk + k0 + idx % width] = 0.f;
    }
  }
  const float one[2] = {1.f, 1.f};
  const Seq out = Seq::make(p.seqs, p.shape, b);  // not kept live through the loop (as the forward)
  store_rows<T>(static_cast<T*>(p.dq) + out.out_offset(b, h, sh.Hq, out.Lq, sh.D, false), dq, row0, out.Lq, sh.D, one,
                out.out_ld(sh.Hq, sh.D));
}

template <typename T, int kD>
void bwd_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  constexpr Tiles kT = bwd_tiles<T, kD>();
  static_assert(kT.main % 16 == 0 && kT.main / 16 <= kMmaMaxWarps && kT.streamed % 16 == 0,
                "tile shapes");
  const Dropout drop = Dropout::make(p.mask);
  const int D = p.shape.D;
  const bool q_vec = vec_ok<T>(p.q, p.q_strides, D), k_vec = vec_ok<T>(p.k, p.k_strides, D);
  const bool v_vec = vec_ok<T>(p.v, p.v_strides, D);
  const bool do_vec = vec_ok<T>(p.dout, p.dout_strides, D);
  // main tiles (2: K, V or Q, dO) + streamed tiles (2, double-buffered: 4), and for dK/dV the
  // double-buffered lse, delta.
  const size_t tiles = size_t(2 * kT.main + 4 * kT.streamed) * kLd<T, kD> * sizeof(T);

  const size_t dkdv_smem = tiles + 4 * kT.streamed * sizeof(float);
  const dim3 dkdv_grid(cdiv(p.shape.Lk, kT.main), unsigned(p.shape.Hkv), unsigned(p.shape.B));
  auto launch_dkdv = [&](auto dkdv) {
    allow_smem(dkdv, dkdv_smem, "attention_bwd_dkdv_kernel");
    DLK_LAUNCH(dkdv, dkdv_grid, kT.main * 2, dkdv_smem, stream, p, drop, q_vec, k_vec, v_vec, do_vec);
    check_launch("attention_bwd_dkdv_kernel");
  };
  if constexpr (kD > 128) {
    launch_dkdv(attention_bwd_dkdv_kernel<T, kD, kDV>);
    launch_dkdv(attention_bwd_dkdv_kernel<T, kD, kDK>);
  } else {
    launch_dkdv(attention_bwd_dkdv_kernel<T, kD, kDV | kDK>);
  }

  auto dq = attention_bwd_dq_kernel<T, kD>;
  allow_smem(dq, tiles, "attention_bwd_dq_kernel");
  const dim3 dq_grid(cdiv(p.shape.Lq, kT.main), unsigned(p.shape.Hq), unsigned(p.shape.B));
  DLK_LAUNCH(dq, dq_grid, kT.main * 2, tiles, stream, p, drop, q_vec, k_vec, v_vec, do_vec);
  check_launch("attention_bwd_dq_kernel");
}

template <typename T>
void delta_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  const int64_t rows = delta_rows(p);
  const unsigned grid = unsigned(std::min<int64_t>((rows + 3) / 4, int64_t(1) << 20));
  auto kern = attention_bwd_delta_kernel<T>;
  DLK_LAUNCH(kern, grid, kDeltaThreads, 0, stream, p);
  check_launch("attention_bwd_delta_kernel");
}

}  // namespace

void attention_bwd(const AttentionBwdParams& p, void* stream) {
  check_attention_shape(p.shape);
  if (p.dout == nullptr || p.q == nullptr || p.k == nullptr || p.v == nullptr || p.o == nullptr ||
      p.lse == nullptr || p.dq == nullptr || p.dk == nullptr || p.dv == nullptr ||
      p.delta == nullptr || p.mask.scale == nullptr) {
    throw std::invalid_argument(
        "dlkern attention_bwd: do, q, k, v, o, lse, dq, dk, dv, delta and scale are required");
  }
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    delta_launch<T>(p, static_cast<cudaStream_t>(stream));
    dispatch_head_dim(p.shape.D, [&](auto d) {
      bwd_launch<T, decltype(d)::value>(p, static_cast<cudaStream_t>(stream));
    });
  });
}

}  // namespace dlk
