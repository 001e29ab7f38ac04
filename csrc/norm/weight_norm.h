// Weight normalization w = g * v / ||v|| (torch._weight_norm) over the rows of v viewed as (D, K):
// the interface between the torch binding and the kernels in weight_norm.cu. Plain C++.
//
// Forward:  norm[d] = sqrt(sum_k v[d,k]^2),  w[d,k] = v[d,k] * g[d] / norm[d].
// Backward: dot = sum_k dw[d,k] * v[d,k],  dg[d] = dot / norm[d],
//           dv[d,k] = (g[d] / norm[d]) * (dw[d,k] - v[d,k] * dot / norm[d]^2).
// All math in fp32; v, w, dw, dv are contiguous (D, K) in `dtype`; g, norm and dg are fp32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

struct WeightNormFwdParams {
  // pointers
  const void* v;   // (D, K) contiguous
  const float* g;  // (D,)
  void* w;         // (D, K) contiguous
  float* norm;     // (D,)
  // sizes
  int64_t D, K;
  // meta
  DType dtype;
  int num_sms;
};

struct WeightNormBwdParams {
  // pointers
  const void* dw;     // (D, K) contiguous
  const void* v;      // (D, K) contiguous
  const float* g;     // (D,)
  const float* norm;  // (D,) from the forward
  void* dv;           // (D, K) contiguous
  float* dg;          // (D,)
  // sizes
  int64_t D, K;
  // meta
  DType dtype;
  int num_sms;
};

// Launch on `stream` (a cudaStream_t). Nothing is launched when D == 0; K == 0 gives norm = 0.
// Throw on invalid parameters or a failed launch. Never synchronize.
void weight_norm_fwd(const WeightNormFwdParams& params, void* stream);
void weight_norm_bwd(const WeightNormBwdParams& params, void* stream);

}  // namespace dlk
