// Selective scan on the CPU (math: selective_scan.h). The unit of work is a tile of kLanes
// channels of one (batch, group): every inner loop runs over the tile's lanes (one SIMD register
// of fp32), so B and C broadcast and nothing is reduced across lanes inside the time loop; a
// polynomial exp replaces libm's so those loops vectorize. A tile's inputs are transposed chunk by
// chunk into (time, lane) buffers. fp32 only: the binding converts half inputs, and it applies
// delta_bias and softplus to delta (and their gradients) with torch's vectorized ops. The two
// entry points are also compiled for AVX2+FMA (x86-64-v3), picked at load time.
//
// Forward: one sequential pass over L per tile, storing the state at the end of every chunk.
// Backward: per tile, chunks from last to first; each chunk's states and decays are recomputed
// from the previous chunk's end into (kScanChunk, N, kLanes) buffers, then walked backwards. The
// tiles of one (batch, group, channel block) run in one task, which owns its dB/dC partials
// (summed over tasks by the binding), so there are no races and the summation order does not
// depend on the thread count.
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

constexpr int kLanes = kScanCpuLanes;

// A tile: channels [d0, d0 + kLanes) of batch b (lanes past `count` are padding: zero inputs).
struct Tile {
  int64_t b, d0, count;
  float A[kScanMaxState][kLanes];   // A[n][lane]
  float D[kLanes];

  Tile(const SelectiveScanFwdParams& p, int64_t b_, int64_t d0_, int64_t count_) : b(b_), d0(d0_), count(count_) {
    for (int64_t n = 0; n < p.N; ++n)
      for (int v = 0; v < kLanes; ++v) A[n][v] = v < count ? p.A[(d0 + v) * p.N + n] : 0.f;
    for (int v = 0; v < kLanes; ++v) D[v] = (p.D && v < count) ? p.D[d0 + v] : 0.f;
  }
};

int64_t group_of(const SelectiveScanFwdParams& p, int64_t d) { return d / (p.dim / p.groups); }

// B or C at time t (time-major, variable) as a broadcast value, or per lane (time-invariant).
struct BC {
  const float* base;   // variable: (L, N) of this (batch, group); invariant: (dim, N)
  bool variable;
  float inv[kScanMaxState][kLanes];

  BC(const SelectiveScanFwdParams& p, const void* X, bool var, const Tile& tile) : variable(var) {
    const float* x = static_cast<const float*>(X);
    base = var ? x + (tile.b * p.groups + group_of(p, tile.d0)) * p.L * p.N : x;
    if (!var)
      for (int64_t n = 0; n < p.N; ++n)
        for (int v = 0; v < kLanes; ++v) inv[n][v] = v < tile.count ? x[(tile.d0 + v) * p.N + n] : 0.f;
  }
};

// (rows of `src` for the tile's lanes, steps [t0, t1)) -> dst[i][lane]; padding lanes/steps 0.
void gather(const float* src, const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0, int64_t t1,
            float (*dst)[kLanes]) {
  for (int v = 0; v < kLanes; ++v) {
    const float* r = v < tile.count ? src + (tile.b * p.dim + tile.d0 + v) * p.L : nullptr;
    for (int64_t i = 0; i < kScanChunk; ++i) dst[i][v] = (r && t0 + i < t1) ? r[t0 + i] : 0.f;
  }
}

void scatter(const float (*src)[kLanes], const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0,
             int64_t t1, float* dst) {
  for (int v = 0; v < tile.count; ++v) {
    float* r = dst + (tile.b * p.dim + tile.d0 + v) * p.L;
    for (int64_t t = t0; t < t1; ++t) r[t] = src[t - t0][v];
  }
}

// One chunk's inputs, transposed to (step, lane).
struct ChunkIn {
  float dt[kScanChunk][kLanes], u[kScanChunk][kLanes], z[kScanChunk][kLanes];
};

void load_chunk(const SelectiveScanFwdParams& p, const Tile& tile, int64_t t0, int64_t t1, ChunkIn& in) {
  gather(static_cast<const float*>(p.delta), p, tile, t0, t1, in.dt);
  gather(static_cast<const float*>(p.u), p, tile, t0, t1, in.u);
  if (p.z) gather(static_cast<const float*>(p.z), p, tile, t0, t1, in.z);
}

// Steps [t0, t1) from state h[N][lane] (updated). y[i][lane]: pre-gate outputs; hs/as:
// every state and decay, (kScanChunk, N, kLanes), when STORE.
template <bool VB, bool VC, bool STORE>
DLK_INLINE void scan_chunk(const SelectiveScanFwdParams& p, const Tile& tile, const BC& Bx, const BC& Cx,
                           const ChunkIn& in, int64_t t0, int64_t t1, float (*h)[kLanes],
                           float (*y)[kLanes], float* hs, float* as) {
  const int64_t N = p.N;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = t - t0;
    const float* Bt = Bx.base + t * N;
    const float* Ct = Cx.base + t * N;
    float dtu[kLanes], acc[kLanes];
    for (int v = 0; v < kLanes; ++v) {
      dtu[v] = in.dt[i][v] * in.u[i][v];
      acc[v] = tile.D[v] * in.u[i][v];
    }
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict__ hn = h[n];
      float* __restrict__ hsn = STORE ? hs + (i * N + n) * kLanes : nullptr;
      float* __restrict__ asn = STORE ? as + (i * N + n) * kLanes : nullptr;
      for (int v = 0; v < kLanes; ++v) {
        const float a = exp_approx(in.dt[i][v] * tile.A[n][v]);
        const float b = VB ? Bt[n] : Bx.inv[n][v];
        const float c = VC ? Ct[n] : Cx.inv[n][v];
        hn[v] = a * hn[v] + dtu[v] * b;
        acc[v] += c * hn[v];
        if constexpr (STORE) {
          hsn[v] = hn[v];
          asn[v] = a;
        }
      }
    }
    for (int v = 0; v < kLanes; ++v) y[i][v] = acc[v];
  }
}

template <bool VB, bool VC>
DLK_INLINE void fwd_tile(const SelectiveScanFwdParams& p, const Tile& tile) {
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const BC Bx(p, p.B, p.variable_B, tile), Cx(p, p.C, p.variable_C, tile);
  float h[kScanMaxState][kLanes] = {};
  ChunkIn in;
  float y[kScanChunk][kLanes];
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
    load_chunk(p, tile, t0, t1, in);
    scan_chunk<VB, VC, false>(p, tile, Bx, Cx, in, t0, t1, h, y, nullptr, nullptr);
    if (p.z)
      for (int64_t i = 0; i < kScanChunk; ++i)
        for (int v = 0; v < kLanes; ++v) y[i][v] *= in.z[i][v] * sigmoid(in.z[i][v]);
    scatter(y, p, tile, t0, t1, static_cast<float*>(p.out));
    for (int v = 0; v < tile.count; ++v)
      for (int64_t n = 0; n < p.N; ++n)
        p.states[((tile.b * p.dim + tile.d0 + v) * n_chunks + c) * p.N + n] = h[n][v];
  }
}

// The backward of one tile. dB/dC: the task's (L, N) partials when variable, else the
// (batch, dim, N) rows of the output.
template <bool VB, bool VC>
DLK_INLINE void bwd_tile(const SelectiveScanBwdParams& q, const Tile& tile, float* dB, float* dC) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t N = p.N;
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const BC Bx(p, p.B, p.variable_B, tile), Cx(p, p.C, p.variable_C, tile);
  // (kScanChunk, N, kLanes) buffers: states and decays of the chunk, and its per-lane dB/dC terms
  // (summed over lanes into the task's partial at the chunk's end: 8x less partial traffic)
  constexpr int64_t kBuf = kScanChunk * kScanMaxState * kLanes;
  static thread_local float hs[kBuf], as[kBuf], dBc[kBuf], dCc[kBuf];
  float g[kScanMaxState][kLanes], dA[kScanMaxState][kLanes] = {}, h[kScanMaxState][kLanes];
  float h0[kScanMaxState][kLanes], dBi[kScanMaxState][kLanes] = {}, dCi[kScanMaxState][kLanes] = {};
  float dD[kLanes] = {};
  ChunkIn in;
  float y[kScanChunk][kLanes], dout[kScanChunk][kLanes], du[kScanChunk][kLanes], ddt[kScanChunk][kLanes];
  float dz[kScanChunk][kLanes];
  for (int64_t n = 0; n < N; ++n)
    for (int v = 0; v < kLanes; ++v)
      g[n][v] = (q.dlast && v < tile.count) ? q.dlast[(tile.b * p.dim + tile.d0 + v) * N + n] : 0.f;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min(p.L, t0 + kScanChunk);
    for (int64_t n = 0; n < N; ++n)
      for (int v = 0; v < kLanes; ++v)
        h0[n][v] = (c > 0 && v < tile.count)
                       ? p.states[((tile.b * p.dim + tile.d0 + v) * n_chunks + c - 1) * N + n] : 0.f;
    std::memcpy(h, h0, sizeof(float) * N * kLanes);
    load_chunk(p, tile, t0, t1, in);
    gather(static_cast<const float*>(q.dout), p, tile, t0, t1, dout);
    scan_chunk<VB, VC, true>(p, tile, Bx, Cx, in, t0, t1, h, y, hs, as);
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const float* Bt = Bx.base + t * N;
      const float* Ct = Cx.base + t * N;
      float dy[kLanes], dtu[kLanes], ddt_i[kLanes] = {}, gB[kLanes] = {};
      for (int v = 0; v < kLanes; ++v) {
        dy[v] = dout[i][v];
        if (p.z) {
          const float zt = in.z[i][v], s = sigmoid(zt);
          dz[i][v] = dout[i][v] * y[i][v] * s * (1.f + zt * (1.f - s));
          dy[v] = dout[i][v] * zt * s;
        }
        dtu[v] = in.dt[i][v] * in.u[i][v];
        dD[v] += dy[v] * in.u[i][v];
      }
      float* __restrict__ dBt = dBc + i * N * kLanes;
      float* __restrict__ dCt = dCc + i * N * kLanes;
      for (int64_t n = 0; n < N; ++n) {
        const float* __restrict__ ht = hs + (i * N + n) * kLanes;
        const float* __restrict__ hp = i > 0 ? hs + ((i - 1) * N + n) * kLanes : h0[n];
        const float* __restrict__ at = as + (i * N + n) * kLanes;
        for (int v = 0; v < kLanes; ++v) {
          const float b = VB ? Bt[n] : Bx.inv[n][v];
          const float cc = VC ? Ct[n] : Cx.inv[n][v];
          const float gn = g[n][v] + cc * dy[v];   // g_t = C dy + a_{t+1} g_{t+1}
          const float ah = at[v] * hp[v];
          ddt_i[v] += gn * (tile.A[n][v] * ah + b * in.u[i][v]);
          dA[n][v] += gn * in.dt[i][v] * ah;
          if (VB) dBt[n * kLanes + v] = gn * dtu[v]; else dBi[n][v] += gn * dtu[v];
          if (VC) dCt[n * kLanes + v] = dy[v] * ht[v]; else dCi[n][v] += dy[v] * ht[v];
          gB[v] += gn * b;
          g[n][v] = gn * at[v];
        }
      }
      for (int v = 0; v < kLanes; ++v) {
        du[i][v] = in.dt[i][v] * gB[v] + tile.D[v] * dy[v];
        ddt[i][v] = ddt_i[v];
      }
    }
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t k = ((t - t0) * N + n) * kLanes;
        float sb = 0.f, sc = 0.f;
        for (int v = 0; v < kLanes; ++v) {
          sb += dBc[k + v];
          sc += dCc[k + v];
        }
        if (VB) dB[t * N + n] += sb;
        if (VC) dC[t * N + n] += sc;
      }
    scatter(du, p, tile, t0, t1, static_cast<float*>(q.du));
    scatter(ddt, p, tile, t0, t1, static_cast<float*>(q.ddelta));
    if (p.z) scatter(dz, p, tile, t0, t1, static_cast<float*>(q.dz));
  }
  for (int v = 0; v < tile.count; ++v) {
    const int64_t row = tile.b * p.dim + tile.d0 + v;
    for (int64_t n = 0; n < N; ++n) {
      q.dA[row * N + n] = dA[n][v];
      if (!VB) dB[row * N + n] = dBi[n][v];
      if (!VC) dC[row * N + n] = dCi[n][v];
    }
    if (q.dD) q.dD[row] = dD[v];
  }
}

// Tiles of kLanes channels that stay inside one group: tile k of (batch, group) order.
int64_t tiles_per_group(const SelectiveScanFwdParams& p) {
  return (p.dim / p.groups + kLanes - 1) / kLanes;
}

Tile make_tile(const SelectiveScanFwdParams& p, int64_t index) {
  const int64_t tpg = tiles_per_group(p), dpg = p.dim / p.groups;
  const int64_t k = index % tpg, bg = index / tpg;
  const int64_t b = bg / p.groups, g = bg % p.groups;
  return Tile(p, b, g * dpg + k * kLanes, std::min<int64_t>(kLanes, dpg - k * kLanes));
}

template <bool VB, bool VC>
DLK_INLINE void fwd_range(const SelectiveScanFwdParams& p, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) fwd_tile<VB, VC>(p, make_tile(p, i));
}

// Task (b, g, blk): a contiguous run of the group's tiles, owning an (L, N) partial each for
// variable dB and dC.
template <bool VB, bool VC>
DLK_INLINE void bwd_range(const SelectiveScanBwdParams& q, int64_t begin, int64_t end) {
  const SelectiveScanFwdParams& p = q.fwd;
  const int64_t tpg = tiles_per_group(p);
  const int64_t per_task = (tpg + q.n_dblocks - 1) / q.n_dblocks;
  const int64_t part = p.L * p.N;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t blk = task % q.n_dblocks, bg = task / q.n_dblocks;
    float* dB = VB ? q.dB + task * part : q.dB;
    float* dC = VC ? q.dC + task * part : q.dC;
    if (VB) std::fill(dB, dB + part, 0.f);
    if (VC) std::fill(dC, dC + part, 0.f);
    for (int64_t k = blk * per_task; k < std::min(tpg, (blk + 1) * per_task); ++k)
      bwd_tile<VB, VC>(q, make_tile(p, bg * tpg + k), dB, dC);
  }
}

// The cloned entry points, one per (variable B, variable C): a template or a lambda would not be
// cloned, and the hot loops must be inlined into the clone to get its instruction set.
#define DLK_SCAN_ENTRIES(VB, VC)                                                                  \
  DLK_CPU_CLONES void fwd_##VB##_##VC(void* ctx, int64_t begin, int64_t end) {                    \
    fwd_range<VB, VC>(*static_cast<const SelectiveScanFwdParams*>(ctx), begin, end);              \
  }                                                                                               \
  DLK_CPU_CLONES void bwd_##VB##_##VC(void* ctx, int64_t begin, int64_t end) {                    \
    bwd_range<VB, VC>(*static_cast<const SelectiveScanBwdParams*>(ctx), begin, end);              \
  }
DLK_SCAN_ENTRIES(true, true)
DLK_SCAN_ENTRIES(true, false)
DLK_SCAN_ENTRIES(false, true)
DLK_SCAN_ENTRIES(false, false)
#undef DLK_SCAN_ENTRIES

using Body = void (*)(void*, int64_t, int64_t);
Body pick(bool vb, bool vc, Body tt, Body tf, Body ft, Body ff) { return vb ? (vc ? tt : tf) : (vc ? ft : ff); }

}  // namespace

void selective_scan_fwd_cpu(const SelectiveScanFwdParams& p, ParallelFor parallel_for) {
  check_params(p);
  check(p.out != nullptr, "out is required");
  const Body body = pick(p.variable_B, p.variable_C, fwd_true_true, fwd_true_false, fwd_false_true, fwd_false_false);
  parallel_for(p.batch * p.groups * tiles_per_group(p), const_cast<SelectiveScanFwdParams*>(&p), body);
}

void selective_scan_bwd_cpu(const SelectiveScanBwdParams& q, ParallelFor parallel_for) {
  check_params(q.fwd);
  check(q.dout && q.du && q.ddelta && q.dA && q.dB && q.dC, "dout, du, ddelta, dA, dB, dC are required");
  check(!q.fwd.z || q.dz, "dz is required with z");
  check(q.n_dblocks >= 1 && q.n_dblocks <= tiles_per_group(q.fwd), "n_dblocks must be in [1, tiles per group]");
  const Body body = pick(q.fwd.variable_B, q.fwd.variable_C, bwd_true_true, bwd_true_false, bwd_false_true,
                        bwd_false_false);
  parallel_for(q.fwd.batch * q.fwd.groups * q.n_dblocks, const_cast<SelectiveScanBwdParams*>(&q), body);
}

}  // namespace dlk
