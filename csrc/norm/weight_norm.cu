// Weight normalization forward and backward kernels and their launchers (math: weight_norm.h).
//
// One block per row of v (D, K), grid-stride over rows, all math in fp32. Each block sweeps its row
// twice: a block-wide sum (sum v^2, or sum dw*v; dlk::block_sum, bitwise reproducible), then the
// output pass; the second read of a row usually hits L1/L2 (rows are weight slices: short next to
// activations). Chunks of V = 16 bytes (4 fp32 or 8 fp16/bf16 values, one 128-bit access) when K
// is a multiple of V and the pointers are 16-byte aligned; scalar accesses otherwise. The block
// has about 4 chunks of the row per thread (32 to 512 threads).
#include "norm/weight_norm.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kMaxThreads = 512;



template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads, 1)
weight_norm_fwd_kernel(
    // pointers
    const T* __restrict__ v, const float* __restrict__ g,   // (D, K), (D,)
    T* __restrict__ w, float* __restrict__ norm,             // (D, K), (D,)
    // sizes
    int64_t D, int64_t K) {
  const int64_t step = int64_t(blockDim.x) * V;
  for (int64_t row = blockIdx.x; row < D; row += gridDim.x) {
    const T* vr = v + row * K;
    T* wr = w + row * K;
    float sq = 0.f;
    for (int64_t k = int64_t(threadIdx.x) * V; k < K; k += step) {
      float x[V];
      load<T, V>(vr + k, x);
#pragma unroll
      for (int i = 0; i < V; ++i) sq += x[i] * x[i];
    }
    const float nrm = sqrtf(block_sum(sq));
    const float scale = g[row] / nrm;
    for (int64_t k = int64_t(threadIdx.x) * V; k < K; k += step) {
      float x[V];
      load<T, V>(vr + k, x);
#pragma unroll
      for (int i = 0; i < V; ++i) x[i] *= scale;
      store<T, V>(wr + k, x);
    }
    if (threadIdx.x == 0) norm[row] = nrm;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads, 1)
weight_norm_bwd_kernel(
    // pointers
    const T* __restrict__ dw, const T* __restrict__ v,         // (D, K)
    const float* __restrict__ g, const float* __restrict__ norm,  // (D,)
    T* __restrict__ dv, float* __restrict__ dg,                // (D, K), (D,)
    // sizes
    int64_t D, int64_t K) {
  const int64_t step = int64_t(blockDim.x) * V;
  for (int64_t row = blockIdx.x; row < D; row += gridDim.x) {
    const T* vr = v + row * K;
    const T* dwr = dw + row * K;
    T* dvr = dv + row * K;
    float acc = 0.f;
    for (int64_t k = int64_t(threadIdx.x) * V; k < K; k += step) {
      float x[V], d[V];
      load<T, V>(vr + k, x);
      load<T, V>(dwr + k, d);
#pragma unroll
      for (int i = 0; i < V; ++i) acc += d[i] * x[i];
    }
    const float dot = block_sum(acc);
    const float nrm = norm[row];
    const float a = g[row] / nrm;              // dv = a * (dw - v * dot / nrm^2)
    const float b = dot / (nrm * nrm);
    for (int64_t k = int64_t(threadIdx.x) * V; k < K; k += step) {
      float x[V], d[V];
      load<T, V>(vr + k, x);
      load<T, V>(dwr + k, d);
#pragma unroll
      for (int i = 0; i < V; ++i) d[i] = a * (d[i] - x[i] * b);
      store<T, V>(dvr + k, d);
    }
    if (threadIdx.x == 0) dg[row] = dot / nrm;
  }
}

// ---- host side --------------------------------------------------------------------------------
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern weight_norm: ") + what);
}

// About 4 chunks of the row per thread, 32 to kMaxThreads threads.
int block_threads(int64_t K, int V) {
  const int64_t t = (cdiv(cdiv(K, V), 4) + 31) / 32 * 32;
  return int(std::clamp<int64_t>(t, 32, kMaxThreads));
}

template <typename Kernel>
unsigned grid_size(Kernel kernel, int threads, int64_t D, int num_sms) {
  return unsigned(std::min<int64_t>(D, int64_t(num_sms) * max_blocks_per_sm(kernel, threads)));
}



template <typename T>
void fwd_launch(const WeightNormFwdParams& p, cudaStream_t stream) {
  const bool vec = p.K % kVec<T> == 0 && aligned16(p.v) && aligned16(p.w);
  dispatch_vec<T>(vec, [&](auto tag) {
    constexpr int V = decltype(tag)::value;
    auto kern = weight_norm_fwd_kernel<T, V>;
    const int threads = block_threads(p.K, V);
    DLK_LAUNCH(kern, grid_size(kern, threads, p.D, p.num_sms), threads, 0, stream,
               static_cast<const T*>(p.v), p.g, static_cast<T*>(p.w), p.norm, p.D, p.K);
    check_launch("weight_norm_fwd_kernel");
  });
}

template <typename T>
void bwd_launch(const WeightNormBwdParams& p, cudaStream_t stream) {
  const bool vec = p.K % kVec<T> == 0 && aligned16(p.dw) && aligned16(p.v) && aligned16(p.dv);
  dispatch_vec<T>(vec, [&](auto tag) {
    constexpr int V = decltype(tag)::value;
    auto kern = weight_norm_bwd_kernel<T, V>;
    const int threads = block_threads(p.K, V);
    DLK_LAUNCH(kern, grid_size(kern, threads, p.D, p.num_sms), threads, 0, stream,
               static_cast<const T*>(p.dw), static_cast<const T*>(p.v), p.g, p.norm,
               static_cast<T*>(p.dv), p.dg, p.D, p.K);
    check_launch("weight_norm_bwd_kernel");
  });
}

}  // namespace

void weight_norm_fwd(const WeightNormFwdParams& p, void* stream) {
  if (p.D == 0) return;
  check(p.D > 0 && p.K >= 0, "sizes must be D >= 0, K >= 0");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.g != nullptr && p.norm != nullptr && (p.K == 0 || (p.v != nullptr && p.w != nullptr)),
        "v, g, w and norm are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void weight_norm_bwd(const WeightNormBwdParams& p, void* stream) {
  if (p.D == 0) return;
  check(p.D > 0 && p.K >= 0, "sizes must be D >= 0, K >= 0");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.g != nullptr && p.norm != nullptr && p.dg != nullptr &&
            (p.K == 0 || (p.dw != nullptr && p.v != nullptr && p.dv != nullptr)),
        "dw, v, g, norm, dv and dg are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
