// The BatchNorm / GroupNorm / InstanceNorm forward and backward kernels, their layouts (math and
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
//
// This header: the pieces both directions share (index helpers, activations, sweep geometries,
// launch planning); the kernels and launchers: channel_norm_fwd.cu (statistics, apply) and
// channel_norm_bwd.cu (gradient sums, finalize, dx).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"
#include "norm/channel_norm.h"

namespace dlk {
namespace cnorm {

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

inline FastDiv make_fast_div(int64_t d) {
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

// ---- activations (Activation codes; GELU is the exact erf form, as torch's default) -----------
// One per element of a memory-bound pass: the SiLU's exponential and division are the named
// approximations __expf / __fdividef (a few ulp; the accurate expf and IEEE division add ~10-20
// instructions per element on their fast paths, a third to a half of a bf16 pass's budget). erff
// stays accurate.
__device__ __forceinline__ float act_fwd(float p, int act) {
  switch (act) {
    case 1: return __fdividef(p, 1.f + __expf(-p));
    case 2: return 0.5f * p * (1.f + erff(p * 0.70710678118654752f));
    case 3: return p < 0.f ? 0.f : p;
    default: return p;
  }
}

// dy * act'(p)
__device__ __forceinline__ float act_grad(float p, float dy, int act) {
  switch (act) {
    case 1: {
      const float sig = sigmoid_approx(p);
      return dy * sig * (1.f + p * (1.f - sig));
    }
    case 2: {
      const float cdf = 0.5f * (1.f + erff(p * 0.70710678118654752f));
      const float pdf = __expf(-0.5f * p * p) * 0.3989422804014327f;  // 1/sqrt(2*pi)
      return dy * (cdf + p * pdf);
    }
    case 3: return p > 0.f ? dy : 0.f;
    default: return dy;
  }
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

// ---- host side: layouts and launch configurations ----------------------------------------------
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("dlkern channel_norm: " + what);
}

template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int num_sms) {
  return int64_t(num_sms) * max_blocks_per_sm(kernel, kThreads);
}

// The stride of a size-1 dim never multiplies a non-zero index: make it 0, so layout and
// alignment tests ignore it.
inline NcsStrides canonical(NcsStrides st, int64_t N, int64_t C, int64_t S) {
  if (N == 1) st.n = 0;
  if (C == 1) st.c = 0;
  if (S == 1) st.s = 0;
  return st;
}

// Threads along C (channels_last, or (N, C) with unit channel stride) or along S.
inline bool channel_inner(const NcsStrides& x, int64_t C, int64_t S) {
  return C > 1 && x.c == 1 && (S == 1 || x.s != 1);
}

// A sweep over (outer, inner) elements, inner fastest, as Runs: one run when the two dims merge.
inline Runs make_runs(int64_t outer, int64_t outer_stride, int64_t inner, int64_t inner_stride) {
  if (inner == 1) return {make_fast_div(outer), 0, outer_stride};
  if (outer == 1 || outer_stride == inner * inner_stride) {
    return {make_fast_div(outer * inner), 0, inner_stride};
  }
  return {make_fast_div(inner), outer_stride, inner_stride};
}

inline bool runs_vec_ok(const Runs& r, int V) {
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
inline void plan_splits(ReducePlan& p, int64_t resident) {
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

inline void wide_shape(ReducePlan& p, int64_t C) {
  p.tx = std::min<int>(32, next_pow2(cdiv(C, p.vec)));
  p.ty = kThreads / p.tx;
  p.ctiles = cdiv(C, int64_t(p.tx) * p.vec);
}

inline bool wide_vec_ok(const WideGeom& g, int64_t C, const void* ptr, int V) {
  return C % V == 0 && g.stride_c == 1 && g.stride_z % V == 0 && g.rows.stride_run % V == 0 &&
         g.rows.stride_pos % V == 0 && aligned16(ptr);
}

inline bool narrow_vec_ok(const NarrowGeom& g, const void* ptr, int V) {
  return runs_vec_ok(g.runs, V) && g.stride_uo % V == 0 && g.stride_ui % V == 0 && aligned16(ptr);
}

// Elementwise kernels vectorize along the inner dim (C or S).
inline bool elementwise_vec_ok(bool c_inner, const NcsStrides& st, int64_t C, int64_t S,
                               const void* ptr, int V) {
  if (c_inner) return C % V == 0 && st.c == 1 && st.n % V == 0 && st.s % V == 0 && aligned16(ptr);
  return S % V == 0 && st.s == 1 && st.n % V == 0 && st.c % V == 0 && aligned16(ptr);
}

// Block and grid of an elementwise kernel: C-inner: TX threads (up to 32) along C, TY rows;
// S-inner: TX threads along S (about 4 chunks each), TY lines. About two waves of resident blocks
// at most; the kernels loop over the rest.
struct ElementwiseShape {
  dim3 grid, block;
};

inline ElementwiseShape elementwise_shape(bool c_inner, int64_t N, int64_t C, int64_t S, int V,
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

inline UnitMap unit_map(ChannelNormKind kind, int64_t C, int64_t groups) {
  if (kind == ChannelNormKind::Batch) return {0, make_fast_div(1)};
  return {groups, make_fast_div(C / groups)};
}


// the rows (n, s); GroupNorm: (n, c) over s (unit_inner = C with stride_uo = stride.n, or sample
// block z = n). Geom is NarrowGeom {stride_uo, stride_ui, runs} or WideGeom {stride_z, stride_c,
// rows}: the same three values.
template <typename Geom>
Geom sweep_geom(bool batch, const NcsStrides& st, int64_t N, int64_t S) {
  return {batch ? 0 : st.n, st.c, batch ? make_runs(N, st.n, S, st.s) : make_runs(1, 0, S, st.s)};
}

inline bool empty(int64_t N, int64_t C, int64_t S) { return N == 0 || C == 0 || S == 0; }

// ---- parameter checks -------------------------------------------------------------------------
inline void validate(const ChannelNormFwdParams& p) {
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

inline void validate(const ChannelNormBwdParams& p) {
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

}  // namespace cnorm
}  // namespace dlk
