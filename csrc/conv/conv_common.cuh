// Helpers shared by the convolution kernels (csrc/conv/*.cu): activation math, element-wise
// grid sizing and argument checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace conv {

constexpr int kThreads = 256;  // element-wise kernels: one output element per thread and step

__device__ __forceinline__ float silu(float z) { return z * sigmoid_approx(z); }
// d silu(z) / dz
__device__ __forceinline__ float silu_grad(float z) {
  const float s = sigmoid_approx(z);
  return s * (1.f + z * (1.f - s));
}

__host__ __device__ inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check(bool ok, const char* op, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern ") + op + ": " + what);
}

// Grid of a grid-stride loop over `n` items, kThreads per block: no more blocks than fill the GPU.
template <typename Kernel>
unsigned elementwise_grid(Kernel kernel, int64_t n, int num_sms) {
  const int64_t fill = int64_t(num_sms) * max_blocks_per_sm(kernel, kThreads);
  return unsigned(std::max<int64_t>(1, std::min(cdiv(n, kThreads), fill)));
}

// f(std::integral_constant<int, K>) for a runtime K in [1, kMax].
template <int kMax, typename F>
void dispatch_int(int k, F&& f) {
  if constexpr (kMax >= 1) {
    if (k == kMax) return f(std::integral_constant<int, kMax>{});
    return dispatch_int<kMax - 1>(k, f);
  } else {
    throw std::invalid_argument("dlkern: compile-time size out of range");
  }
}

}  // namespace conv
}  // namespace dlk
