// Selective scan on the CPU (math: selective_scan.h): one (batch, channel) row at a time, its N
// states in a small array, the inner loops over n written to vectorize (a polynomial exp instead
// of libm's, so the compiler can widen it). fp32 only: the binding converts half inputs, and it
// applies delta_bias and softplus to delta (and their gradients) with torch's vectorized ops.
// The two entry points are also compiled for AVX2+FMA (x86-64-v3), picked at load time.
//
// Forward: one sequential pass over L per row, storing the state at the end of every chunk.
// Backward: per row, chunks from last to first; each chunk's states and decays are recomputed
// from the previous chunk's end into a (kScanChunk, N) buffer, then walked backwards. Rows of one
// (batch, group, channel block) run in one task, so the task owns its dB/dC partial rows (no
// races, and a fixed summation order: results do not depend on the thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "scan/selective_scan.h"

namespace dlk {
namespace {

// The hot loops are inlined into the two entry points, which are cloned per instruction set.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DLK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DLK_CPU_CLONES
#endif
#define DLK_INLINE inline __attribute__((always_inline))


// exp(x) to ~2 ulp: x = k ln2 + f with |f| <= ln2/2 (Cody-Waite split of ln2), e^f by its Taylor
// polynomial to degree 7, 2^k from the exponent bits. Inputs are clamped to the normal range
// (exp(-87.3) ~ 1.2e-38 stands in for smaller results, which only ever scale a state by it).
// k = round(x / ln2) by truncating a positive value (std::floor is a libm call on baseline x86-64
// and stops the loops from vectorizing; an int conversion is one SIMD instruction).
inline __attribute__((always_inline)) float exp_approx(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float k = float(int32_t(x * 1.44269504088896341f + 128.5f) - 128);
  const float f = (x - k * 0.693145751953125f) - k * 1.42860682030941723e-6f;
  float p = 1.f / 5040.f;
  p = p * f + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid(float x) { return 1.f / (1.f + exp_approx(-x)); }

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern selective_scan (cpu): ") + what);
}

void check_params(const SelectiveScanFwdParams& p) {
  check(p.dtype == DType::F32, "the CPU kernel takes float32 tensors");
  check(p.batch >= 0 && p.dim >= 1 && p.L >= 1 && p.N >= 1, "sizes must be batch >= 0, dim, L, N >= 1");
  check(p.N <= kScanMaxState, "N must be at most 256");
  check(p.groups >= 1 && p.dim % p.groups == 0, "groups must divide dim");
  check(p.u && p.delta && p.A && p.B && p.C && p.states, "u, delta, A, B, C and states are required");
  check(p.bc_stride_n == 1 && p.bc_stride_l == p.N, "B and C must be time-major (batch, G, L, N)");
  check(!p.delta_softplus && !p.delta_bias, "delta_bias and softplus are applied to delta by the binding");
}

// One row's view of the inputs: pointers at (b, d) and the per-row constants.
struct Row {
  const float *u, *delta, *z, *A, *B, *C;
  float D;
  int64_t sb_l, sc_l;  // strides of B and C over t (0 if time-invariant); over n they are 1

  Row(const SelectiveScanFwdParams& p, int64_t b, int64_t d) {
    const int64_t off = (b * p.dim + d) * p.L;
    const int64_t g = d / (p.dim / p.groups);
    u = static_cast<const float*>(p.u) + off;
    delta = static_cast<const float*>(p.delta) + off;
    z = p.z ? static_cast<const float*>(p.z) + off : nullptr;
    A = p.A + d * p.N;
    const int64_t group_off = (b * p.groups + g) * p.L * p.N;
    B = static_cast<const float*>(p.B) + (p.variable_B ? group_off : d * p.N);
    C = static_cast<const float*>(p.C) + (p.variable_C ? group_off : d * p.N);
    sb_l = p.variable_B ? p.bc_stride_l : 0;
    sc_l = p.variable_C ? p.bc_stride_l : 0;
    D = p.D ? p.D[d] : 0.f;
  }
};

// Steps [t0, t1) of one row from state h (updated in place). Writes the pre-gate outputs to y
// (indexed from t0) and, when hs/as are given, every state and decay to hs/as (kScanChunk x N).
DLK_INLINE void scan_steps(const SelectiveScanFwdParams& p, const Row& r, int64_t t0, int64_t t1, float* h,
                float* y, float* hs, float* as) {
  const int64_t N = p.N;
  float a[kScanMaxState];
  for (int64_t t = t0; t < t1; ++t) {
    const float dt = r.delta[t];
    const float dtu = dt * r.u[t];
    const float* Bt = r.B + t * r.sb_l;
    const float* Ct = r.C + t * r.sc_l;
    for (int64_t n = 0; n < N; ++n) a[n] = exp_approx(dt * r.A[n]);
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      h[n] = a[n] * h[n] + dtu * Bt[n];
      acc += Ct[n] * h[n];
    }
    y[t - t0] = acc + r.D * r.u[t];
    if (hs) {
      std::memcpy(hs + (t - t0) * N, h, N * sizeof(float));
      std::memcpy(as + (t - t0) * N, a, N * sizeof(float));
    }
  }
}

DLK_CPU_CLONES void fwd_rows(const SelectiveScanFwdParams& p, int64_t begin, int64_t end) {
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  float h[kScanMaxState];
  float y[kScanChunk];
  for (int64_t row = begin; row < end; ++row) {
    const Row r(p, row / p.dim, row % p.dim);
    std::fill(h, h + p.N, 0.f);
    float* out = static_cast<float*>(p.out) + row * p.L;
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
      scan_steps(p, r, t0, t1, h, y, nullptr, nullptr);
      for (int64_t t = t0; t < t1; ++t) {
        const float zt = r.z ? r.z[t] : 0.f;
        out[t] = r.z ? y[t - t0] * zt * sigmoid(zt) : y[t - t0];
      }
      std::memcpy(p.states + (row * n_chunks + c) * p.N, h, p.N * sizeof(float));
    }
  }
}

// One row of the backward; dB/dC point at the task's partial rows (variable) or at (b, d, :).
DLK_INLINE void bwd_row(const SelectiveScanBwdParams& q, int64_t b, int64_t d, float* dB, float* dC) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t N = p.N, row = b * p.dim + d;
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const Row r(p, b, d);
  const float* dout = static_cast<const float*>(q.dout) + row * p.L;
  float* du = static_cast<float*>(q.du) + row * p.L;
  float* ddelta = static_cast<float*>(q.ddelta) + row * p.L;
  float* dz = q.dz ? static_cast<float*>(q.dz) + row * p.L : nullptr;
  const int64_t db_l = p.variable_B ? N : 0, dc_l = p.variable_C ? N : 0;  // partials: time-major

  float g[kScanMaxState], dA[kScanMaxState], h[kScanMaxState];
  float hs[kScanChunk * kScanMaxState], as[kScanChunk * kScanMaxState], y[kScanChunk];
  const float zero[kScanMaxState] = {};
  for (int64_t n = 0; n < N; ++n) g[n] = q.dlast ? q.dlast[row * N + n] : 0.f;
  std::fill(dA, dA + N, 0.f);
  float dD = 0.f;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
    const float* h0 = c > 0 ? p.states + (row * n_chunks + c - 1) * N : zero;
    std::memcpy(h, h0, N * sizeof(float));
    scan_steps(p, r, t0, t1, h, y, hs, as);
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const float* ht = hs + i * N;
      const float* hprev = i > 0 ? hs + (i - 1) * N : h0;
      const float* at = as + i * N;
      const float* Bt = r.B + t * r.sb_l;
      const float* Ct = r.C + t * r.sc_l;
      float* dBt = dB + t * db_l;
      float* dCt = dC + t * dc_l;
      float dy = dout[t];
      if (dz) {
        const float zt = r.z[t], s = sigmoid(zt);
        dz[t] = dout[t] * y[i] * s * (1.f + zt * (1.f - s));
        dy = dout[t] * zt * s;
      }
      const float ut = r.u[t];
      const float dt = r.delta[t];
      const float dtu = dt * ut;
      dD += dy * ut;
      float ddt = 0.f, gB = 0.f;
      for (int64_t n = 0; n < N; ++n) {
        const float gn = g[n] + Ct[n] * dy;  // g_t = C dy + a_{t+1} g_{t+1}
        const float Bn = Bt[n];
        const float ah = at[n] * hprev[n];
        ddt += gn * (r.A[n] * ah + Bn * ut);
        dA[n] += gn * dt * ah;
        dBt[n] += gn * dtu;
        dCt[n] += dy * ht[n];
        gB += gn * Bn;
        g[n] = gn * at[n];
      }
      du[t] = dt * gB + r.D * dy;
      ddelta[t] = ddt;
    }
  }
  for (int64_t n = 0; n < N; ++n) q.dA[row * N + n] = dA[n];
  if (q.dD) q.dD[row] = dD;
}

// Task (b, g, blk): channels [g*dpg + blk*rows, ...) of batch b.
DLK_CPU_CLONES void bwd_tasks(const SelectiveScanBwdParams& q, int64_t begin, int64_t end) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t dpg = p.dim / p.groups;
  const int64_t rows = (dpg + q.n_dblocks - 1) / q.n_dblocks;
  const int64_t part = p.L * p.N;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t blk = task % q.n_dblocks, bg = task / q.n_dblocks;
    const int64_t b = bg / p.groups, g = bg % p.groups;
    float* dB = p.variable_B ? q.dB + task * part : nullptr;
    float* dC = p.variable_C ? q.dC + task * part : nullptr;
    if (dB) std::fill(dB, dB + part, 0.f);
    if (dC) std::fill(dC, dC + part, 0.f);
    for (int64_t d = g * dpg + blk * rows; d < std::min(g * dpg + (blk + 1) * rows, (g + 1) * dpg); ++d) {
      float* dBrow = dB ? dB : q.dB + (b * p.dim + d) * p.N;
      float* dCrow = dC ? dC : q.dC + (b * p.dim + d) * p.N;
      if (!dB) std::fill(dBrow, dBrow + p.N, 0.f);
      if (!dC) std::fill(dCrow, dCrow + p.N, 0.f);
      bwd_row(q, b, d, dBrow, dCrow);
    }
  }
}

}  // namespace

void selective_scan_fwd_cpu(const SelectiveScanFwdParams& p, ParallelFor parallel_for) {
  check_params(p);
  check(p.out != nullptr, "out is required");
  auto body = [](void* ctx, int64_t begin, int64_t end) {
    fwd_rows(*static_cast<const SelectiveScanFwdParams*>(ctx), begin, end);
  };
  parallel_for(p.batch * p.dim, const_cast<SelectiveScanFwdParams*>(&p), body);
}

void selective_scan_bwd_cpu(const SelectiveScanBwdParams& q, ParallelFor parallel_for) {
  check_params(q.fwd);
  check(q.dout && q.du && q.ddelta && q.dA && q.dB && q.dC, "dout, du, ddelta, dA, dB, dC are required");
  check(!q.fwd.z || q.dz, "dz is required with z");
  check(q.n_dblocks >= 1 && q.n_dblocks <= q.fwd.dim / q.fwd.groups, "n_dblocks must be in [1, dim / groups]");
  auto body = [](void* ctx, int64_t begin, int64_t end) {
    bwd_tasks(*static_cast<const SelectiveScanBwdParams*>(ctx), begin, end);
  };
  parallel_for(q.fwd.batch * q.fwd.groups * q.n_dblocks, const_cast<SelectiveScanBwdParams*>(&q), body);
}

}  // namespace dlk
