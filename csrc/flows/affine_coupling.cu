// Affine coupling forward (with partial log-dets) and backward kernels and launchers (math:
// affine_coupling.h).
//
// Work items are (sample, chunk of kAffineCouplingChunk columns), visited grid-stride by 1-D
// blocks of kThreads threads (no gridDim.y limit on the batch). Each thread handles V consecutive
// columns per step: V = 16 bytes (one 128-bit access) when N and the row strides are multiples of
// V and the pointers 16-byte aligned, else 1. The forward's partial log-det of an item is a
// dlk::block_sum (bitwise reproducible); the backward is element-wise.
#include "flows/affine_coupling.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 256;

// log s, s, 1/s and d(log s)/dh for the raw log-scale h. Per element of a memory-bound pass, the
// exponentials are __expf (FMUL + MUFU.EX2, a few ulp); log1pf and tanhf stay accurate, so log s
// (the log-determinant's terms) is exact to rounding (--use_fast_math made tanhf one MUFU.TANH,
// relative error ~2^-11).
template <CouplingScale SCALE>
struct ScaleMap {
  float log_s, s, inv_s, dlog;
  __device__ __forceinline__ ScaleMap(float h, float clamp) {
    if constexpr (SCALE == CouplingScale::kExp) {
      log_s = h;
      s = __expf(h);
      inv_s = __expf(-h);
      dlog = 1.f;
    } else if constexpr (SCALE == CouplingScale::kSigmoid) {
      const float z = h + 2.f;
      const float e = __expf(-fabsf(z));
      log_s = fminf(z, 0.f) - log1pf(e);  // log sigmoid(z), stable for both signs
      s = __fdividef(z >= 0.f ? 1.f : e, 1.f + e);
      inv_s = 1.f + __expf(-z);
      dlog = 1.f - s;
    } else {
      const float th = tanhf(__fdividef(h, clamp));
      log_s = clamp * th;
      s = __expf(log_s);
      inv_s = __expf(-log_s);
      dlog = 1.f - th * th;
    }
  }
};

template <typename T, int V, CouplingScale SCALE, bool REVERSE>
__global__ void __launch_bounds__(kThreads)
coupling_fwd_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ h,   // (B, N), (B, 2N)
    T* __restrict__ y, float* __restrict__ partial,     // (B, N), (B, chunks)
    // sizes and strides
    int64_t B, int64_t N, int64_t chunks, int64_t stride_xb, int64_t stride_hb, float clamp) {
  // the item (b, chunk), stepped gridDim.x items at a time
  int64_t b = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  for (; b < B; chunk += gridDim.x, b += chunk / chunks, chunk %= chunks) {
    const int64_t next = (chunk + 1) * kAffineCouplingChunk, end = next < N ? next : N;
    const T* xr = x + b * stride_xb;
    const T* hr = h + b * stride_hb;
    float sum = 0.f;
    for (int64_t k = chunk * kAffineCouplingChunk + int64_t(threadIdx.x) * V; k < end; k += kThreads * V) {
      float xv[V], hv[V], tv[V];
      load<T, V>(xr + k, xv);
      load<T, V>(hr + k, hv);
      load<T, V>(hr + N + k, tv);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const ScaleMap<SCALE> m(hv[i], clamp);
        xv[i] = REVERSE ? (xv[i] - tv[i]) * m.inv_s : xv[i] * m.s + tv[i];
        sum += m.log_s;
      }
      store_output<T, V>(y + b * N + k, xv);
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partial[b * chunks + chunk] = REVERSE ? -sum : sum;
  }
}

template <typename T, int V, CouplingScale SCALE, bool REVERSE>
__global__ void __launch_bounds__(kThreads)
coupling_bwd_kernel(
    // pointers
    const T* __restrict__ dy, const float* __restrict__ dlogdet,  // (B, N), (B,)
    const T* __restrict__ x, const T* __restrict__ h,             // (B, N), (B, 2N)
    T* __restrict__ dx, T* __restrict__ dh,                       // (B, N), (B, 2N)
    // sizes and strides
    int64_t B, int64_t N, int64_t chunks, int64_t stride_dyb, int64_t stride_xb,
    int64_t stride_hb, float clamp) {
  // the item (b, chunk), stepped gridDim.x items at a time
  int64_t b = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  for (; b < B; chunk += gridDim.x, b += chunk / chunks, chunk %= chunks) {
    const int64_t next = (chunk + 1) * kAffineCouplingChunk, end = next < N ? next : N;
    const float dld = dlogdet[b];
    for (int64_t k = chunk * kAffineCouplingChunk + int64_t(threadIdx.x) * V; k < end; k += kThreads * V) {
      float dyv[V], xv[V], hv[V], tv[V];
      load<T, V>(dy + b * stride_dyb + k, dyv);
      load<T, V>(x + b * stride_xb + k, xv);
      load<T, V>(h + b * stride_hb + k, hv);
      load<T, V>(h + b * stride_hb + N + k, tv);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const ScaleMap<SCALE> m(hv[i], clamp);
        float dxi, dlog_s;
        if constexpr (REVERSE) {
          dxi = dyv[i] * m.inv_s;
          dlog_s = -dxi * (xv[i] - tv[i]) - dld;
          tv[i] = -dxi;
        } else {
          dxi = dyv[i] * m.s;
          dlog_s = dxi * xv[i] + dld;
          tv[i] = dyv[i];
        }
        xv[i] = dxi;
        hv[i] = dlog_s * m.dlog;
      }
      store_output<T, V>(dx + b * N + k, xv);
      store_output<T, V>(dh + b * 2 * N + k, hv);
      store_output<T, V>(dh + b * 2 * N + N + k, tv);
    }
  }
}

// ---- host side --------------------------------------------------------------------------------
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern affine_coupling: ") + what);
}

template <typename Kernel>
unsigned grid_size(Kernel kernel, int64_t items, int num_sms) {
  return unsigned(std::min<int64_t>(items, int64_t(num_sms) * max_blocks_per_sm(kernel, kThreads)));
}

// f(integral_constant<CouplingScale, S>) for the runtime scale map.
template <typename F>
void dispatch_scale(CouplingScale scale, F&& f) {
  switch (scale) {
    case CouplingScale::kExp: return f(std::integral_constant<CouplingScale, CouplingScale::kExp>{});
    case CouplingScale::kSigmoid: return f(std::integral_constant<CouplingScale, CouplingScale::kSigmoid>{});
    case CouplingScale::kSoftclamp: return f(std::integral_constant<CouplingScale, CouplingScale::kSoftclamp>{});
  }
  throw std::invalid_argument("dlkern affine_coupling: unknown scale map");
}

// f(V, SCALE, REVERSE) as integral constants for the runtime vector width, scale map and direction.
template <typename T, typename F>
void dispatch_variant(bool vec, CouplingScale scale, bool reverse, F&& f) {
  dispatch_vec<T>(vec, [&](auto vtag) {
    dispatch_scale(scale, [&](auto stag) {
      DLK_BOOL_SWITCH(reverse, REVERSE, [&] { f(vtag, stag, std::integral_constant<bool, REVERSE>{}); });
    });
  });
}

template <typename T>
void fwd_launch(const AffineCouplingFwdParams& p, cudaStream_t stream) {
  const AffineCouplingArgs& a = p.a;
  constexpr int W = kVec<T>;
  const bool vec = a.N % W == 0 && a.stride_xb % W == 0 && a.stride_hb % W == 0 && aligned16(p.x) &&
                   aligned16(p.h) && aligned16(p.y);
  const int64_t chunks = cdiv(a.N, kAffineCouplingChunk);
  dispatch_variant<T>(vec, a.scale, a.reverse, [&](auto v, auto scale, auto reverse) {
    auto kern = coupling_fwd_kernel<T, decltype(v)::value, decltype(scale)::value, decltype(reverse)::value>;
    DLK_LAUNCH(kern, grid_size(kern, a.B * chunks, a.num_sms), kThreads, 0, stream,
               static_cast<const T*>(p.x), static_cast<const T*>(p.h), static_cast<T*>(p.y),
               p.partial, a.B, a.N, chunks, a.stride_xb, a.stride_hb, a.clamp);
    check_launch("coupling_fwd_kernel");
  });
}

template <typename T>
void bwd_launch(const AffineCouplingBwdParams& p, cudaStream_t stream) {
  const AffineCouplingArgs& a = p.a;
  constexpr int W = kVec<T>;
  const bool vec = a.N % W == 0 && p.stride_dyb % W == 0 && a.stride_xb % W == 0 &&
                   a.stride_hb % W == 0 && aligned16(p.dy) && aligned16(p.x) && aligned16(p.h) &&
                   aligned16(p.dx) && aligned16(p.dh);
  const int64_t chunks = cdiv(a.N, kAffineCouplingChunk);
  dispatch_variant<T>(vec, a.scale, a.reverse, [&](auto v, auto scale, auto reverse) {
    auto kern = coupling_bwd_kernel<T, decltype(v)::value, decltype(scale)::value, decltype(reverse)::value>;
    DLK_LAUNCH(kern, grid_size(kern, a.B * chunks, a.num_sms), kThreads, 0, stream,
               static_cast<const T*>(p.dy), p.dlogdet, static_cast<const T*>(p.x),
               static_cast<const T*>(p.h), static_cast<T*>(p.dx), static_cast<T*>(p.dh),
               a.B, a.N, chunks, p.stride_dyb, a.stride_xb, a.stride_hb, a.clamp);
    check_launch("coupling_bwd_kernel");
  });
}

// False (launch nothing) for an empty input; throws on invalid arguments.
bool check_args(const AffineCouplingArgs& a) {
  check(a.B >= 0 && a.N >= 0, "sizes must be B >= 0, N >= 0");
  check(a.num_sms >= 1, "num_sms must be >= 1");
  check(a.scale != CouplingScale::kSoftclamp || a.clamp > 0.f, "clamp must be > 0 for softclamp");
  return a.B > 0 && a.N > 0;
}

}  // namespace

void affine_coupling_fwd(const AffineCouplingFwdParams& p, void* stream) {
  if (!check_args(p.a)) return;
  check(p.x && p.h && p.y && p.partial, "x, h, y and partial are required");
  dispatch_dtype<void>(p.a.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void affine_coupling_bwd(const AffineCouplingBwdParams& p, void* stream) {
  if (!check_args(p.a)) return;
  check(p.dy && p.dlogdet && p.x && p.h && p.dx && p.dh, "dy, dlogdet, x, h, dx and dh are required");
  dispatch_dtype<void>(p.a.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
