// Invertible 1×1 convolution kernels and launchers (math: inv_conv1x1.h).
//
// Matmul: a block takes kTile positions at a time; its threads stage x's C × kTile tile in shared
// memory (fp32), then thread t computes outputs o = t / kTile, + kThreads / kTile, ... of position
// t % kTile (W's reads are warp-uniform broadcasts). dW: a block stages dy's and x's C × kDwTile
// tiles (rows padded by one float: conflict-free column reads) and each thread accumulates up to
// kDwEntries entries (o, i) of its partial dW in registers over all of its tiles.
// I is the type of the position division (flows/bcs.h).
#include "flows/inv_conv1x1.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;
constexpr int kDwThreads = 512;
constexpr int kDwStride = int(kInvConvDwTile) + 1;
constexpr int kDwEntries = int(kInvConvMaxChannels * kInvConvMaxChannels) / kDwThreads;

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
inv_conv_matmul_kernel(
    // pointers
    const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ y,
    // sizes and strides
    int C, int64_t S, int64_t rows, int64_t stride_xb, int64_t stride_xc) {
  DLK_DYNAMIC_SHARED(float, xs);  // (C, kTile)
  const int j = threadIdx.x % kTile;
  for (int64_t t0 = int64_t(blockIdx.x) * kTile; t0 < rows; t0 += int64_t(gridDim.x) * kTile) {
    for (int idx = threadIdx.x; idx < C * kTile; idx += kThreads) {
      const int i = idx / kTile;
      const int64_t q = t0 + idx % kTile;
      float v = 0.f;
      if (q < rows) {
        const int64_t b = int64_t(I(q) / I(S));
        v = to_float(x[b * stride_xb + i * stride_xc + (q - b * S)]);
      }
      xs[idx] = v;
    }
    __syncthreads();
    const int64_t q = t0 + j;
    if (q < rows) {
      const int64_t b = int64_t(I(q) / I(S)), s = q - b * S;
      for (int o = threadIdx.x / kTile; o < C; o += kThreads / kTile) {
        float acc = 0.f;
        for (int i = 0; i < C; ++i) acc = fmaf(w[o * C + i], xs[i * kTile + j], acc);
        y[(b * C + o) * S + s] = from_float<T>(acc);
      }
    }
    __syncthreads();  // the tile is overwritten next
  }
}

template <typename T, typename I>
__global__ void __launch_bounds__(kDwThreads)
inv_conv_dw_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ partial,
    // sizes and strides
    int C, int64_t S, int64_t rows, int64_t stride_dyb, int64_t stride_dyc, int64_t stride_xb,
    int64_t stride_xc) {
  DLK_DYNAMIC_SHARED(float, buf);
  float* dys = buf;                  // (C, kDwStride)
  float* xs = buf + C * kDwStride;   // (C, kDwStride)
  float acc[kDwEntries];
#pragma unroll
  for (int e = 0; e < kDwEntries; ++e) acc[e] = 0.f;
  for (int64_t t0 = int64_t(blockIdx.x) * kInvConvDwTile; t0 < rows;
       t0 += int64_t(gridDim.x) * kInvConvDwTile) {
    for (int idx = threadIdx.x; idx < C * int(kInvConvDwTile); idx += kDwThreads) {
      const int i = idx / int(kInvConvDwTile), jj = idx % int(kInvConvDwTile);
      const int64_t q = t0 + jj;
      float g = 0.f, v = 0.f;
      if (q < rows) {
        const int64_t b = int64_t(I(q) / I(S)), s = q - b * S;
        g = to_float(dy[b * stride_dyb + i * stride_dyc + s]);
        v = to_float(x[b * stride_xb + i * stride_xc + s]);
      }
      dys[i * kDwStride + jj] = g;
      xs[i * kDwStride + jj] = v;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kDwEntries; ++e) {
      const int idx = threadIdx.x + e * kDwThreads;
      if (idx < C * C) {
        const float* drow = dys + (idx / C) * kDwStride;
        const float* xrow = xs + (idx % C) * kDwStride;
        float a = 0.f;
#pragma unroll 8
        for (int jj = 0; jj < int(kInvConvDwTile); ++jj) a = fmaf(drow[jj], xrow[jj], a);
        acc[e] += a;
      }
    }
    __syncthreads();  // the tiles are overwritten next
  }
#pragma unroll
  for (int e = 0; e < kDwEntries; ++e) {
    const int idx = threadIdx.x + e * kDwThreads;
    if (idx < C * C) partial[int64_t(blockIdx.x) * C * C + idx] = acc[e];
  }
}

// ---- host side --------------------------------------------------------------------------------
void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern inv_conv1x1: ") + what);
}

void check_sizes(int64_t B, int64_t C, int64_t S) {
  check(B >= 0 && S >= 0, "sizes must be B, S >= 0");
  check(C >= 1 && C <= kInvConvMaxChannels, "C must be in [1, 128]");
}

}  // namespace

void inv_conv1x1_matmul(const InvConvMatmulParams& p, void* stream) {
  check_sizes(p.B, p.C, p.S);
  check(p.num_sms >= 1, "num_sms must be >= 1");
  const int64_t rows = p.B * p.S;
  if (rows == 0) return;
  check(p.x.data && p.w && p.y, "x, w and y are required");
  const size_t smem = size_t(p.C) * kTile * sizeof(float);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_position_type(rows, [&](auto itag) {
      auto kern = inv_conv_matmul_kernel<T, decltype(itag)>;
      const int64_t tiles = (rows + kTile - 1) / kTile;
      const unsigned grid =
          unsigned(std::min<int64_t>(tiles, int64_t(p.num_sms) * max_blocks_per_sm(kern, kThreads)));
      DLK_LAUNCH(kern, grid, kThreads, smem, static_cast<cudaStream_t>(stream),
                 static_cast<const T*>(p.x.data), p.w, static_cast<T*>(p.y), int(p.C), p.S, rows,
                 p.x.stride_b, p.x.stride_c);
      check_launch("inv_conv_matmul_kernel");
    });
  });
}

void inv_conv1x1_dw(const InvConvDwParams& p, void* stream) {
  check_sizes(p.B, p.C, p.S);
  const int64_t rows = p.B * p.S;
  if (rows == 0) return;
  check(p.dy.data && p.x.data && p.partial, "dy, x and partial are required");
  const size_t smem = 2 * size_t(p.C) * kDwStride * sizeof(float);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_position_type(rows, [&](auto itag) {
      auto kern = inv_conv_dw_kernel<T, decltype(itag)>;
      DLK_LAUNCH(kern, unsigned(inv_conv1x1_dw_programs(rows)), kDwThreads, smem,
                 static_cast<cudaStream_t>(stream), static_cast<const T*>(p.dy.data),
                 static_cast<const T*>(p.x.data), p.partial, int(p.C), p.S, rows, p.dy.stride_b,
                 p.dy.stride_c, p.x.stride_b, p.x.stride_c);
      check_launch("inv_conv_dw_kernel");
    });
  });
}

}  // namespace dlk
