// selective_state_update: one decoding step of the selective scan, in place on the state (the
// interface between the torch binding, scan_binding.cpp, and state_update.cu). Plain C++.
//
// For batch b and channel d of group g = d / (dim / G), with fp32 math:
//   dt = delta[b,d] + dt_bias[d], softplus'd when dt_softplus
//   h[n] = exp(dt A[d,n]) state[b,d,n] + dt x[b,d] B[b,g,n]      (written back to state)
//   out[b,d] = (sum_n C[b,g,n] h[n] + D[d] x[b,d]) * silu(z[b,d]) (z optional)
// With state_index, row b reads and writes state[state_index[b]] (a pool of states; the indices
// are distinct). mamba_ssm's multi-head layout is this one over nheads * dim channels (the
// binding's caller flattens it).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

constexpr int kStateUpdateMaxState = 256;   // largest N

struct SelectiveStateUpdateParams {
  // pointers
  void* state;              // (batch or pool, dim, N) in `state_dtype` (fp32 or `dtype`), strided, in place
  const int32_t* state_index;   // (batch,) rows of `state`, or null (row b)
  const void* x;            // (batch, dim) strided, in `dtype`; dt and z as x
  const void* dt;
  const void* z;            // or null
  const float* A;           // (dim, N) contiguous
  const void* B;            // (batch, G, N) contiguous, in `dtype`
  const void* C;            // as B
  const float* D;           // (dim,) or null
  const float* dt_bias;     // (dim,) or null
  void* out;                // (batch, dim) contiguous, in `dtype`
  // sizes and strides (elements)
  int64_t batch, dim, N, groups;
  int64_t state_stride[3], x_stride[2], dt_stride[2], z_stride[2];
  // meta
  bool dt_softplus;
  DType dtype, state_dtype;
};

// Launch on `stream` (a cudaStream_t); nothing runs for empty tensors. Throws on invalid
// parameters or a failed launch. Never synchronizes.
void selective_state_update(const SelectiveStateUpdateParams& params, void* stream);

}  // namespace dlk
