// Affine coupling with the fused per-sample log-determinant: the interface between the torch
// binding and the kernels in affine_coupling.cu. Plain C++.
//
// Per sample b: x row of N values, h row of 2N (log-scale half h[:N], shift half t = h[N:]).
//   s = e^h (kExp) | sigmoid(h + 2) (kSigmoid) | exp(clamp · tanh(h / clamp)) (kSoftclamp)
//   forward: y = x · s + t,      logdet[b] =  Σ log s
//   reverse: y = (x - t) / s,    logdet[b] = -Σ log s
// The forward writes one partial log-det per (sample, chunk of kAffineCouplingChunk columns); the
// binding sums them in a fixed order. Backward (x is the op's input, y of the flow for reverse):
//   forward: dx = dy · s,  dt = dy,          dlog s = dy · x · s + dlogdet[b]
//   reverse: dx = dy / s,  dt = -dy / s,     dlog s = -dy · (x - t) / s - dlogdet[b]
//   dh[:N] = dlog s · d(log s)/dh,  dh[N:] = dt.   All math in fp32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

enum class CouplingScale { kExp, kSigmoid, kSoftclamp };

// Columns of one row each block handles: one partial log-det per chunk.
constexpr int64_t kAffineCouplingChunk = 2048;

// What the forward and backward share: sizes, row strides of x and h (elements; unit column
// strides) and the variant.
struct AffineCouplingArgs {
  int64_t B, N, stride_xb, stride_hb;
  CouplingScale scale;
  float clamp;     // softclamp only
  bool reverse;
  DType dtype;
  int num_sms;
};

struct AffineCouplingFwdParams {
  const void* x;   // (B, N)
  const void* h;   // (B, 2N)
  void* y;         // (B, N) contiguous
  float* partial;  // (B, cdiv(N, kAffineCouplingChunk)) contiguous
  AffineCouplingArgs a;
};

struct AffineCouplingBwdParams {
  const void* dy;        // (B, N), row stride stride_dyb
  const float* dlogdet;  // (B,)
  const void* x;         // (B, N)
  const void* h;         // (B, 2N)
  void* dx;              // (B, N) contiguous
  void* dh;              // (B, 2N) contiguous
  int64_t stride_dyb;
  AffineCouplingArgs a;
};

// Launch on `stream` (a cudaStream_t); nothing is launched when B == 0 or N == 0. Throw on
// invalid parameters or a failed launch. Never synchronize.
void affine_coupling_fwd(const AffineCouplingFwdParams& params, void* stream);
void affine_coupling_bwd(const AffineCouplingBwdParams& params, void* stream);

}  // namespace dlk
