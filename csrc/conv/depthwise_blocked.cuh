// Register-blocked channels_last depthwise conv2d kernels (launched by depthwise_conv2d.cu, the
// only file that includes this one; its header comment says when and why): the forward (also dx
// at unit stride, FLIP) and dweight/dbias with its fixed-order chunk sum.
#pragma once

#include <type_traits>

#include "conv/conv_common.cuh"
#include "conv/depthwise_conv2d.h"

namespace dlk {
namespace depthwise {

struct Strides4 {
  int64_t n, c, h, w;
};

inline Strides4 strides4(const int64_t (&s)[4]) { return {s[0], s[1], s[2], s[3]}; }

// ---- forward ----------------------------------------------------------------------------------
constexpr int kVecC = 4;         // channels per thread: one 8-byte (16-bit T) or 16-byte (fp32) access
constexpr int kRun = 4;          // consecutive output pixels per thread along ow
constexpr int kTileVecs = 32;    // channel vectors per block at most (128 channels)
constexpr int kBlockedThreads = 256;
template <bool UNIT>
constexpr int kRows = UNIT ? 2 : 1;  // output rows per thread (input rows shared at unit stride)

template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[kVecC]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 c = *reinterpret_cast<const float4*>(p);
    v[0] = c.x, v[1] = c.y, v[2] = c.z, v[3] = c.w;
  } else {
    const uint2 c = *reinterpret_cast<const uint2*>(p);
    unpack_pair<T>(c.x, v[0], v[1]);
    unpack_pair<T>(c.y, v[2], v[3]);
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float (&v)[kVecC]) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack_pair<T>(v[0], v[1]), pack_pair<T>(v[2], v[3]));
  }
}

// Block (tile_vecs, rows): threadIdx.x picks the channel vector of the block's channel tile
// (blockIdx.y), threadIdx.y walks items (n, kRows output rows, kRun output columns), grid-stride
// over x. UNIT: stride 1 and dilation 1 in both dimensions, so neighbouring outputs share input
// rows and columns (each input value loaded once per item).
// FLIP: the filter turned by 180 degrees (dx at unit stride is this forward over dy; see dx_launch_blocked).
template <typename T, int K, bool UNIT, bool FLIP>
__global__ void __launch_bounds__(kBlockedThreads) depthwise_conv2d_fwd_cl_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ y,
    // geometry, strides (x.c = y.c = 1)
    DepthwiseConv2dGeometry g, Strides4 sx, Strides4 sy) {
  __shared__ float4 taps[K * K][kTileVecs];  // fp32 filter taps of the block's channels
  const int tile_vecs = blockDim.x;
  const int64_t c = (int64_t(blockIdx.y) * tile_vecs + threadIdx.x) * kVecC;
  const int tid = threadIdx.y * tile_vecs + threadIdx.x;
  for (int i = tid; i < K * K * tile_vecs; i += tile_vecs * blockDim.y) {
    const int tap = i / tile_vecs, v = i % tile_vecs;
    const int src = FLIP ? K * K - 1 - tap : tap;
    const int64_t cv = (int64_t(blockIdx.y) * tile_vecs + v) * kVecC;
    float w[kVecC];
#pragma unroll
    for (int j = 0; j < kVecC; ++j) w[j] = cv + j < g.C ? to_float(weight[(cv + j) * (K * K) + src]) : 0.f;
    taps[tap][v] = make_float4(w[0], w[1], w[2], w[3]);
  }
  __syncthreads();
  if (c >= g.C) return;  // no barrier below
  float b[kVecC] = {0.f, 0.f, 0.f, 0.f};
  if (bias != nullptr) {
#pragma unroll
    for (int j = 0; j < kVecC; ++j) b[j] = to_float(bias[c + j]);
  }
  // 32-bit item and image coordinates: the host launches this kernel only when the item count and
  // every coordinate fit in int (64-bit division per item would cost more than the item's taps).
  const int OH = int(g.OH), OW = int(g.OW), H = int(g.H), W = int(g.W);
  const int runs = (OW + kRun - 1) / kRun, row_groups = (OH + kRows<UNIT> - 1) / kRows<UNIT>;
  const int items = int(g.N) * row_groups * runs;
  for (int item = blockIdx.x * blockDim.y + threadIdx.y; item < items; item += gridDim.x * blockDim.y) {
    const int run = item % runs, rest = item / runs;
    const int oh0 = (rest % row_groups) * kRows<UNIT>, n = rest / row_groups;
    const int ow0 = run * kRun;
    float acc[kRows<UNIT>][kRun][kVecC];
#pragma unroll
    for (int o = 0; o < kRows<UNIT>; ++o)
#pragma unroll
      for (int r = 0; r < kRun; ++r)
#pragma unroll
        for (int j = 0; j < kVecC; ++j) acc[o][r][j] = b[j];
    const T* xn = x + n * sx.n + c;
    if constexpr (UNIT) {
      // Input row oh0 - pad + i feeds output row o through filter row i - o. Its strip
      // iw = ow0 - pad + [0, kRun + K - 1) feeds output column r through filter column j - r;
      // zeros outside the image, the columns' validity the same for every row.
      constexpr int kStrip = kRun + K - 1;
      const int iw0 = ow0 - g.pad[1];
      bool in_w[kStrip];
#pragma unroll
      for (int j = 0; j < kStrip; ++j) in_w[j] = unsigned(iw0 + j) < unsigned(W);
#pragma unroll
      for (int i = 0; i < K + kRows<UNIT> - 1; ++i) {
        const int ih = oh0 - g.pad[0] + i;
        if (unsigned(ih) >= unsigned(H)) continue;
        const T* px = xn + ih * sx.h + int64_t(iw0) * sx.w;
        float strip[kStrip][kVecC];
#pragma unroll
        for (int j = 0; j < kStrip; ++j, px += sx.w) {
          if (in_w[j]) {
            load4(px, strip[j]);
          } else {
#pragma unroll
            for (int v = 0; v < kVecC; ++v) strip[j][v] = 0.f;
          }
        }
#pragma unroll
        for (int o = 0; o < kRows<UNIT>; ++o) {
          const int kh = i - o;  // compile-time after unrolling
          if (kh < 0 || kh >= K) continue;
#pragma unroll
          for (int kw = 0; kw < K; ++kw) {
            const float4 w = taps[kh * K + kw][threadIdx.x];
#pragma unroll
            for (int r = 0; r < kRun; ++r) {
              acc[o][r][0] = fmaf(w.x, strip[r + kw][0], acc[o][r][0]);
              acc[o][r][1] = fmaf(w.y, strip[r + kw][1], acc[o][r][1]);
              acc[o][r][2] = fmaf(w.z, strip[r + kw][2], acc[o][r][2]);
              acc[o][r][3] = fmaf(w.w, strip[r + kw][3], acc[o][r][3]);
            }
          }
        }
      }
    } else {
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        const int ih = oh0 * g.stride[0] - g.pad[0] + kh * g.dilation[0];
        if (unsigned(ih) >= unsigned(H)) continue;
        const T* xrow = xn + ih * sx.h;
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          const float4 w = taps[kh * K + kw][threadIdx.x];
#pragma unroll
          for (int r = 0; r < kRun; ++r) {
            const int iw = (ow0 + r) * g.stride[1] - g.pad[1] + kw * g.dilation[1];
            if (unsigned(iw) >= unsigned(W)) continue;
            float v[kVecC];
            load4(xrow + iw * sx.w, v);
            acc[0][r][0] = fmaf(w.x, v[0], acc[0][r][0]);
            acc[0][r][1] = fmaf(w.y, v[1], acc[0][r][1]);
            acc[0][r][2] = fmaf(w.z, v[2], acc[0][r][2]);
            acc[0][r][3] = fmaf(w.w, v[3], acc[0][r][3]);
          }
        }
      }
    }
#pragma unroll
    for (int o = 0; o < kRows<UNIT>; ++o) {
      if (oh0 + o >= OH) break;
      T* yrow = y + n * sy.n + (oh0 + o) * sy.h + c;
#pragma unroll
      for (int r = 0; r < kRun; ++r) {
        if (ow0 + r < OW) store4(yrow + (ow0 + r) * sy.w, acc[o][r]);
      }
    }
  }
}

// ---- dweight / dbias ----------------------------------------------------------------------------
// Block (tile_vecs, K): threadIdx.x picks the channel vector, threadIdx.y the filter row kh; the
// thread keeps K taps x kVecC channels (+ the bias for kh = 0) in registers over the output rows
// of its chunk (blockIdx.x), runs of kRun columns at a time: dy's run and x's strip are loaded once
// per run (the K rows' threads share them through L1). Each chunk writes its fp32 partial sums
// to scratch[chunk][tap or K*K for the bias][C]; depthwise_conv2d_dweight_sum_kernel adds the
// chunks in order (deterministic).
template <typename T, int K, bool UNIT>
__global__ void __launch_bounds__(kTileVecs * 7) depthwise_conv2d_dweight_cl_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ scratch,
    // geometry, strides (x.c = dy.c = 1), output rows per chunk
    DepthwiseConv2dGeometry g, Strides4 sdy, Strides4 sx, int rows_per_chunk) {
  const int64_t c = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * kVecC;
  if (c >= g.C) return;  // no barrier in this kernel
  const int kh = threadIdx.y;
  const int OH = int(g.OH), OW = int(g.OW), H = int(g.H), W = int(g.W);
  const int row_end = min(int(g.N) * OH, (int(blockIdx.x) + 1) * rows_per_chunk);
  float acc[K][kVecC] = {};
  float bias_acc[kVecC] = {};
  for (int row = blockIdx.x * rows_per_chunk; row < row_end; ++row) {
    const int oh = row % OH, n = row / OH;
    const int ih = oh * g.stride[0] - g.pad[0] + kh * g.dilation[0];
    const bool in_h = unsigned(ih) < unsigned(H);
    if (!in_h && kh != 0) continue;  // the kh = 0 thread still sums dy for the bias
    const T* dyrow = dy + n * sdy.n + oh * sdy.h + c;
    const T* xrow = x + n * sx.n + int64_t(in_h ? ih : 0) * sx.h + c;
    for (int ow0 = 0; ow0 < OW; ow0 += kRun) {
      float d[kRun][kVecC];
#pragma unroll
      for (int r = 0; r < kRun; ++r) {
        if (ow0 + r < OW) {
          load4(dyrow + (ow0 + r) * sdy.w, d[r]);
        } else {
#pragma unroll
          for (int v = 0; v < kVecC; ++v) d[r][v] = 0.f;
        }
      }
      if (kh == 0) {
#pragma unroll
        for (int r = 0; r < kRun; ++r)
#pragma unroll
          for (int v = 0; v < kVecC; ++v) bias_acc[v] += d[r][v];
      }
      if (!in_h) continue;
      if constexpr (UNIT) {
        constexpr int kStrip = kRun + K - 1;
        const int iw0 = ow0 - g.pad[1];
        float strip[kStrip][kVecC];
        const T* px = xrow + int64_t(iw0) * sx.w;
#pragma unroll
        for (int j = 0; j < kStrip; ++j, px += sx.w) {
          if (unsigned(iw0 + j) < unsigned(W)) {
            load4(px, strip[j]);
          } else {
#pragma unroll
            for (int v = 0; v < kVecC; ++v) strip[j][v] = 0.f;
          }
        }
#pragma unroll
        for (int kw = 0; kw < K; ++kw)
#pragma unroll
          for (int r = 0; r < kRun; ++r)
#pragma unroll
            for (int v = 0; v < kVecC; ++v) acc[kw][v] = fmaf(d[r][v], strip[r + kw][v], acc[kw][v]);
      } else {
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
#pragma unroll
          for (int r = 0; r < kRun; ++r) {
            const int iw = (ow0 + r) * g.stride[1] - g.pad[1] + kw * g.dilation[1];
            if (unsigned(iw) >= unsigned(W)) continue;
            float v4[kVecC];
            load4(xrow + iw * sx.w, v4);
#pragma unroll
            for (int v = 0; v < kVecC; ++v) acc[kw][v] = fmaf(d[r][v], v4[v], acc[kw][v]);
          }
        }
      }
    }
  }
  float* part = scratch + int64_t(blockIdx.x) * (K * K + 1) * g.C + c;
#pragma unroll
  for (int kw = 0; kw < K; ++kw) {
    *reinterpret_cast<float4*>(part + int64_t(kh * K + kw) * g.C) =
        make_float4(acc[kw][0], acc[kw][1], acc[kw][2], acc[kw][3]);
  }
  if (kh == 0) {
    *reinterpret_cast<float4*>(part + int64_t(K * K) * g.C) =
        make_float4(bias_acc[0], bias_acc[1], bias_acc[2], bias_acc[3]);
  }
}

// dweight[c][tap] (and dbias[c] for tap == taps) = the chunks' partial sums, in a fixed order.
// Block (32, kSumGroups): threadIdx.x walks the (tap, c) entries (coalesced), threadIdx.y sums
// the chunks k = y, y + kSumGroups, ...; the groups' sums are added in group order.
constexpr int kSumGroups = 8;

__global__ void __launch_bounds__(32 * kSumGroups) depthwise_conv2d_dweight_sum_kernel(
    const float* __restrict__ scratch, float* __restrict__ dweight, float* __restrict__ dbias,
    int64_t C, int taps, int chunks) {
  __shared__ float part[kSumGroups][32];
  const int64_t total = C * (taps + 1);
  for (int64_t base = blockIdx.x * int64_t(32); base < total; base += int64_t(gridDim.x) * 32) {
    const int64_t i = base + threadIdx.x;
    float sum = 0.f;
    if (i < total) {
      for (int k = threadIdx.y; k < chunks; k += kSumGroups) sum += scratch[int64_t(k) * total + i];
    }
    part[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && i < total) {
      float all = 0.f;
#pragma unroll
      for (int k = 0; k < kSumGroups; ++k) all += part[k][threadIdx.x];
      const int64_t tap = i / C, c = i % C;  // c fastest: the chunk rows are read coalesced
      if (tap < taps) {
        dweight[c * taps + tap] = all;
      } else if (dbias != nullptr) {
        dbias[c] = all;
      }
    }
    __syncthreads();  // part is rewritten by the next iteration
  }
}

}  // namespace depthwise
}  // namespace dlk
