// Attention forward (math: attention.h), FlashAttention-2 style.
//
// One block per (tile of BQ queries, query head, batch); each warp owns 16 queries and keeps their
// output accumulator O (16, kD), running max m and running sum l in registers. The block streams
// the keys up to the causal limit in tiles of BK: K into shared memory, S = Q·Kᵀ on tensor cores,
// online softmax in base 2 (exp2f), dropout applied to P (not to l), then V into the same buffer
// and O += P·V with P converted from the C fragments of S in registers. Fully masked rows keep
// m = -inf, l = 0 and give o = 0, lse = -inf.
#include "attention/attention_common.cuh"

namespace dlk {
namespace {

using namespace attn;

template <typename T, int kD>
__global__ void __launch_bounds__(fwd_tiles<T, kD>().main * 2, 1)
attention_fwd_kernel(const AttentionFwdParams p, const Dropout drop, const bool q_vec,
                     const bool k_vec, const bool v_vec) {
  constexpr int BQ = fwd_tiles<T, kD>().main, BK = fwd_tiles<T, kD>().streamed;
  constexpr int LD = kLd<T, kD>;
  DLK_DYNAMIC_SHARED(T, smem);
  T* q_s = smem;             // (BQ, LD)
  T* kv_s = smem + BQ * LD;  // (BK, LD): K, then V

  const AttentionShape& sh = p.shape;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (sh.Hq / sh.Hkv);
  const int64_t bh = int64_t(b) * sh.Hq + h;
  const T* q = head_ptr<T>(p.q, p.q_strides, b, h);
  const T* k = head_ptr<T>(p.k, p.k_strides, b, hk);
  const T* v = head_ptr<T>(p.v, p.v_strides, b, hk);
  const Scorer score = Scorer::make<T>(p.mask, b, h, sh.Lq, sh.Lk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row0 = q0 + warp * 16;  // the warp's queries; this thread's: row0 + g, row0 + g + 8

  load_tile<T, kD, BQ>(q_s, q, p.q_strides.l, q0, sh.Lq, sh.D, q_vec);
  Acc<kD / 8> o;
  o.zero();
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // base-2 running max, partial sums

  const int key_end = score.key_end(q0, BQ);
  for (int k0 = 0; k0 < key_end; k0 += BK) {
    __syncthreads();  // the previous V tile is consumed
    load_tile<T, kD, BK>(kv_s, k, p.k_strides.l, k0, sh.Lk, sh.D, k_vec);
    __syncthreads();
    Acc<BK / 8> s;
    s.zero();
    mma_abt<T, kD, BK / 8>(s, q_s + warp * 16 * LD, kv_s, LD);

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < BK / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s.c[n][e] = score.at<T>(s.c[n][e], row0 + g + 8 * (e / 2), k0 + n * 8 + 2 * t + e % 2);
        mx[e / 2] = fmaxf(mx[e / 2], s.c[n][e]);
      }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];  // a fully masked row so far: P = 0, not NaN
      const float alpha = exp2f(m[r] - base[r]);
      m[r] = mx[r];
      l[r] *= alpha;
#pragma unroll
      for (int n = 0; n < kD / 8; ++n) {
        o.c[n][2 * r] *= alpha;
        o.c[n][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int n = 0; n < BK / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s.c[n][e] = exp2f(s.c[n][e] - base[e / 2]);
        l[e / 2] += s.c[n][e];
      }
    if (drop.on) {
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float z0, z1;
          drop.key_pair(bh, row0 + g + 8 * r, k0 + n * 8 + 2 * t, z0, z1);
          s.c[n][2 * r] *= z0;
          s.c[n][2 * r + 1] *= z1;
        }
    }

    __syncthreads();  // every warp is done with K
    load_tile<T, kD, BK>(kv_s, v, p.v_strides.l, k0, sh.Lk, sh.D, v_vec);
    __syncthreads();
    mma_pb<T, BK, kD / 8>(o, s, kv_s, LD);
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    inv[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;
    const int row = row0 + g + 8 * r;
    if (t == 0 && row < sh.Lq) {
      p.lse[bh * sh.Lq + row] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
    }
  }
  store_rows<T>(static_cast<T*>(p.o) + bh * sh.Lq * sh.D, o, row0, sh.Lq, sh.D, inv);
}

template <typename T, int kD>
void fwd_launch(const AttentionFwdParams& p, cudaStream_t stream) {
  constexpr Tiles kT = fwd_tiles<T, kD>();
  static_assert(kT.main % 16 == 0 && kT.main / 16 <= kMmaMaxWarps && kT.streamed % 16 == 0,
                "tile shapes");
  const size_t smem = size_t(kT.main + kT.streamed) * kLd<T, kD> * sizeof(T);
  auto kern = attention_fwd_kernel<T, kD>;
  allow_smem(kern, smem, "attention_fwd_kernel");
  const dim3 grid(cdiv(p.shape.Lq, kT.main), unsigned(p.shape.Hq), unsigned(p.shape.B));
  DLK_LAUNCH(kern, grid, kT.main * 2, smem, stream, p, Dropout::make(p.mask),
             vec_ok<T>(p.q, p.q_strides, p.shape.D), vec_ok<T>(p.k, p.k_strides, p.shape.D),
             vec_ok<T>(p.v, p.v_strides, p.shape.D));
  check_launch("attention_fwd_kernel");
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
