// Selective scan forward and backward kernels and their launchers (math: selective_scan.h).
//
// One thread per (batch, channel, state n): a segment of W = next_pow2(N) consecutive lanes of a
// warp holds the N states of one (batch, channel) row in registers and walks the sequence in
// time; sums over n (the output y, du's and ddelta's sums) are butterfly shuffles inside the
// segment. The forward stores the state at the end of every kScanChunk steps. The backward walks
// the chunks from the last: it recomputes the chunk's states from the previous chunk's end into
// shared memory (kScanChunk per thread), then runs the adjoint recurrence backwards through them.
// dB/dC of variable B/C are summed over the channels of a group with fp32 atomics (their last bits
// may differ run to run); every other gradient is owned by one thread.
#include "scan/selective_scan.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxStateCuda = 32;   // one segment of at most a warp per row

__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

// Sum over the W lanes of a segment (every lane of the warp calls it; W a power of two <= 32).
__device__ __forceinline__ float segment_sum(float v, int W) {
  for (int offset = W >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, W);
  return v;
}

// One thread's view: its row (b, d), its state n, and pointers at them. `active`: the thread has a
// real row and state (the others run the loops with zeros so the shuffles stay full-warp).
template <typename T>
struct Lane {
  int64_t b, d, row, n, off, bc_off;
  bool row_ok, active;
  float A, D, bias;
  const T *B, *C;
  int64_t sb_l, sc_l;

  __device__ Lane(const SelectiveScanFwdParams& p, int W) {
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    row = tid / W;
    n = tid % W;
    row_ok = row < p.batch * p.dim;
    active = row_ok && n < p.N;
    const int64_t r = row_ok ? row : 0, nn = active ? n : 0;
    b = r / p.dim;
    d = r % p.dim;
    off = r * p.L;
    const int64_t g = d / (p.dim / p.groups);
    bc_off = (b * p.groups + g) * p.L * p.N;
    A = p.A[d * p.N + nn];
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    B = static_cast<const T*>(p.B) + (p.variable_B ? bc_off + nn * p.bc_stride_n : d * p.N + nn);
    C = static_cast<const T*>(p.C) + (p.variable_C ? bc_off + nn * p.bc_stride_n : d * p.N + nn);
    sb_l = p.variable_B ? p.bc_stride_l : 0;
    sc_l = p.variable_C ? p.bc_stride_l : 0;
  }

  __device__ float raw_dt(const SelectiveScanFwdParams& p, int64_t t) const {
    return to_float(static_cast<const T*>(p.delta)[off + t]) + bias;
  }
  __device__ float dt(const SelectiveScanFwdParams& p, int64_t t) const {
    const float v = raw_dt(p, t);
    return p.delta_softplus ? softplus_f(v) : v;
  }
  __device__ float u(const SelectiveScanFwdParams& p, int64_t t) const {
    return to_float(static_cast<const T*>(p.u)[off + t]);
  }
  __device__ float Bt(int64_t t) const { return active ? to_float(B[t * sb_l]) : 0.f; }
  __device__ float Ct(int64_t t) const { return active ? to_float(C[t * sc_l]) : 0.f; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
selective_scan_fwd_kernel(const SelectiveScanFwdParams p, int W) {
  const Lane<T> lane(p, W);
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const T* z = static_cast<const T*>(p.z);
  T* out = static_cast<T*>(p.out);
  float h = 0.f;
  for (int64_t t = 0; t < p.L; ++t) {
    const float dt = lane.dt(p, t), u = lane.u(p, t);
    h = expf(dt * lane.A) * h + dt * u * lane.Bt(t);
    if (!lane.active) h = 0.f;
    const float y = segment_sum(lane.Ct(t) * h, W) + lane.D * u;
    if (lane.row_ok && lane.n == 0) {
      const float zt = z ? to_float(z[lane.off + t]) : 0.f;
      out[lane.off + t] = from_float<T>(z ? y * zt * sigmoid_f(zt) : y);
    }
    if (lane.active && (t % kScanChunk == kScanChunk - 1 || t == p.L - 1))
      p.states[(lane.row * n_chunks + t / kScanChunk) * p.N + lane.n] = h;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
selective_scan_bwd_kernel(const SelectiveScanBwdParams q, int W) {
  const SelectiveScanFwdParams& p = q.fwd;
  const Lane<T> lane(p, W);
  __shared__ float hs[kScanChunk][kThreads];   // this chunk's states, one column per thread
  const int64_t n_chunks = (p.L + kScanChunk - 1) / kScanChunk;
  const T* z = static_cast<const T*>(p.z);
  const T* dout = static_cast<const T*>(q.dout);
  const int64_t row = lane.row, N = p.N;
  float g = (q.dlast && lane.active) ? q.dlast[row * N + lane.n] : 0.f;
  float dA = 0.f, dBacc = 0.f, dCacc = 0.f, dD = 0.f, dbias = 0.f;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kScanChunk, t1 = std::min<int64_t>(p.L, t0 + kScanChunk);
    const float h0 = (c > 0 && lane.active) ? p.states[(row * n_chunks + c - 1) * N + lane.n] : 0.f;
    float h = h0;
    for (int64_t t = t0; t < t1; ++t) {
      const float dt = lane.dt(p, t);
      h = expf(dt * lane.A) * h + dt * lane.u(p, t) * lane.Bt(t);
      hs[t - t0][threadIdx.x] = lane.active ? h : 0.f;
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const float ht = hs[i][threadIdx.x];
      const float hprev = i > 0 ? hs[i - 1][threadIdx.x] : h0;
      const float raw = lane.raw_dt(p, t);
      const float dt = p.delta_softplus ? softplus_f(raw) : raw;
      const float u = lane.u(p, t), a = expf(dt * lane.A);
      const float Bn = lane.Bt(t), Cn = lane.Ct(t);
      const float go = lane.row_ok ? to_float(dout[lane.off + t]) : 0.f;
      float dy = go;
      if (z) {
        const float y = segment_sum(Cn * ht, W) + lane.D * u;
        const float zt = lane.row_ok ? to_float(z[lane.off + t]) : 0.f, s = sigmoid_f(zt);
        if (lane.row_ok && lane.n == 0)
          static_cast<T*>(q.dz)[lane.off + t] = from_float<T>(go * y * s * (1.f + zt * (1.f - s)));
        dy = go * zt * s;
      }
      const float gn = g + Cn * dy;   // g_t = C dy + a_{t+1} g_{t+1}
      const float ah = a * hprev;
      const float ddt = segment_sum(gn * (lane.A * ah + Bn * u), W);
      const float gB = segment_sum(gn * Bn, W);
      if (lane.active) {
        dA += gn * dt * ah;
        const float db = gn * dt * u, dc = dy * ht;
        if (p.variable_B) atomicAdd(q.dB + lane.bc_off + lane.n * p.L + t, db); else dBacc += db;
        if (p.variable_C) atomicAdd(q.dC + lane.bc_off + lane.n * p.L + t, dc); else dCacc += dc;
      }
      g = lane.active ? gn * a : 0.f;
      if (lane.row_ok && lane.n == 0) {
        const float dd = p.delta_softplus ? ddt * sigmoid_f(raw) : ddt;
        static_cast<T*>(q.du)[lane.off + t] = from_float<T>(dt * gB + lane.D * dy);
        static_cast<T*>(q.ddelta)[lane.off + t] = from_float<T>(dd);
        dD += dy * u;
        dbias += dd;
      }
    }
  }
  if (lane.active) {
    q.dA[row * N + lane.n] = dA;
    if (!p.variable_B) q.dB[row * N + lane.n] = dBacc;
    if (!p.variable_C) q.dC[row * N + lane.n] = dCacc;
  }
  if (lane.row_ok && lane.n == 0) {
    if (q.dD) q.dD[row] = dD;
    if (q.ddelta_bias) q.ddelta_bias[row] = dbias;
  }
}

// ---- host side --------------------------------------------------------------------------------
void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern selective_scan: ") + what);
}

int segment_width(int64_t N) {
  int w = 2;
  while (w < N) w <<= 1;
  return w;
}

void check_params(const SelectiveScanFwdParams& p) {
  check(p.batch >= 0 && p.dim >= 1 && p.L >= 1 && p.N >= 1, "sizes must be batch >= 0, dim, L, N >= 1");
  check(p.N <= kMaxStateCuda, "N must be at most 32 on the cuda backend");
  check(p.groups >= 1 && p.dim % p.groups == 0, "groups must divide dim");
  check(p.u && p.delta && p.A && p.B && p.C && p.states, "u, delta, A, B, C and states are required");
}

unsigned grid_for(const SelectiveScanFwdParams& p, int W) {
  return unsigned((p.batch * p.dim * W + kThreads - 1) / kThreads);
}

}  // namespace

void selective_scan_fwd(const SelectiveScanFwdParams& p, void* stream) {
  check_params(p);
  check(p.out != nullptr, "out is required");
  if (p.batch == 0) return;
  const int W = segment_width(p.N);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    auto kern = selective_scan_fwd_kernel<decltype(tag)>;
    DLK_LAUNCH(kern, grid_for(p, W), kThreads, 0, static_cast<cudaStream_t>(stream), p, W);
    check_launch("selective_scan_fwd_kernel");
  });
}

void selective_scan_bwd(const SelectiveScanBwdParams& q, void* stream) {
  check_params(q.fwd);
  check(q.dout && q.du && q.ddelta && q.dA && q.dB && q.dC, "dout, du, ddelta, dA, dB, dC are required");
  check(!q.fwd.z || q.dz, "dz is required with z");
  if (q.fwd.batch == 0) return;
  const int W = segment_width(q.fwd.N);
  dispatch_dtype<void>(q.fwd.dtype, [&](auto tag) {
    auto kern = selective_scan_bwd_kernel<decltype(tag)>;
    DLK_LAUNCH(kern, grid_for(q.fwd, W), kThreads, 0, static_cast<cudaStream_t>(stream), q, W);
    check_launch("selective_scan_bwd_kernel");
  });
}

}  // namespace dlk
