// WaveNet layer kernels and launchers (math: wavenet.h).
//
// Forward, fused: one block per (batch, tile of kTileL positions), grid-stride. Phase 1: each
// thread computes (a, g) = the two gate halves of channel c at one position (Cin x K FMAs each),
// stores h, and keeps z = tanh(a) * sigmoid(g) in shared memory (a (C, kTileL) fp32 tile). Phase 2:
// each thread computes one residual or skip output from the z column (C FMAs), adding x for the
// residual. x is read once per tap and the gate never goes through memory.
// Gate backward: one (b, c, l) element per thread (grid-stride): dz from the two projections'
// transposed weights, then the gate derivative.
#include "conv/wavenet.h"

#include "conv/conv_common.cuh"

namespace dlk {
namespace {

using conv::kThreads;
constexpr int kTileL = 32;

// Accurate: the approximate MUFU.TANH (what --use_fast_math made of tanhf) has relative error
// ~2^-11, bf16's precision, in a gate that fp32 layers compute in fp32.
__device__ __forceinline__ float tanh_f(float v) { return tanhf(v); }

template <typename T>
__device__ __forceinline__ float opt(const T* p, int64_t i) {
  return p != nullptr ? to_float(p[i]) : 0.f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) wavenet_fwd_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ w_dil, const T* __restrict__ b_dil,
    const T* __restrict__ cond, const T* __restrict__ w_res, const T* __restrict__ b_res,
    const T* __restrict__ w_skip, const T* __restrict__ b_skip, T* __restrict__ out,
    T* __restrict__ skip, T* __restrict__ h,
    // sizes, strides
    int64_t B, int64_t C, int64_t S, int64_t L, int K, int dil, int64_t sxb, int64_t sxc,
    int64_t sxl, int64_t scb, int64_t scc, int64_t scl) {
  DLK_DYNAMIC_SHARED(float, zs);  // (C, kTileL)
  const int64_t tiles = conv::cdiv(L, kTileL);
  for (int64_t t = blockIdx.x; t < B * tiles; t += gridDim.x) {
    const int64_t b = t / tiles, l0 = (t % tiles) * kTileL;
    for (int64_t i = threadIdx.x; i < C * kTileL; i += blockDim.x) {
      const int64_t c = i / kTileL, l = l0 + i % kTileL;
      float z = 0.f;
      if (l < L) {
        float a = opt(b_dil, c), g = opt(b_dil, C + c);
        for (int k = 0; k < K; ++k) {
          const int64_t src = l - int64_t(K - 1 - k) * dil;
          if (src < 0) continue;
          const T* xs = x + b * sxb + src * sxl;
          for (int64_t ci = 0; ci < C; ++ci) {
            const float xv = to_float(xs[ci * sxc]);
            a += to_float(w_dil[(c * C + ci) * K + k]) * xv;
            g += to_float(w_dil[((C + c) * C + ci) * K + k]) * xv;
          }
        }
        if (cond != nullptr) {
          a += to_float(cond[b * scb + c * scc + l * scl]);
          g += to_float(cond[b * scb + (C + c) * scc + l * scl]);
        }
        h[(b * 2 * C + c) * L + l] = from_float<T>(a);
        h[(b * 2 * C + C + c) * L + l] = from_float<T>(g);
        z = to_float(from_float<T>(tanh_f(a) * sigmoid_approx(g)));
      }
      zs[i] = z;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < (C + S) * kTileL; i += blockDim.x) {
      const int64_t o = i / kTileL, j = i % kTileL, l = l0 + j;
      if (l >= L) continue;
      const bool is_res = o < C;
      const T* w = is_res ? w_res + o * C : w_skip + (o - C) * C;
      float acc = is_res ? opt(b_res, o) : opt(b_skip, o - C);
      for (int64_t c = 0; c < C; ++c) acc += to_float(w[c]) * zs[c * kTileL + j];
      if (is_res) {  // x + res, the projection rounded first as in the composition
        const float xv = to_float(x[b * sxb + o * sxc + l * sxl]);
        out[(b * C + o) * L + l] = from_float<T>(xv + to_float(from_float<T>(acc)));
      } else {
        skip[(b * S + o - C) * L + l] = from_float<T>(acc);
      }
    }
    __syncthreads();  // the next tile overwrites zs
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) wavenet_gate_bwd_kernel(
    // pointers
    const T* __restrict__ dout, const T* __restrict__ dskip, const T* __restrict__ h,
    const T* __restrict__ w_res, const T* __restrict__ w_skip, T* __restrict__ dh,
    T* __restrict__ z,
    // sizes, strides
    int64_t B, int64_t C, int64_t S, int64_t L, int64_t sob, int64_t soc, int64_t sol,
    int64_t ssb, int64_t ssc, int64_t ssl) {
  const int64_t total = B * C * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = i % L, c = (i / L) % C, b = i / (C * L);
    float dz = 0.f;
    for (int64_t o = 0; o < C; ++o) dz += to_float(w_res[o * C + c]) * to_float(dout[b * sob + o * soc + l * sol]);
    for (int64_t s = 0; s < S; ++s) dz += to_float(w_skip[s * C + c]) * to_float(dskip[b * ssb + s * ssc + l * ssl]);
    const float a = to_float(h[(b * 2 * C + c) * L + l]);
    const float g = to_float(h[(b * 2 * C + C + c) * L + l]);
    const float ta = tanh_f(a), sg = sigmoid_approx(g);
    dh[(b * 2 * C + c) * L + l] = from_float<T>(dz * sg * (1.f - ta * ta));
    dh[(b * 2 * C + C + c) * L + l] = from_float<T>(dz * ta * sg * (1.f - sg));
    z[i] = from_float<T>(ta * sg);
  }
}

// ---- host side --------------------------------------------------------------------------------
constexpr const char* kOp = "wavenet_layer";

template <typename T>
void fwd_launch(const WavenetFwdParams& p, cudaStream_t stream) {
  auto kern = wavenet_fwd_kernel<T>;
  const int64_t items = p.B * conv::cdiv(p.L, kTileL);
  const int64_t fill = int64_t(p.num_sms) * max_blocks_per_sm(kern, kThreads);
  const size_t smem = size_t(p.C) * kTileL * sizeof(float);
  DLK_LAUNCH(kern, unsigned(std::min(items, fill)), kThreads, smem, stream,
             static_cast<const T*>(p.x), static_cast<const T*>(p.w_dil),
             static_cast<const T*>(p.b_dil), static_cast<const T*>(p.cond),
             static_cast<const T*>(p.w_res), static_cast<const T*>(p.b_res),
             static_cast<const T*>(p.w_skip), static_cast<const T*>(p.b_skip),
             static_cast<T*>(p.out), static_cast<T*>(p.skip), static_cast<T*>(p.h), p.B, p.C, p.S,
             p.L, p.K, p.dilation, p.x_stride[0], p.x_stride[1], p.x_stride[2], p.cond_stride[0],
             p.cond_stride[1], p.cond_stride[2]);
  check_launch("wavenet_fwd_kernel");
}

template <typename T>
void gate_bwd_launch(const WavenetGateBwdParams& p, cudaStream_t stream) {
  auto kern = wavenet_gate_bwd_kernel<T>;
  DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.C * p.L, p.num_sms), kThreads, 0, stream,
             static_cast<const T*>(p.dout), static_cast<const T*>(p.dskip),
             static_cast<const T*>(p.h), static_cast<const T*>(p.w_res),
             static_cast<const T*>(p.w_skip), static_cast<T*>(p.dh), static_cast<T*>(p.z), p.B, p.C,
             p.S, p.L, p.dout_stride[0], p.dout_stride[1], p.dout_stride[2], p.dskip_stride[0],
             p.dskip_stride[1], p.dskip_stride[2]);
  check_launch("wavenet_gate_bwd_kernel");
}

void check_sizes(int64_t B, int64_t C, int64_t S, int64_t L, int num_sms) {
  conv::check(B >= 0 && C >= 0 && S >= 0 && L >= 0, kOp, "sizes must be >= 0");
  conv::check(C <= kWavenetMaxChannels, kOp, "at most 1024 residual channels");
  conv::check(num_sms >= 1, kOp, "num_sms must be >= 1");
}

}  // namespace

void wavenet_layer_fwd(const WavenetFwdParams& p, void* stream) {
  check_sizes(p.B, p.C, p.S, p.L, p.num_sms);
  conv::check(p.K >= 1 && p.dilation >= 1, kOp, "need K >= 1 and dilation >= 1");
  if (p.B * p.L == 0 || p.C == 0) return;
  conv::check(p.x && p.w_dil && p.w_res && p.w_skip && p.out && p.skip && p.h, kOp,
              "x, the three weights, out, skip and h are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void wavenet_gate_bwd(const WavenetGateBwdParams& p, void* stream) {
  check_sizes(p.B, p.C, p.S, p.L, p.num_sms);
  if (p.B * p.C * p.L == 0) return;
  conv::check(p.dout && p.dskip && p.h && p.w_res && p.w_skip && p.dh && p.z, kOp,
              "dout, dskip, h, w_res, w_skip, dh and z are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    gate_bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
