// BatchNorm / GroupNorm / InstanceNorm backward: the gradient-sum, finalize and dx kernels and
// their launchers (layouts, kernels and conventions: channel_norm_common.cuh).
#include "norm/channel_norm.h"

#include <algorithm>
#include <cstdint>

#include "common/dlk_cuda.cuh"
#include "norm/channel_norm_common.cuh"

namespace dlk {
namespace {

using namespace cnorm;

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

// ---- backward ----------------------------------------------------------------------------------
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

}  // namespace

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
