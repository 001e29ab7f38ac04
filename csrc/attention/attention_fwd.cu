// Attention forward (math: attention.h), FlashAttention-2 style.
//
// One block of 4 warps per (tile of BQ queries, query head, batch); each warp owns kMT m16 tiles
// of queries (32 rows for 16-bit types up to head dim 128, as FlashAttention-2's 128-row tile, so
// every K and V fragment serves two tiles) and keeps their output accumulator O (16 kMT, kD),
// running max m and running sum l in registers. The block streams the keys up to the causal limit
// in tiles of BK through two shared buffers, K and V, with cp.async (common/async_copy.cuh):
//
//   wait K_j; barrier 1 | issue V_j | S = Q·K_jᵀ, online softmax | wait V_j; barrier 2 |
//   issue K_{j+1} | O += P·V_j
//
// so V_j arrives while S and the softmax are computed and K_{j+1} while P·V_j is, with two
// barriers per tile (barrier 1 also retires V_{j-1}, barrier 2 K_j). Fragments come from shared
// memory through ldmatrix (.x4, .trans for V; fp32 uses 32-bit loads), P stays in registers
// (C fragments of S converted to A fragments). The rows of a tile are padded by 16 bytes (kLd),
// which makes both the ldmatrix row reads and the 16-byte cp.async writes conflict-free.
//
// Causal masking, bias and dropout are template parameters for 16-bit types (DLK_BOOL_SWITCH at
// the launch; fp32 has one general variant). The
// key tiles that are full and lie entirely below the causal diagonal of the block's first query
// run without any mask arithmetic; only the last partial tile and the diagonal tiles check
// bounds and the causal limit. Softmax in base 2 (exp2_approx: one MUFU.EX2, as in FA2), dropout
// applied to P (not to l). Fully masked rows keep m = -inf, l = 0 and give o = 0, lse = -inf.
#include "attention/attention_common.cuh"

namespace dlk {
namespace {

using namespace attn;

constexpr int kFwdWarps = 4;

// m16 tiles per warp: two for 16-bit types up to head dim 128 (O and S of 32 rows fit in
// registers), one above and for fp32 (whose products go through mma_scalar).
template <typename T, int kD>
constexpr int kFwdMT = sizeof(T) == 2 && kD <= 128 ? 2 : 1;

template <typename T, int kD>
constexpr int kFwdBQ = kFwdWarps * 16 * kFwdMT<T, kD>;

template <typename T, int kD>
constexpr int kFwdBK = sizeof(T) == 2 ? (kD <= 128 ? 64 : 32) : (kD <= 64 ? 64 : kD <= 128 ? 32 : 16);

template <typename T, int kD>
constexpr size_t fwd_smem_bytes() {
  return size_t(kFwdBQ<T, kD> + 2 * kFwdBK<T, kD>) * kLd<T, kD> * sizeof(T);
}

template <typename T, int kD, bool kCausal, bool kBias, bool kDropout>
__global__ void __launch_bounds__(kFwdWarps * 32, 1)
attention_fwd_kernel(const AttentionFwdParams p, const Dropout drop, const bool q_vec,
                     const bool k_vec, const bool v_vec) {
  constexpr int kMT = kFwdMT<T, kD>, BQ = kFwdBQ<T, kD>, BK = kFwdBK<T, kD>;
  constexpr int LD = kLd<T, kD>;
  DLK_DYNAMIC_SHARED(T, smem);
  T* q_s = smem;             // (BQ, LD)
  T* k_s = q_s + BQ * LD;    // (BK, LD)
  T* v_s = k_s + BK * LD;    // (BK, LD)

  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const Seq seq = Seq::make(p.seqs, p.shape, b);
  AttentionShape sh = p.shape;
  sh.Lq = seq.Lq;
  sh.Lk = seq.Lk;
  const int hk = h / (sh.Hq / sh.Hkv);
  const int64_t bh = int64_t(b) * sh.Hq + h;
  const T* q = seq.in<T>(p.q, p.q_strides, b, h, false);
  const T* k = seq.in<T>(p.k, p.k_strides, b, hk, true);
  const T* v = seq.in<T>(p.v, p.v_strides, b, hk, true);
  const Scorer score = Scorer::make<T>(p.mask, b, h, sh.Lq, sh.Lk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // The warp's queries: row0 + 16 mt + [0, 16); this thread's: row0 + 16 mt + g (+ 8).
  const int row0 = q0 + warp * 16 * kMT;

  // Key tiles [0, n_full) are full and below the diagonal for every query of the block.
  const int key_end = score.key_end(q0, BQ);
  // A block past its packed sequence's end runs no key tile and stores nothing. (Not an early
  // return: with one, the padded d128 instance spilled its running max and sum, 40 B of stack on
  // sm_90a instead of 8.)
  const int n_tiles = q0 < sh.Lq ? (key_end + BK - 1) / BK : 0;
  int n_full = sh.Lk / BK;
  if (kCausal && score.causal) n_full = min(n_full, max(0, q0 + score.causal_offset + 1) / BK);

  load_tile_async<T, kD, BQ, kFwdWarps * 32>(q_s, q, p.q_strides.l, q0, sh.Lq, sh.D, q_vec);
  if (n_tiles > 0) load_tile_async<T, kD, BK, kFwdWarps * 32>(k_s, k, p.k_strides.l, 0, sh.Lk, sh.D, k_vec);
  cp_async_commit();

  Acc<kD / 8> o[kMT];
  float m[kMT][2], l[kMT][2];  // base-2 running max, partial sums of this thread's columns
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    o[mt].zero();
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  auto tile = [&](const int j, auto masked) {
    constexpr bool kMask = decltype(masked)::value;
    const int k0 = j * BK;
    cp_async_wait<0>();
    __syncthreads();  // K_j (and Q) visible; every warp is done with V_{j-1}
    load_tile_async<T, kD, BK, kFwdWarps * 32>(v_s, v, p.v_strides.l, k0, sh.Lk, sh.D, v_vec);
    cp_async_commit();

    Acc<BK / 8> s[kMT];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) s[mt].zero();
    mma_abt<T, kD, BK / 8, kMT>(s, q_s + warp * 16 * kMT * LD, LD, k_s, LD);

#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      float mx[2] = {m[mt][0], m[mt][1]};
      int last[2];  // the last key of each of the thread's rows (masked tiles)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        last[r] = sh.Lk - 1;
        if (kCausal) last[r] = score.key_last(row0 + 16 * mt + g + 8 * r);
      }
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // Rows >= Lq are computed like the others (finite: their Q rows are 0) and never stored.
          const int i = row0 + 16 * mt + g + 8 * (e / 2), jj = k0 + n * 8 + 2 * t + e % 2;
          float x = s[mt].c[n][e] * score.scale2;
          if (kBias && i < sh.Lq && (!kMask || jj < sh.Lk)) x += score.bias2<T>(i, jj);
          if (kMask && jj > last[e / 2]) x = -INFINITY;
          s[mt].c[n][e] = x;
          mx[e / 2] = fmaxf(mx[e / 2], x);
        }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = quad_max(mx[r]);
        base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a fully masked row so far: P = 0, not NaN
        const float alpha = exp2_approx(m[mt][r] - base[r]);
        m[mt][r] = mx[r];
        l[mt][r] *= alpha;
#pragma unroll
        for (int n = 0; n < kD / 8; ++n) {
          o[mt].c[n][2 * r] *= alpha;
          o[mt].c[n][2 * r + 1] *= alpha;
        }
      }
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt].c[n][e] = exp2_approx(s[mt].c[n][e] - base[e / 2]);
          l[mt][e / 2] += s[mt].c[n][e];
        }
      if (kDropout && drop.on) {
#pragma unroll
        for (int n = 0; n < BK / 8; ++n)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float z0, z1;
            drop.key_pair(bh, row0 + 16 * mt + g + 8 * r, k0 + n * 8 + 2 * t, z0, z1);
            s[mt].c[n][2 * r] *= z0;
            s[mt].c[n][2 * r + 1] *= z1;
          }
      }
    }

    FragA<T> pa[kMT][BK / 16];  // P, final: rounded to T now (fewer registers through the barrier)
    a_frags<T, BK, kMT>(pa, s);

    cp_async_wait<0>();
    __syncthreads();  // V_j visible; every warp is done with K_j
    if (j + 1 < n_tiles) load_tile_async<T, kD, BK, kFwdWarps * 32>(k_s, k, p.k_strides.l, k0 + BK, sh.Lk, sh.D, k_vec);
    cp_async_commit();
    mma_ab_rows<T, BK, kD / 8, kMT>(o, pa, v_s, LD);
  };
  int j = 0;
  for (; j < min(n_full, n_tiles); ++j) tile(j, std::false_type{});
  for (; j < n_tiles; ++j) tile(j, std::true_type{});
  cp_async_wait<0>();  // nothing may be in flight when the block's shared memory is reused

  // Where the outputs go, worked out again from the parameters (and, packed, two cached loads)
  // rather than kept live through the key loop, which needs every register.
  const Seq out = Seq::make(p.seqs, p.shape, b);
  float* const lse = p.lse + out.row_offset(b, h, p.shape.Hq);
  T* const o_out = static_cast<T*>(p.o) + out.out_offset(b, h, p.shape.Hq, out.Lq, p.shape.D, false);
  const int64_t o_ld = out.out_ld(p.shape.Hq, p.shape.D);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(l[mt][r]);
      inv[r] = sum > 0.f ? 1.f / sum : 0.f;
      const int row = row0 + 16 * mt + g + 8 * r;
      if (t == 0 && row < out.Lq) lse[row] = sum > 0.f ? (m[mt][r] + log2f(sum)) * kLn2 : -INFINITY;
    }
    store_rows<T>(o_out, o[mt], row0 + 16 * mt, out.Lq, p.shape.D, inv, o_ld);
  }
}

template <typename T, int kD, bool kCausal, bool kBias, bool kDropout>
void fwd_launch_variant(const AttentionFwdParams& p, cudaStream_t stream) {
  static_assert(kFwdBQ<T, kD> / 16 / kFwdMT<T, kD> <= kMmaMaxWarps && kFwdBK<T, kD> % 16 == 0,
                "tile shapes");
  const size_t smem = fwd_smem_bytes<T, kD>();
  const dim3 grid(cdiv(p.shape.Lq, kFwdBQ<T, kD>), unsigned(p.shape.Hq), unsigned(p.shape.B));
  auto kern = attention_fwd_kernel<T, kD, kCausal, kBias, kDropout>;
  allow_smem(kern, smem, "attention_fwd_kernel");
  DLK_LAUNCH(kern, grid, kFwdWarps * 32, smem, stream, p, Dropout::make(p.mask),
             vec_ok<T>(p.q, p.q_strides, p.shape.D), vec_ok<T>(p.k, p.k_strides, p.shape.D),
             vec_ok<T>(p.v, p.v_strides, p.shape.D));
  check_launch("attention_fwd_kernel");
}

// The kernel's flags say what may be on (the runtime fields decide within): 16-bit types get one
// variant per combination, so the common case carries no causal, bias or dropout code; fp32 (a
// correctness path on mma_scalar) gets the one general variant, keeping the build small.
template <typename T, int kD>
void fwd_launch(const AttentionFwdParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    DLK_BOOL_SWITCH(p.mask.is_causal, kCausal, [&] {
      DLK_BOOL_SWITCH(p.mask.bias != nullptr, kBias, [&] {
        DLK_BOOL_SWITCH(p.mask.dropout_p > 0.f, kDropout,
                        [&] { fwd_launch_variant<T, kD, kCausal, kBias, kDropout>(p, stream); });
      });
    });
  } else {
    fwd_launch_variant<T, kD, true, true, true>(p, stream);
  }
}

}  // namespace

void attention_fwd(const AttentionFwdParams& p, void* stream) {
  check_attention_shape(p.shape);
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.o == nullptr || p.lse == nullptr ||
      p.mask.scale == nullptr) {
    throw std::invalid_argument("dlkern attention_fwd: q, k, v, o, lse and scale are required");
  }
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_head_dim(p.shape.D, [&](auto d) {
      fwd_launch<T, decltype(d)::value>(p, static_cast<cudaStream_t>(stream));
    });
  });
}

}  // namespace dlk
