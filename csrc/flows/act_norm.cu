// ActNorm forward/backward kernels and launchers (math: act_norm.h).
//
// One block of kThreads threads per (channel c, program p); it walks the position tiles p, p + P,
// ... of channel c (r = b·S + s, so vectors and images tile alike and a tile may cross samples).
// Scalar accesses: positions of one channel are unit-stride only within a sample. The backward's
// two channel sums are one dlk::block_sum2 per block (bitwise reproducible).
#include "flows/act_norm.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 256;

// I: the type of the position division (flows/bcs.h).
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
act_norm_fwd_kernel(
    // pointers
    const T* __restrict__ x, const float* __restrict__ m, const float* __restrict__ k,
    T* __restrict__ y,
    // sizes and strides
    int64_t C, int64_t S, int64_t rows, int64_t programs, int64_t stride_xb, int64_t stride_xc) {
  const int64_t c = blockIdx.x / programs, p = blockIdx.x % programs;
  const float mc = m[c], kc = k[c];
  for (int64_t t0 = p * kActNormTile; t0 < rows; t0 += programs * kActNormTile) {
    const int64_t t1 = t0 + kActNormTile < rows ? t0 + kActNormTile : rows;
    for (int64_t q = t0 + threadIdx.x; q < t1; q += kThreads) {
      const int64_t b = int64_t(I(q) / I(S)), s = q - b * S;
      y[(b * C + c) * S + s] = from_float<T>(to_float(x[b * stride_xb + c * stride_xc + s]) * mc + kc);
    }
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
act_norm_bwd_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ m,
    T* __restrict__ dx, float* __restrict__ partial,
    // sizes and strides
    int64_t C, int64_t S, int64_t rows, int64_t programs, int64_t stride_dyb, int64_t stride_dyc,
    int64_t stride_xb, int64_t stride_xc) {
  const int64_t c = blockIdx.x / programs, p = blockIdx.x % programs;
  const float mc = m[c];
  float sum_dy = 0.f, sum_dyx = 0.f;
  for (int64_t t0 = p * kActNormTile; t0 < rows; t0 += programs * kActNormTile) {
    const int64_t t1 = t0 + kActNormTile < rows ? t0 + kActNormTile : rows;
    for (int64_t q = t0 + threadIdx.x; q < t1; q += kThreads) {
      const int64_t b = int64_t(I(q) / I(S)), s = q - b * S;
      const float g = to_float(dy[b * stride_dyb + c * stride_dyc + s]);
      const float xv = to_float(x[b * stride_xb + c * stride_xc + s]);
      dx[(b * C + c) * S + s] = from_float<T>(g * mc);
      sum_dy += g;
      sum_dyx += g * xv;
    }
  }
  block_sum2(sum_dy, sum_dyx);
  if (threadIdx.x == 0) {
    partial[p * C + c] = sum_dy;
    partial[(programs + p) * C + c] = sum_dyx;
  }
}

// ---- host side --------------------------------------------------------------------------------
void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern act_norm: ") + what);
}

}  // namespace

void act_norm_fwd(const ActNormFwdParams& p, void* stream) {
  check(p.B >= 0 && p.C >= 0 && p.S >= 0, "sizes must be B, C, S >= 0");
  const int64_t rows = p.B * p.S;
  if (rows == 0 || p.C == 0) return;
  check(p.x.data && p.m && p.k && p.y, "x, m, k and y are required");
  const int64_t programs = act_norm_programs(rows);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_position_type(rows, [&](auto itag) {
      auto kern = act_norm_fwd_kernel<T, decltype(itag)>;
      DLK_LAUNCH(kern, unsigned(p.C * programs), kThreads, 0, static_cast<cudaStream_t>(stream),
                 static_cast<const T*>(p.x.data), p.m, p.k, static_cast<T*>(p.y), p.C, p.S, rows,
                 programs, p.x.stride_b, p.x.stride_c);
      check_launch("act_norm_fwd_kernel");
    });
  });
}

void act_norm_bwd(const ActNormBwdParams& p, void* stream) {
  check(p.B >= 0 && p.C >= 0 && p.S >= 0, "sizes must be B, C, S >= 0");
  const int64_t rows = p.B * p.S;
  if (rows == 0 || p.C == 0) return;
  check(p.dy.data && p.x.data && p.m && p.dx && p.partial, "dy, x, m, dx and partial are required");
  const int64_t programs = act_norm_programs(rows);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_position_type(rows, [&](auto itag) {
      auto kern = act_norm_bwd_kernel<T, decltype(itag)>;
      DLK_LAUNCH(kern, unsigned(p.C * programs), kThreads, 0, static_cast<cudaStream_t>(stream),
                 static_cast<const T*>(p.dy.data), static_cast<const T*>(p.x.data), p.m,
                 static_cast<T*>(p.dx), p.partial, p.C, p.S, rows, programs, p.dy.stride_b,
                 p.dy.stride_c, p.x.stride_b, p.x.stride_c);
      check_launch("act_norm_bwd_kernel");
    });
  });
}

}  // namespace dlk
