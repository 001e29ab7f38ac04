// BatchNorm / GroupNorm / InstanceNorm forward and backward kernels and their launchers (math and
// conventions: channel_norm.h). Every tensor is an (N, C, S) view with arbitrary strides.
//
// Layout. x's strides pick the kernels: "channel-inner" (channels_last, or S == 1 with unit
// channel stride) runs threads along C; otherwise threads run along S. Each kernel has a vector
// variant (V = 16 bytes of values per access: 4 fp32 or 8 fp16/bf16) used when every operand is
// unit-stride and 16-byte aligned along the vectorized dim, and a scalar variant (V = 1, any
// strides). All offsets are int64; the index of an element within a reduction unit, of a row
// (n, s) and of a line (n, c) is below 2^31, and is split with a precomputed magic-number division.
//
// Statistics (forward, compute_stats):
//  * stats_narrow_kernel: one warp per (unit, split) sweeps a contiguous range of the unit's
//    elements, 32*V consecutive ones per step (coalesced when the unit's elements run along
//    unit-stride memory: NCHW BatchNorm over (N, S), GroupNorm over (cg, S) or (S, cg)). Per-lane
//    Welford (chunks of V merged with Chan's formula), then a fixed shuffle tree to lane 0.
//  * stats_wide_kernel: blocks of TX x TY threads own TX*V adjacent channels (one sample for
//    GroupNorm) and a split of the rows (n, s): coalesced along C. Per-thread Welford over its
//    rows, then a fixed tree merge over threadIdx.y in shared memory.
//  Either writes partial (mean, M2) per (split, sub-unit); stats_finalize_kernel (a warp per unit)
//  merges the unit's splits (and, for GroupNorm channel-inner, its cg channels) in a fixed order.
// Apply (forward): apply_s_kernel / apply_c_kernel, y = act((x - mean) * rstd * w + b), with the
//  per-line (S-inner) or per-channel (C-inner) constants hoisted out of the element loop.
// Backward: grad_narrow_kernel / grad_wide_kernel write per (split, sub-unit) sums of g and g*xhat
//  (sub-unit: the channel for BatchNorm, (n, c) for GroupNorm); grad_finalize_kernel reduces them
//  per unit into c1/c2 (and BatchNorm's dweight/dbias), channel_sums_kernel into GroupNorm's
//  dweight/dbias; grad_apply_s_kernel / grad_apply_c_kernel write dx.
// All sums are deterministic: fixed per-thread orders, fixed trees, fixed split order; no atomics.
#include "norm/channel_norm.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 256;  // every kernel's block size
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxIndex = INT32_MAX;  // element/row/line indices stay below this


// ---- index helpers ----------------------------------------------------------------------------
// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 with a multiply-high and a shift (Granlund and
// Montgomery, as torch's IntDivider): m = floor(2^32 * (2^s - d) / d) + 1, s = ceil(log2(d)).
struct FastDiv {
  uint32_t d, m, s;
};

FastDiv make_fast_div(int64_t d) {
  uint32_t s = 0;
  while ((int64_t(1) << s) < d) ++s;
  const uint64_t m = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - uint64_t(d))) / uint64_t(d) + 1;
  return {uint32_t(d), uint32_t(m), s};
}

__device__ __forceinline__ uint32_t div_of(const FastDiv& f, uint32_t n) {
  const uint32_t t = uint32_t((uint64_t(n) * f.m) >> 32);
  return (t + n) >> f.s;
}

// Flat index r of a sweep lies at (r / len) * stride_run + (r % len) * stride_pos: `len` elements
// per run. Vector variants need stride_pos == 1 and len % V == 0 (a chunk never leaves its run).
struct Runs {
  FastDiv len;
  int64_t stride_run, stride_pos;
};

__device__ __forceinline__ int64_t runs_offset(const Runs& g, int64_t r) {
  const uint32_t q = div_of(g.len, uint32_t(r));
  return int64_t(q) * g.stride_run + (r - int64_t(q) * g.len.d) * g.stride_pos;
}

// Statistics unit of channel c in sample n: n * per_sample + c / channels_per_unit
// (BatchNorm: per_sample = 0, channels_per_unit = 1).
struct UnitMap {
  int64_t per_sample;
  FastDiv channels_per_unit;
};

__device__ __forceinline__ int64_t unit_of(const UnitMap& m, int64_t n, int64_t c) {
  return n * m.per_sample + div_of(m.channels_per_unit, uint32_t(c));
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- loads and stores: V consecutive values (V > 1: one aligned 16-byte access) -----------------

// ---- activations (Activation codes; GELU is the exact erf form, as torch's default) -----------
__device__ __forceinline__ float act_fwd(float p, int act) {
  switch (act) {
    case 1: return p / (1.f + expf(-p));
    case 2: return 0.5f * p * (1.f + erff(p * 0.70710678118654752f));
    case 3: return p < 0.f ? 0.f : p;
    default: return p;
  }
}

// dy * act'(p)
__device__ __forceinline__ float act_grad(float p, float dy, int act) {
  switch (act) {
    case 1: {
      const float sig = 1.f / (1.f + expf(-p));
      return dy * sig * (1.f + p * (1.f - sig));
    }
    case 2: {
      const float cdf = 0.5f * (1.f + erff(p * 0.70710678118654752f));
      const float pdf = expf(-0.5f * p * p) * 0.3989422804014327f;  // 1/sqrt(2*pi)
      return dy * (cdf + p * pdf);
    }
    case 3: return p > 0.f ? dy : 0.f;
    default: return dy;
  }
}



// Adds V values: one element (Welford's update) or a chunk's own mean and M2, merged with Chan's.
template <int V>
__device__ __forceinline__ void welford_push(Welford& w, const float (&v)[V]) {
  if constexpr (V == 1) {
    w.n += 1.f;
    const float d = v[0] - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (v[0] - w.mean);
  } else {
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) sum += v[i];
    const float cmean = sum * (1.f / V);
    float cm2 = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) cm2 += (v[i] - cmean) * (v[i] - cmean);
    const float n = w.n + float(V);
    const float d = cmean - w.mean;
    const float fb = float(V) / n;
    w.mean += d * fb;
    w.m2 += cm2 + d * d * w.n * fb;
    w.n = n;
  }
}

// Lane 0 ends with the warp's statistics (a fixed shuffle tree: deterministic).
__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Welford o = {__shfl_down_sync(kFullMask, w.n, offset),
                       __shfl_down_sync(kFullMask, w.mean, offset),
                       __shfl_down_sync(kFullMask, w.m2, offset)};
    w = welford_merge(w, o);
  }
  return w;
}

// Where the elements of a narrow kernel's unit u lie: from
// (u / unit_inner) * stride_uo + (u % unit_inner) * stride_ui, flat index r at
// runs_offset(runs, r).
struct NarrowGeom {
  int64_t stride_uo, stride_ui;
  Runs runs;
};

__device__ __forceinline__ int64_t unit_base(const NarrowGeom& g, int64_t u, int64_t unit_inner) {
  const int64_t outer = u / unit_inner;
  return outer * g.stride_uo + (u - outer * unit_inner) * g.stride_ui;
}

// Where a wide kernel's rows lie: sample block z at z * stride_z, channel c at c * stride_c, row r
// at runs_offset(rows, r).
struct WideGeom {
  int64_t stride_z, stride_c;
  Runs rows;
};

// ---- statistics kernels ------------------------------------------------------------------------
template <typename T, int V>
__global__ void __launch_bounds__(kThreads, 1)
stats_narrow_kernel(
    // pointers
    const T* __restrict__ x,
    float* __restrict__ part_mean, float* __restrict__ part_m2,  // (splits, units)
    // units, their elements and the split of each unit
    int64_t units, int64_t unit_inner, NarrowGeom geom, int64_t R, int64_t r_per_split,
    int64_t splits) {
  const int lane = threadIdx.x & 31;
  const int64_t item = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // warp-uniform
  if (item < units * splits) {
    const int64_t unit = item / splits;
    const int64_t split = item - unit * splits;
    const T* xu = x + unit_base(geom, unit, unit_inner);
    const int64_t r_end = min64(split * r_per_split + r_per_split, R);
    Welford w = {0.f, 0.f, 0.f};
#pragma unroll 4
    for (int64_t r = split * r_per_split + lane * V; r < r_end; r += 32 * V) {
      float v[V];
      load<T, V>(xu + runs_offset(geom.runs, r), v);
      welford_push(w, v);
    }
    w = warp_welford(w);
    if (lane == 0) {
      part_mean[split * units + unit] = w.mean;
      part_m2[split * units + unit] = w.m2;
    }
  }
}

// Block (TX, TY): thread (tx, ty) owns channels c0 .. c0+V-1 (c0 = (blockIdx.x*TX + tx) * V) of
// sample block blockIdx.z and rows ty, ty + TY, ... of split blockIdx.y. TY is a power of 2.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads, 1)
stats_wide_kernel(
    // pointers
    const T* __restrict__ x,
    float* __restrict__ part_mean, float* __restrict__ part_m2,  // (splits, sub_units)
    // sizes
    int64_t C, WideGeom geom, int64_t R, int64_t r_per_split, int64_t sub_units) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int t = ty * blockDim.x + tx;
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + tx) * V;
  const int64_t split = blockIdx.y;
  const int64_t r_end = min64(split * r_per_split + r_per_split, R);
  float n = 0.f, mean[V], m2[V];
#pragma unroll
  for (int i = 0; i < V; ++i) mean[i] = m2[i] = 0.f;
  if (c0 < C) {
    const T* xc = x + int64_t(blockIdx.z) * geom.stride_z + c0 * geom.stride_c;
#pragma unroll 4
    for (int64_t r = split * r_per_split + ty; r < r_end; r += blockDim.y) {
      float v[V];
      load<T, V>(xc + runs_offset(geom.rows, r), v);
      n += 1.f;
      const float inv = 1.f / n;  // one count for the V channels
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float d = v[i] - mean[i];
        mean[i] += d * inv;
        m2[i] += d * (v[i] - mean[i]);
      }
    }
  }

  // Tree merge over ty (row ty merges row ty + h, h = TY/2, TY/4, ...): row 0 ends with the
  // block's statistics.
  __shared__ float s_n[kThreads];
  __shared__ float s_mean[V][kThreads];
  __shared__ float s_m2[V][kThreads];
  s_n[t] = n;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    s_mean[i][t] = mean[i];
    s_m2[i][t] = m2[i];
  }
  __syncthreads();
  for (int h = blockDim.y / 2; h > 0; h /= 2) {
    if (ty < h) {
      const int o = t + h * blockDim.x;
      const float nb = s_n[o];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const Welford m = welford_merge(Welford{n, mean[i], m2[i]},
                                        Welford{nb, s_mean[i][o], s_m2[i][o]});
        mean[i] = m.mean;
        m2[i] = m.m2;
        s_mean[i][t] = mean[i];
        s_m2[i][t] = m2[i];
      }
      n += nb;
      s_n[t] = n;
    }
    __syncthreads();
  }
  if (ty == 0 && c0 < C) {
    const int64_t col = split * sub_units + int64_t(blockIdx.z) * C + c0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      part_mean[col + i] = mean[i];
      part_m2[col + i] = m2[i];
    }
  }
}

// A warp per unit u: merges the partials (split s, sub-unit u*k + j) for s < splits, j < k, each
// over min(r_per_split, R_sub - s*r_per_split) elements, in a fixed order.
__global__ void __launch_bounds__(kThreads, 1)
stats_finalize_kernel(
    // pointers
    const float* __restrict__ part_mean, const float* __restrict__ part_m2,  // (splits, sub_units)
    float* __restrict__ mean, float* __restrict__ rstd,  // (units,)
    float* __restrict__ var_unbiased,                     // (units,) or nullptr
    // sizes
    int64_t units, int64_t k, int64_t sub_units, int64_t R_sub, int64_t r_per_split,
    int64_t splits,
    // meta
    float eps, float inv_count, float inv_count_unbiased) {
  const int lane = threadIdx.x & 31;
  const int64_t unit = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // warp-uniform
  if (unit < units) {
    Welford w = {0.f, 0.f, 0.f};
    for (int64_t i = lane; i < splits * k; i += 32) {
      const int64_t s = i / k;
      const int64_t idx = s * sub_units + unit * k + (i - s * k);
      const float count = float(min64(r_per_split, R_sub - s * r_per_split));
      w = welford_merge(w, Welford{count, part_mean[idx], part_m2[idx]});
    }
    w = warp_welford(w);
    if (lane == 0) {
      mean[unit] = w.mean;
      rstd[unit] = rsqrtf(w.m2 * inv_count + eps);
      if (var_unbiased != nullptr) var_unbiased[unit] = w.m2 * inv_count_unbiased;
    }
  }
}

// ---- forward apply ------------------------------------------------------------------------------
// S-inner. Block (TX, TY): thread row ty owns line (n, c) = blockIdx.x*TY + ty and its chunks
// (blockIdx.y*TX + tx)*V, + gridDim.y*TX*V, ... along S.
template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, 1)
apply_s_kernel(
    // pointers
    const T* __restrict__ x, T* __restrict__ y,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    // sizes and strides
    int64_t lines, FastDiv C, int64_t S, NcsStrides xs, NcsStrides ys, UnitMap um,
    // meta
    int act) {
  const int64_t line = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (line < lines) {  // no barrier in this kernel
    const int64_t n = div_of(C, uint32_t(line));
    const int64_t c = line - n * C.d;
    const int64_t u = unit_of(um, n, c);
    const float mu = mean[u];
    const float scale = rstd[u] * (weight != nullptr ? weight[c] : 1.f);
    const float shift = bias != nullptr ? bias[c] : 0.f;
    const T* xl = x + n * xs.n + c * xs.c;
    T* yl = y + n * ys.n + c * ys.c;
    const int64_t step = int64_t(gridDim.y) * blockDim.x * V;
    for (int64_t s = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * V; s < S; s += step) {
      float v[V];
      load<T, V>(xl + s * xs.s, v);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float h = (v[i] - mu) * scale + shift;
        v[i] = HAS_ACT ? act_fwd(h, act) : h;
      }
      store<T, V>(yl + s * ys.s, v);
    }
  }
}

// C-inner. Block (TX, TY): thread (tx, ty) owns channels c0 .. c0+V-1 (c0 = (blockIdx.x*TX+tx)*V)
// and rows (n, s) = blockIdx.y*TY + ty, + gridDim.y*TY, ...
template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, 1)
apply_c_kernel(
    // pointers
    const T* __restrict__ x, T* __restrict__ y,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    // sizes and strides
    int64_t rows, FastDiv S, int64_t C, NcsStrides xs, NcsStrides ys, UnitMap um,
    // meta
    int act) {
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (c0 < C) {  // no barrier in this kernel; V > 1 only when C % V == 0
    float b[V], mu[V], scale[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      b[i] = bias != nullptr ? bias[c0 + i] : 0.f;
      mu[i] = scale[i] = 0.f;
    }
    int64_t n_loaded = -1;  // the sample whose statistics mu/scale hold
    const int64_t step = int64_t(gridDim.y) * blockDim.y;
    for (int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; r < rows; r += step) {
      const int64_t n = div_of(S, uint32_t(r));
      const int64_t s = r - n * S.d;
      if (n != n_loaded) {
        n_loaded = n;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int64_t u = unit_of(um, n, c0 + i);
          mu[i] = mean[u];
          scale[i] = rstd[u] * (weight != nullptr ? weight[c0 + i] : 1.f);
        }
      }
      float v[V];
      load<T, V>(x + n * xs.n + s * xs.s + c0 * xs.c, v);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float h = (v[i] - mu[i]) * scale[i] + b[i];
        v[i] = HAS_ACT ? act_fwd(h, act) : h;
      }
      store<T, V>(y + n * ys.n + s * ys.s + c0 * ys.c, v);
    }
  }
}

// ---- backward: per (split, sub-unit) sums of g and g * xhat -----------------------------------
// The element loops are unrolled (more loads in flight) except with an activation, whose code
// would then cost too many registers.
template <bool HAS_ACT>
constexpr int kGradUnroll = HAS_ACT ? 1 : 4;

// Narrow: a warp per (sub-unit, split); sub-unit u is channel u % C of sample u / C (BatchNorm:
// u = c, unit_inner = C with stride_uo = 0).
template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, 1)
grad_narrow_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ dy,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    float* __restrict__ part_g, float* __restrict__ part_gx,            // (splits, sub_units)
    // sub-units and their elements
    int64_t sub_units, int64_t C, NarrowGeom xg, NarrowGeom dyg, int64_t R, int64_t r_per_split,
    int64_t splits, UnitMap um,
    // meta
    int act) {
  const int lane = threadIdx.x & 31;
  const int64_t item = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // warp-uniform
  if (item < sub_units * splits) {
    const int64_t sub = item / splits;
    const int64_t split = item - sub * splits;
    const int64_t n = sub / C;
    const int64_t c = sub - n * C;
    const int64_t u = unit_of(um, n, c);
    const float mu = mean[u], rs = rstd[u];
    const float w = HAS_ACT && weight != nullptr ? weight[c] : 1.f;
    const float b = HAS_ACT && bias != nullptr ? bias[c] : 0.f;
    const T* xu = x + unit_base(xg, sub, C);
    const T* dyu = dy + unit_base(dyg, sub, C);
    const int64_t r_end = min64(split * r_per_split + r_per_split, R);
    float acc_g = 0.f, acc_gx = 0.f;
#pragma unroll(kGradUnroll<HAS_ACT>)
    for (int64_t r = split * r_per_split + lane * V; r < r_end; r += 32 * V) {
      float xv[V], g[V];
      load<T, V>(xu + runs_offset(xg.runs, r), xv);
      load<T, V>(dyu + runs_offset(dyg.runs, r), g);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xh = (xv[i] - mu) * rs;
        const float gi = HAS_ACT ? act_grad(xh * w + b, g[i], act) : g[i];
        acc_g += gi;
        acc_gx += gi * xh;
      }
    }
    acc_g = warp_sum(acc_g);
    acc_gx = warp_sum(acc_gx);
    if (lane == 0) {
      part_g[split * sub_units + sub] = acc_g;
      part_gx[split * sub_units + sub] = acc_gx;
    }
  }
}

// Wide: as stats_wide_kernel; sub-unit (blockIdx.z, c) at column blockIdx.z * C + c.
template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, HAS_ACT ? 2 : 1)
grad_wide_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ dy,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    float* __restrict__ part_g, float* __restrict__ part_gx,            // (splits, sub_units)
    // sizes
    int64_t C, WideGeom xg, WideGeom dyg, int64_t R, int64_t r_per_split, int64_t sub_units,
    UnitMap um,
    // meta
    int act) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int t = ty * blockDim.x + tx;
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + tx) * V;
  const int64_t z = blockIdx.z;
  const int64_t split = blockIdx.y;
  const int64_t r_end = min64(split * r_per_split + r_per_split, R);
  float acc_g[V], acc_gx[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc_g[i] = acc_gx[i] = 0.f;
  if (c0 < C) {
    float mu[V], rs[V], w[V], b[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int64_t u = unit_of(um, z, c0 + i);
      mu[i] = mean[u];
      rs[i] = rstd[u];
      w[i] = HAS_ACT && weight != nullptr ? weight[c0 + i] : 1.f;
      b[i] = HAS_ACT && bias != nullptr ? bias[c0 + i] : 0.f;
    }
    const T* xc = x + z * xg.stride_z + c0 * xg.stride_c;
    const T* dyc = dy + z * dyg.stride_z + c0 * dyg.stride_c;
#pragma unroll(kGradUnroll<HAS_ACT>)
    for (int64_t r = split * r_per_split + ty; r < r_end; r += blockDim.y) {
      float xv[V], g[V];
      load<T, V>(xc + runs_offset(xg.rows, r), xv);
      load<T, V>(dyc + runs_offset(dyg.rows, r), g);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float xh = (xv[i] - mu[i]) * rs[i];
        const float gi = HAS_ACT ? act_grad(xh * w[i] + b[i], g[i], act) : g[i];
        acc_g[i] += gi;
        acc_gx[i] += gi * xh;
      }
    }
  }

  __shared__ float s_g[V][kThreads];
  __shared__ float s_gx[V][kThreads];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    s_g[i][t] = acc_g[i];
    s_gx[i][t] = acc_gx[i];
  }
  __syncthreads();
  for (int h = blockDim.y / 2; h > 0; h /= 2) {
    if (ty < h) {
      const int o = t + h * blockDim.x;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc_g[i] += s_g[i][o];
        acc_gx[i] += s_gx[i][o];
        s_g[i][t] = acc_g[i];
        s_gx[i][t] = acc_gx[i];
      }
    }
    __syncthreads();
  }
  if (ty == 0 && c0 < C) {
    const int64_t col = split * sub_units + z * C + c0;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      part_g[col + i] = acc_g[i];
      part_gx[col + i] = acc_gx[i];
    }
  }
}

// A warp per unit u over the partials (split s, sub-unit u*k + j), in a fixed order:
// c1[u] = inv_count * sum w*g*xhat, c2[u] = inv_count * sum w*g (when c1 != nullptr), and, for
// k == 1 (BatchNorm: unit = sub-unit = channel), dweight[u] = sum g*xhat, dbias[u] = sum g.
__global__ void __launch_bounds__(kThreads, 1)
grad_finalize_kernel(
    // pointers
    const float* __restrict__ part_g, const float* __restrict__ part_gx,  // (splits, sub_units)
    const float* __restrict__ weight,                                       // (C,) or nullptr
    float* __restrict__ c1, float* __restrict__ c2,                        // (units,) or nullptr
    float* __restrict__ dweight, float* __restrict__ dbias,                // (C,) or nullptr
    // sizes
    int64_t units, int64_t k, int64_t C, int64_t sub_units, int64_t splits,
    // meta
    float inv_count) {
  const int lane = threadIdx.x & 31;
  const int64_t unit = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // warp-uniform
  if (unit < units) {
    float g = 0.f, gx = 0.f, wg = 0.f, wgx = 0.f;
    for (int64_t i = lane; i < splits * k; i += 32) {
      const int64_t s = i / k;
      const int64_t sub = unit * k + (i - s * k);
      const float w = weight != nullptr ? weight[sub % C] : 1.f;
      const float pg = part_g[s * sub_units + sub], pgx = part_gx[s * sub_units + sub];
      g += pg;
      gx += pgx;
      wg += w * pg;
      wgx += w * pgx;
    }
    g = warp_sum(g);
    gx = warp_sum(gx);
    wg = warp_sum(wg);
    wgx = warp_sum(wgx);
    if (lane == 0) {
      if (c1 != nullptr) {
        c1[unit] = wgx * inv_count;
        c2[unit] = wg * inv_count;
      }
      if (k == 1 && dweight != nullptr) dweight[unit] = gx;
      if (k == 1 && dbias != nullptr) dbias[unit] = g;
    }
  }
}

// GroupNorm: a warp per channel c sums the partials (split s, sub-unit n*C + c) over s and n.
__global__ void __launch_bounds__(kThreads, 1)
channel_sums_kernel(
    // pointers
    const float* __restrict__ part_g, const float* __restrict__ part_gx,  // (splits, N*C)
    float* __restrict__ dweight, float* __restrict__ dbias,                // (C,) or nullptr
    // sizes
    int64_t C, int64_t N, int64_t splits) {
  const int lane = threadIdx.x & 31;
  const int64_t c = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);  // warp-uniform
  if (c < C) {
    float g = 0.f, gx = 0.f;
    for (int64_t i = lane; i < splits * N; i += 32) {
      const int64_t idx = i * C + c;  // i = s * N + n: column n * C + c of split s
      g += part_g[idx];
      gx += part_gx[idx];
    }
    g = warp_sum(g);
    gx = warp_sum(gx);
    if (lane == 0) {
      if (dweight != nullptr) dweight[c] = gx;
      if (dbias != nullptr) dbias[c] = g;
    }
  }
}

// ---- backward apply: dx = rstd * (w*g - xhat*c1 - c2) -----------------------------------------
// x is read only when needed: with an activation (to recompute it) or the c1/c2 terms.
template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, 1)
grad_apply_s_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    const float* __restrict__ c1, const float* __restrict__ c2,          // (units,) or nullptr
    // sizes and strides
    int64_t lines, FastDiv C, int64_t S, NcsStrides xs, NcsStrides dys, NcsStrides dxs,
    UnitMap um,
    // meta
    int act) {
  const int64_t line = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  if (line < lines) {  // no barrier in this kernel
    const int64_t n = div_of(C, uint32_t(line));
    const int64_t c = line - n * C.d;
    const int64_t u = unit_of(um, n, c);
    const bool has_c = c1 != nullptr;
    const bool need_x = HAS_ACT || has_c;
    // With d = x - mean: xhat = d*rs, p = xhat*w + b (the activation's input),
    // dx = rs * (w*g - d*k1 - k2) with k1 = rs*c1, k2 = c2 (the bracket first, as the reference:
    // w*g - c2 cancels exactly where they agree).
    const float rs = rstd[u];
    const float mu = need_x ? mean[u] : 0.f;
    const float w = weight != nullptr ? weight[c] : 1.f;
    const float b = HAS_ACT && bias != nullptr ? bias[c] : 0.f;
    const float k1 = has_c ? rs * c1[u] : 0.f;
    const float k2 = has_c ? c2[u] : 0.f;
    const T* xl = x + n * xs.n + c * xs.c;
    const T* dyl = dy + n * dys.n + c * dys.c;
    T* dxl = dx + n * dxs.n + c * dxs.c;
    const int64_t step = int64_t(gridDim.y) * blockDim.x * V;
    for (int64_t s = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * V; s < S; s += step) {
      float g[V], d[V];
      load<T, V>(dyl + s * dys.s, g);
      if (need_x) {
        load<T, V>(xl + s * xs.s, d);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          d[i] -= mu;
          if (HAS_ACT) g[i] = act_grad(d[i] * rs * w + b, g[i], act);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) d[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) g[i] = rs * (w * g[i] - d[i] * k1 - k2);
      store<T, V>(dxl + s * dxs.s, g);
    }
  }
}

template <typename T, int V, bool HAS_ACT>
__global__ void __launch_bounds__(kThreads, 1)
grad_apply_c_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
    const float* __restrict__ mean, const float* __restrict__ rstd,      // (units,)
    const float* __restrict__ weight, const float* __restrict__ bias,    // (C,) or nullptr
    const float* __restrict__ c1, const float* __restrict__ c2,          // (units,) or nullptr
    // sizes and strides
    int64_t rows, FastDiv S, int64_t C, NcsStrides xs, NcsStrides dys, NcsStrides dxs,
    UnitMap um,
    // meta
    int act) {
  const int64_t c0 = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (c0 < C) {  // no barrier in this kernel
    const bool has_c = c1 != nullptr;
    const bool need_x = HAS_ACT || has_c;
    // Per channel, as in grad_apply_s_kernel: dx = rs * (w*g - d*k1 - k2), p = d*rs*w + b.
    float w[V], b[V], mu[V], rs[V], k1[V], k2[V];
#pragma unroll
    for (int i = 0; i < V; ++i) {
      w[i] = weight != nullptr ? weight[c0 + i] : 1.f;
      b[i] = HAS_ACT && bias != nullptr ? bias[c0 + i] : 0.f;
      mu[i] = rs[i] = k1[i] = k2[i] = 0.f;
    }
    int64_t n_loaded = -1;  // the sample whose statistics the coefficients hold
    const int64_t step = int64_t(gridDim.y) * blockDim.y;
    for (int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; r < rows; r += step) {
      const int64_t n = div_of(S, uint32_t(r));
      const int64_t s = r - n * S.d;
      if (n != n_loaded) {
        n_loaded = n;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const int64_t u = unit_of(um, n, c0 + i);
          rs[i] = rstd[u];
          mu[i] = need_x ? mean[u] : 0.f;
          k1[i] = has_c ? rs[i] * c1[u] : 0.f;
          k2[i] = has_c ? c2[u] : 0.f;
        }
      }
      float g[V], d[V];
      load<T, V>(dy + n * dys.n + s * dys.s + c0 * dys.c, g);
      if (need_x) {
        load<T, V>(x + n * xs.n + s * xs.s + c0 * xs.c, d);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          d[i] -= mu[i];
          if (HAS_ACT) g[i] = act_grad(d[i] * rs[i] * w[i] + b[i], g[i], act);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) d[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < V; ++i) g[i] = rs[i] * (w[i] * g[i] - d[i] * k1[i] - k2[i]);
      store<T, V>(dx + n * dxs.n + s * dxs.s + c0 * dxs.c, g);
    }
  }
}

// ---- host side: layouts and launch configurations ----------------------------------------------
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("dlkern channel_norm: " + what);
}

template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int num_sms) {
  return int64_t(num_sms) * max_blocks_per_sm(kernel, kThreads);
}

// The stride of a size-1 dim never multiplies a non-zero index: make it 0, so layout and
// alignment tests ignore it.
NcsStrides canonical(NcsStrides st, int64_t N, int64_t C, int64_t S) {
  if (N == 1) st.n = 0;
  if (C == 1) st.c = 0;
  if (S == 1) st.s = 0;
  return st;
}

// Threads along C (channels_last, or (N, C) with unit channel stride) or along S.
bool channel_inner(const NcsStrides& x, int64_t C, int64_t S) {
  return C > 1 && x.c == 1 && (S == 1 || x.s != 1);
}

// A sweep over (outer, inner) elements, inner fastest, as Runs: one run when the two dims merge.
Runs make_runs(int64_t outer, int64_t outer_stride, int64_t inner, int64_t inner_stride) {
  if (inner == 1) return {make_fast_div(outer), 0, outer_stride};
  if (outer == 1 || outer_stride == inner * inner_stride) {
    return {make_fast_div(outer * inner), 0, inner_stride};
  }
  return {make_fast_div(inner), outer_stride, inner_stride};
}

bool runs_vec_ok(const Runs& r, int V) {
  return r.stride_pos == 1 && r.len.d % V == 0 && r.stride_run % V == 0;
}

// How one reduction pass (statistics or gradient sums) runs.
struct ReducePlan {
  bool wide = false;
  int vec = 1;
  int64_t sub_units = 0;   // partial columns
  int64_t R = 0;           // elements (narrow) or rows (wide) per sub-unit
  int64_t splits = 1, r_per_split = 0;
  // narrow
  int64_t unit_inner = 1;
  NarrowGeom nx{}, ndy{};
  // wide
  WideGeom wx{}, wdy{};
  int tx = 32, ty = kWarps;
  int64_t ctiles = 1, z = 1;
  // finalize: a unit merges k consecutive sub-units
  int64_t units = 0, k = 1;

  int64_t partials() const { return splits * sub_units; }
};

// Splits: about one wave of resident blocks in all, each warp (narrow) or thread row (wide) with
// at least a few steps of work.
void plan_splits(ReducePlan& p, int64_t resident) {
  if (p.wide) {
    const int64_t max_splits = std::min<int64_t>(65535, std::max<int64_t>(1, cdiv(p.R, 4 * p.ty)));
    const int64_t want = cdiv(resident, p.ctiles * p.z);
    p.splits = std::max<int64_t>(1, std::min(want, max_splits));
    p.r_per_split = cdiv(p.R, p.splits);
  } else {
    const int64_t chunk = 32 * int64_t(p.vec);  // elements per warp step
    const int64_t max_splits = std::max<int64_t>(1, cdiv(p.R, 4 * chunk));
    const int64_t want = cdiv(resident * kWarps, p.sub_units);
    p.splits = std::max<int64_t>(1, std::min(want, max_splits));
    p.r_per_split = cdiv(cdiv(p.R, p.splits), chunk) * chunk;  // a multiple of V
  }
  p.splits = cdiv(p.R, p.r_per_split);
}

void wide_shape(ReducePlan& p, int64_t C) {
  p.tx = std::min<int>(32, next_pow2(cdiv(C, p.vec)));
  p.ty = kThreads / p.tx;
  p.ctiles = cdiv(C, int64_t(p.tx) * p.vec);
}

bool wide_vec_ok(const WideGeom& g, int64_t C, const void* ptr, int V) {
  return C % V == 0 && g.stride_c == 1 && g.stride_z % V == 0 && g.rows.stride_run % V == 0 &&
         g.rows.stride_pos % V == 0 && aligned16(ptr);
}

bool narrow_vec_ok(const NarrowGeom& g, const void* ptr, int V) {
  return runs_vec_ok(g.runs, V) && g.stride_uo % V == 0 && g.stride_ui % V == 0 && aligned16(ptr);
}

// Elementwise kernels vectorize along the inner dim (C or S).
bool elementwise_vec_ok(bool c_inner, const NcsStrides& st, int64_t C, int64_t S, const void* ptr,
                        int V) {
  if (c_inner) return C % V == 0 && st.c == 1 && st.n % V == 0 && st.s % V == 0 && aligned16(ptr);
  return S % V == 0 && st.s == 1 && st.n % V == 0 && st.c % V == 0 && aligned16(ptr);
}

// Block and grid of an elementwise kernel: C-inner: TX threads (up to 32) along C, TY rows;
// S-inner: TX threads along S (about 4 chunks each), TY lines. About two waves of resident blocks
// at most; the kernels loop over the rest.
struct ElementwiseShape {
  dim3 grid, block;
};

ElementwiseShape elementwise_shape(bool c_inner, int64_t N, int64_t C, int64_t S, int V,
                                   int64_t resident) {
  if (c_inner) {
    const int tx = std::min<int>(32, next_pow2(cdiv(C, V)));
    const int ty = kThreads / tx;
    const int64_t gx = cdiv(C, int64_t(tx) * V);
    const int64_t gy = std::min<int64_t>(
        {cdiv(N * S, ty), 65535, std::max<int64_t>(1, cdiv(2 * resident, gx))});
    return {dim3(unsigned(gx), unsigned(gy)), dim3(unsigned(tx), unsigned(ty))};
  }
  const int64_t chunks = cdiv(S, V);
  const int tx = std::min<int>(kThreads, next_pow2(cdiv(chunks, 4)));
  const int ty = kThreads / tx;
  const int64_t gx = cdiv(N * C, ty);
  const int64_t gy = std::min<int64_t>(
      {cdiv(chunks, tx), 65535, std::max<int64_t>(1, cdiv(2 * resident, gx))});
  return {dim3(unsigned(gx), unsigned(gy)), dim3(unsigned(tx), unsigned(ty))};
}

UnitMap unit_map(ChannelNormKind kind, int64_t C, int64_t groups) {
  if (kind == ChannelNormKind::Batch) return {0, make_fast_div(1)};
  return {groups, make_fast_div(C / groups)};
}



// Where one tensor's per-channel sweeps lie. BatchNorm: channel c (stride_uo / stride_z = 0) over
// the rows (n, s); GroupNorm: (n, c) over s (unit_inner = C with stride_uo = stride.n, or sample
// block z = n). Geom is NarrowGeom {stride_uo, stride_ui, runs} or WideGeom {stride_z, stride_c,
// rows}: the same three values.
template <typename Geom>
Geom sweep_geom(bool batch, const NcsStrides& st, int64_t N, int64_t S) {
  return {batch ? 0 : st.n, st.c, batch ? make_runs(N, st.n, S, st.s) : make_runs(1, 0, S, st.s)};
}

// ---- forward -----------------------------------------------------------------------------------
void validate(const ChannelNormFwdParams& p) {
  check(p.N >= 0 && p.C >= 1 && p.S >= 0, "sizes must be N >= 0, C >= 1, S >= 0");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.x != nullptr && p.y != nullptr && p.mean != nullptr && p.rstd != nullptr,
        "x, y, mean and rstd are required");
  check(p.x_stride.n >= 0 && p.x_stride.c >= 0 && p.x_stride.s >= 0 && p.y_stride.n >= 0 &&
            p.y_stride.c >= 0 && p.y_stride.s >= 0,
        "strides must be >= 0");
  check(p.N * p.C <= kMaxIndex && p.N * p.S <= kMaxIndex, "N*C and N*S must be below 2^31");
  if (p.kind == ChannelNormKind::Group) {
    check(p.groups >= 1 && p.C % p.groups == 0, "groups must divide C");
    check((p.C / p.groups) * p.S <= kMaxIndex, "a group must have fewer than 2^31 elements");
    check(p.compute_stats, "GroupNorm computes its statistics");
  } else {
    check(p.activation == Activation::None, "BatchNorm takes no activation");
  }
}

// The statistics pass: which kernel, where the elements lie, vector width and splits.
template <typename T>
ReducePlan plan_stats(const ChannelNormFwdParams& p) {
  constexpr int VV = kVec<T>;
  const int64_t N = p.N, C = p.C, S = p.S;
  const NcsStrides xs = canonical(p.x_stride, N, C, S);
  const bool batch = p.kind == ChannelNormKind::Batch;
  const int64_t cg = batch ? 1 : C / p.groups;
  ReducePlan plan;
  plan.units = batch ? C : N * p.groups;
  // GroupNorm takes the wide kernel only when a sample has enough rows to fill a block.
  plan.wide = channel_inner(xs, C, S) && (batch || (S >= 32 && N <= 65535));
  if (plan.wide) {  // sub-units: channels (BatchNorm) or (n, c); rows (n, s) or s
    plan.z = batch ? 1 : N;
    plan.wx = sweep_geom<WideGeom>(batch, xs, N, S);
    plan.R = batch ? N * S : S;
    plan.sub_units = plan.z * C;
    plan.k = cg;
    plan.vec = wide_vec_ok(plan.wx, C, p.x, VV) ? VV : 1;
    wide_shape(plan, C);
  } else if (batch) {  // unit c: elements (n, s)
    plan.unit_inner = C;
    plan.nx = sweep_geom<NarrowGeom>(batch, xs, N, S);
    plan.R = N * S;
  } else {  // unit (n, g): elements (j, s), the unit-stride one fastest
    plan.unit_inner = p.groups;
    plan.nx = {xs.n, cg * xs.c,
               xs.c == 1 && cg > 1 ? make_runs(S, xs.s, cg, xs.c) : make_runs(cg, xs.c, S, xs.s)};
    plan.R = cg * S;
  }
  if (!plan.wide) {
    plan.sub_units = plan.units;
    plan.k = 1;
    plan.vec = narrow_vec_ok(plan.nx, p.x, VV) ? VV : 1;
  }
  int64_t resident = 0;
  dispatch_vec<T>(plan.vec > 1, [&](auto v) {
    constexpr int V = decltype(v)::value;
    resident = plan.wide ? resident_blocks(stats_wide_kernel<T, V>, p.num_sms)
                         : resident_blocks(stats_narrow_kernel<T, V>, p.num_sms);
  });
  plan_splits(plan, resident);
  return plan;
}

template <typename T>
void fwd_launch(const ChannelNormFwdParams& p, cudaStream_t stream) {
  const int64_t N = p.N, C = p.C, S = p.S;
  if (p.compute_stats) {
    const ReducePlan plan = plan_stats<T>(p);
    float* part_mean = p.workspace;
    float* part_m2 = p.workspace + plan.partials();
    const T* x = static_cast<const T*>(p.x);
    dispatch_vec<T>(plan.vec > 1, [&](auto v) {
      constexpr int V = decltype(v)::value;
      if (plan.wide) {
        auto kern = stats_wide_kernel<T, V>;
        DLK_LAUNCH(kern, dim3(unsigned(plan.ctiles), unsigned(plan.splits), unsigned(plan.z)),
                   dim3(unsigned(plan.tx), unsigned(plan.ty)), 0, stream,
                   x, part_mean, part_m2, C, plan.wx, plan.R, plan.r_per_split, plan.sub_units);
        check_launch("stats_wide_kernel");
      } else {
        auto kern = stats_narrow_kernel<T, V>;
        DLK_LAUNCH(kern, unsigned(cdiv(plan.sub_units * plan.splits, kWarps)), kThreads, 0, stream,
                   x, part_mean, part_m2, plan.sub_units, plan.unit_inner, plan.nx, plan.R,
                   plan.r_per_split, plan.splits);
        check_launch("stats_narrow_kernel");
      }
    });
    const double count = double(plan.k) * double(plan.R);
    auto fin = stats_finalize_kernel;
    DLK_LAUNCH(fin, unsigned(cdiv(plan.units, kWarps)), kThreads, 0, stream,
               part_mean, part_m2, p.mean, p.rstd, p.var_unbiased,
               plan.units, plan.k, plan.sub_units, plan.R, plan.r_per_split, plan.splits,
               p.eps, float(1.0 / count), float(1.0 / std::max(count - 1.0, 1.0)));
    check_launch("stats_finalize_kernel");
  }

  const NcsStrides xs = canonical(p.x_stride, N, C, S);
  const NcsStrides ys = canonical(p.y_stride, N, C, S);
  const bool c_inner = channel_inner(xs, C, S);
  const bool vec = elementwise_vec_ok(c_inner, xs, C, S, p.x, kVec<T>) &&
                   elementwise_vec_ok(c_inner, ys, C, S, p.y, kVec<T>);
  const UnitMap um = unit_map(p.kind, C, p.groups);
  const int act = int(p.activation);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  dispatch_vec<T>(vec, [&](auto v) {
    constexpr int V = decltype(v)::value;
    DLK_BOOL_SWITCH(p.activation != Activation::None, HAS_ACT, [&] {
      if (c_inner) {
        auto kern = apply_c_kernel<T, V, HAS_ACT>;
        const ElementwiseShape sh =
            elementwise_shape(true, N, C, S, V, resident_blocks(kern, p.num_sms));
        DLK_LAUNCH(kern, sh.grid, sh.block, 0, stream, x, y, p.mean, p.rstd, p.weight, p.bias,
                   N * S, make_fast_div(S), C, xs, ys, um, act);
        check_launch("apply_c_kernel");
      } else {
        auto kern = apply_s_kernel<T, V, HAS_ACT>;
        const ElementwiseShape sh =
            elementwise_shape(false, N, C, S, V, resident_blocks(kern, p.num_sms));
        DLK_LAUNCH(kern, sh.grid, sh.block, 0, stream, x, y, p.mean, p.rstd, p.weight, p.bias,
                   N * C, make_fast_div(C), S, xs, ys, um, act);
        check_launch("apply_s_kernel");
      }
    });
  });
}

// ---- backward ----------------------------------------------------------------------------------
void validate(const ChannelNormBwdParams& p) {
  check(p.N >= 0 && p.C >= 1 && p.S >= 0, "sizes must be N >= 0, C >= 1, S >= 0");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.dy != nullptr && p.x != nullptr && p.dx != nullptr && p.mean != nullptr &&
            p.rstd != nullptr,
        "dy, x, dx, mean and rstd are required");
  check(p.dy_stride.n >= 0 && p.dy_stride.c >= 0 && p.dy_stride.s >= 0 && p.x_stride.n >= 0 &&
            p.x_stride.c >= 0 && p.x_stride.s >= 0 && p.dx_stride.n >= 0 &&
            p.dx_stride.c >= 0 && p.dx_stride.s >= 0,
        "strides must be >= 0");
  check(p.N * p.C <= kMaxIndex && p.N * p.S <= kMaxIndex, "N*C and N*S must be below 2^31");
  if (p.kind == ChannelNormKind::Group) {
    check(p.groups >= 1 && p.C % p.groups == 0, "groups must divide C");
    check((p.C / p.groups) * p.S <= kMaxIndex, "a group must have fewer than 2^31 elements");
    check(p.has_c, "GroupNorm always has the batch-statistics terms");
  } else {
    check(p.activation == Activation::None, "BatchNorm takes no activation");
  }
}

bool needs_sums(const ChannelNormBwdParams& p) {
  return p.has_c || p.dweight != nullptr || p.dbias != nullptr;
}

// The gradient-sums pass: sub-units are channels (BatchNorm) or (n, c) (GroupNorm).
template <typename T>
ReducePlan plan_grad(const ChannelNormBwdParams& p) {
  constexpr int VV = kVec<T>;
  const int64_t N = p.N, C = p.C, S = p.S;
  const NcsStrides xs = canonical(p.x_stride, N, C, S);
  const NcsStrides dys = canonical(p.dy_stride, N, C, S);
  const bool batch = p.kind == ChannelNormKind::Batch;
  ReducePlan plan;
  plan.units = batch ? C : N * p.groups;
  plan.k = batch ? 1 : C / p.groups;
  plan.sub_units = batch ? C : N * C;
  plan.R = batch ? N * S : S;
  plan.wide = channel_inner(xs, C, S) && (batch || (S >= 32 && N <= 65535));
  if (plan.wide) {
    plan.z = batch ? 1 : N;
    plan.wx = sweep_geom<WideGeom>(batch, xs, N, S);
    plan.wdy = sweep_geom<WideGeom>(batch, dys, N, S);
    plan.vec = wide_vec_ok(plan.wx, C, p.x, VV) && wide_vec_ok(plan.wdy, C, p.dy, VV) ? VV : 1;
    wide_shape(plan, C);
  } else {
    plan.unit_inner = C;
    plan.nx = sweep_geom<NarrowGeom>(batch, xs, N, S);
    plan.ndy = sweep_geom<NarrowGeom>(batch, dys, N, S);
    plan.vec = narrow_vec_ok(plan.nx, p.x, VV) && narrow_vec_ok(plan.ndy, p.dy, VV) ? VV : 1;
  }
  const bool has_act = p.activation != Activation::None;
  int64_t resident = 0;
  dispatch_vec<T>(plan.vec > 1, [&](auto v) {
    constexpr int V = decltype(v)::value;
    DLK_BOOL_SWITCH(has_act, HAS_ACT, [&] {
      resident = plan.wide ? resident_blocks(grad_wide_kernel<T, V, HAS_ACT>, p.num_sms)
                           : resident_blocks(grad_narrow_kernel<T, V, HAS_ACT>, p.num_sms);
    });
  });
  plan_splits(plan, resident);
  return plan;
}

template <typename T>
void bwd_launch(const ChannelNormBwdParams& p, cudaStream_t stream) {
  const int64_t N = p.N, C = p.C, S = p.S;
  const bool batch = p.kind == ChannelNormKind::Batch;
  const bool has_act = p.activation != Activation::None;
  const int act = int(p.activation);
  const UnitMap um = unit_map(p.kind, C, p.groups);
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  float* c1 = nullptr;
  float* c2 = nullptr;

  if (needs_sums(p)) {
    const ReducePlan plan = plan_grad<T>(p);
    float* part_g = p.workspace;
    float* part_gx = p.workspace + plan.partials();
    if (p.has_c) {
      c1 = p.workspace + 2 * plan.partials();
      c2 = c1 + plan.units;
    }
    dispatch_vec<T>(plan.vec > 1, [&](auto v) {
      constexpr int V = decltype(v)::value;
      DLK_BOOL_SWITCH(has_act, HAS_ACT, [&] {
        if (plan.wide) {
          auto kern = grad_wide_kernel<T, V, HAS_ACT>;
          DLK_LAUNCH(kern, dim3(unsigned(plan.ctiles), unsigned(plan.splits), unsigned(plan.z)),
                     dim3(unsigned(plan.tx), unsigned(plan.ty)), 0, stream,
                     x, dy, p.mean, p.rstd, p.weight, p.bias, part_g, part_gx,
                     C, plan.wx, plan.wdy, plan.R, plan.r_per_split, plan.sub_units, um, act);
          check_launch("grad_wide_kernel");
        } else {
          auto kern = grad_narrow_kernel<T, V, HAS_ACT>;
          DLK_LAUNCH(kern, unsigned(cdiv(plan.sub_units * plan.splits, kWarps)), kThreads, 0,
                     stream, x, dy, p.mean, p.rstd, p.weight, p.bias, part_g, part_gx,
                     plan.sub_units, C, plan.nx, plan.ndy, plan.R, plan.r_per_split, plan.splits,
                     um, act);
          check_launch("grad_narrow_kernel");
        }
      });
    });
    auto fin = grad_finalize_kernel;
    DLK_LAUNCH(fin, unsigned(cdiv(plan.units, kWarps)), kThreads, 0, stream,
               part_g, part_gx, p.weight, c1, c2,
               batch ? p.dweight : nullptr, batch ? p.dbias : nullptr,
               plan.units, plan.k, C, plan.sub_units, plan.splits,
               float(1.0 / (double(plan.k) * double(plan.R))));
    check_launch("grad_finalize_kernel");
    if (!batch && (p.dweight != nullptr || p.dbias != nullptr)) {
      auto sums = channel_sums_kernel;
      DLK_LAUNCH(sums, unsigned(cdiv(C, kWarps)), kThreads, 0, stream,
                 part_g, part_gx, p.dweight, p.dbias, C, N, plan.splits);
      check_launch("channel_sums_kernel");
    }
  }

  const NcsStrides xs = canonical(p.x_stride, N, C, S);
  const NcsStrides dys = canonical(p.dy_stride, N, C, S);
  const NcsStrides dxs = canonical(p.dx_stride, N, C, S);
  const bool c_inner = channel_inner(xs, C, S);
  const bool vec = elementwise_vec_ok(c_inner, xs, C, S, p.x, kVec<T>) &&
                   elementwise_vec_ok(c_inner, dys, C, S, p.dy, kVec<T>) &&
                   elementwise_vec_ok(c_inner, dxs, C, S, p.dx, kVec<T>);
  dispatch_vec<T>(vec, [&](auto v) {
    constexpr int V = decltype(v)::value;
    DLK_BOOL_SWITCH(has_act, HAS_ACT, [&] {
      if (c_inner) {
        auto kern = grad_apply_c_kernel<T, V, HAS_ACT>;
        const ElementwiseShape sh =
            elementwise_shape(true, N, C, S, V, resident_blocks(kern, p.num_sms));
        DLK_LAUNCH(kern, sh.grid, sh.block, 0, stream, x, dy, dx, p.mean, p.rstd, p.weight,
                   p.bias, c1, c2, N * S, make_fast_div(S), C, xs, dys, dxs, um, act);
        check_launch("grad_apply_c_kernel");
      } else {
        auto kern = grad_apply_s_kernel<T, V, HAS_ACT>;
        const ElementwiseShape sh =
            elementwise_shape(false, N, C, S, V, resident_blocks(kern, p.num_sms));
        DLK_LAUNCH(kern, sh.grid, sh.block, 0, stream, x, dy, dx, p.mean, p.rstd, p.weight,
                   p.bias, c1, c2, N * C, make_fast_div(C), S, xs, dys, dxs, um, act);
        check_launch("grad_apply_s_kernel");
      }
    });
  });
}

bool empty(int64_t N, int64_t C, int64_t S) { return N == 0 || C == 0 || S == 0; }

}  // namespace

// With an empty input nothing is launched or checked: empty tensors may have null data pointers.
void channel_norm_fwd(const ChannelNormFwdParams& p, void* stream) {
  if (empty(p.N, p.C, p.S)) return;
  validate(p);
  if (p.compute_stats) {
    check(p.workspace != nullptr, "compute_stats needs the workspace");
  }
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

int64_t channel_norm_fwd_workspace(const ChannelNormFwdParams& p) {
  if (empty(p.N, p.C, p.S) || !p.compute_stats) return 0;
  validate(p);
  return dispatch_dtype<int64_t>(p.dtype, [&](auto tag) {
    return 2 * plan_stats<decltype(tag)>(p).partials();
  });
}

void channel_norm_bwd(const ChannelNormBwdParams& p, void* stream) {
  if (empty(p.N, p.C, p.S)) return;
  validate(p);
  check(!needs_sums(p) || p.workspace != nullptr, "the backward needs the workspace");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

int64_t channel_norm_bwd_workspace(const ChannelNormBwdParams& p) {
  if (empty(p.N, p.C, p.S) || !needs_sums(p)) return 0;
  validate(p);
  return dispatch_dtype<int64_t>(p.dtype, [&](auto tag) {
    const ReducePlan plan = plan_grad<decltype(tag)>(p);
    return 2 * plan.partials() + (p.has_c ? 2 * plan.units : 0);
  });
}

}  // namespace dlk
