// Selective scan (Mamba S6): the interface between the torch bindings and the kernels in
// selective_scan.cu (CUDA) and selective_scan_cpu.cpp (CPU). Plain C++.
//
// For each batch b, channel d and state n, over time t (all math in fp32):
//   dt_t   = delta[b,d,t] + delta_bias[d], then softplus(dt_t) if delta_softplus
//   h_t[n] = exp(dt_t A[d,n]) h_{t-1}[n] + dt_t B[n,t] u[b,d,t]          (h_{-1} = h0 or 0)
// Packed sequences (seq_idx): at a step t > 0 whose id seq_idx[b,t] differs from step t - 1's the
// decay exp(dt_t A) is replaced by 0, so the state restarts from zero. In the affine form of a step
// (h -> a h + b) that is the reset flag of a segmented scan: composed maps forget everything before
// a map with a = 0, so the block and chunk scans need no other change, and the adjoint below stops
// there too (g_{t-1} gets a_t g_t = 0). dh0 = a_0 g_0.
//   y_t    = sum_n C[n,t] h_t[n] + D[d] u[b,d,t];   out = y_t * silu(z[b,d,t]) if z is given
// B and C are grouped, (batch, G, N, L) with channel d in group d / (dim / G), or time-invariant,
// (dim, N). `states` holds h at the end of every chunk of kChunk steps: the backward recomputes
// the states inside a chunk from the previous chunk's end instead of storing every step.
//
// Backward, with g_t = dL/dh_t = C[:,t] dy_t + exp(dt_{t+1} A) g_{t+1} (g_{L-1} starts from the
// gradient of the last state), dy = dout * silu(z) and h_{t-1} the previous state:
//   ddt_t = sum_n g_t[n] (A[n] exp(dt_t A[n]) h_{t-1}[n] + B[n,t] u_t)   (times sigmoid for softplus)
//   dA[n] = sum_t g_t[n] dt_t exp(dt_t A[n]) h_{t-1}[n]     dB[n,t] = sum_d g_t[n] dt_t u_t
//   du_t  = dt_t sum_n g_t[n] B[n,t] + D dy_t               dC[n,t] = sum_d dy_t h_t[n]
//   dz_t  = dout_t y_t silu'(z_t)   dD = sum_t dy_t u_t      ddelta_bias = sum_t ddt_t
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

constexpr int kScanChunk = 64;   // steps between stored states (the bindings size `states` by it)
constexpr int kScanMaxState = 256;  // largest N
constexpr int kScanCpuLanes = 16;   // channels per CPU tile (one AVX-512 register of fp32)

struct SelectiveScanFwdParams {
  // pointers; u, delta, z, out are contiguous (batch, dim, L) in `dtype`
  const void* u;
  const void* delta;
  const float* A;           // (dim, N)
  const void* B;            // variable: (batch, G, *) with the strides below; else (dim, N)
  const void* C;            // as B
  const float* D;           // (dim,) or null
  const void* z;            // or null
  const float* delta_bias;  // (dim,) or null
  const float* h0;          // (batch, dim, N) initial state, or null (zero)
  const int32_t* seq_idx;   // (batch, L) sequence ids, or null (one sequence per row)
  void* out;
  float* states;            // (batch, dim, n_chunks, N)
  // sizes
  int64_t batch, dim, L, N, groups;
  int64_t bc_stride_l, bc_stride_n;  // of variable B and C inside one (batch, group): L*N per group
  // meta
  bool variable_B, variable_C, delta_softplus;
  DType dtype;
  int num_sms;
};

struct SelectiveScanBwdParams {
  SelectiveScanFwdParams fwd;   // the forward's inputs (out and states unused but for states)
  const void* dout;             // (batch, dim, L) contiguous
  const float* dlast;           // (batch, dim, N) gradient of the last state, or null
  void* du;                     // (batch, dim, L)
  void* ddelta;                 // (batch, dim, L)
  void* dz;                     // (batch, dim, L) or null
  float* dA;                    // (batch, dim, N) partials, summed over batch by the binding
  float* dB;                    // variable: CPU (batch, G, n_dblocks, L, N) partials,
                                // CUDA (batch, G, N, L) summed atomically; else (batch, dim, N)
  float* dC;                    // as dB
  float* dD;                    // (batch, dim) partials or null
  float* ddelta_bias;           // (batch, dim) partials or null
  float* dh0;                   // (batch, dim, N) gradient of h0, or null (no h0)
  int64_t n_dblocks;            // CPU: tasks per (batch, group), each owning dB/dC partials
};

// CUDA: launch on `stream` (a cudaStream_t); throw on invalid parameters or a failed launch.
void selective_scan_fwd(const SelectiveScanFwdParams& params, void* stream);
void selective_scan_bwd(const SelectiveScanBwdParams& params, void* stream);

// CPU (fp32 only): `parallel_for(n, fn)` runs fn(begin, end) over a split of [0, n) in parallel.
using ParallelFor = void (*)(int64_t n, void* ctx, void (*fn)(void* ctx, int64_t begin, int64_t end));
void selective_scan_fwd_cpu(const SelectiveScanFwdParams& params, ParallelFor parallel_for);
void selective_scan_bwd_cpu(const SelectiveScanBwdParams& params, ParallelFor parallel_for);

}  // namespace dlk
