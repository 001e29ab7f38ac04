// BatchNorm / GroupNorm / InstanceNorm forward: the statistics and apply kernels and their
// launchers (layouts, kernels and conventions: channel_norm_common.cuh).
#include "norm/channel_norm.h"

#include <algorithm>
#include <cstdint>

#include "common/dlk_cuda.cuh"
#include "norm/channel_norm_common.cuh"

namespace dlk {
namespace {

using namespace cnorm;

// Adds V values: one element (Welford's update) or a chunk's own mean and M2, merged with Chan's.
// The count divisions are __fdividef (MUFU.RCP + FMUL, 2 ulp; counts are far below 2^126): an IEEE
// division per push would add ~7 instructions per element on the scalar path.
template <int V>
__device__ __forceinline__ void welford_push(Welford& w, const float (&v)[V]) {
  if constexpr (V == 1) {
    w.n += 1.f;
    const float d = v[0] - w.mean;
    w.mean += __fdividef(d, w.n);
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
    const float fb = __fdividef(float(V), n);
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
      store_output<T, V>(yl + s * ys.s, v);
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
      store_output<T, V>(y + n * ys.n + s * ys.s + c0 * ys.c, v);
    }
  }
}

// ---- forward -----------------------------------------------------------------------------------
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

}  // namespace dlk
