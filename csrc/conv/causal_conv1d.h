// Causal depthwise conv1d (Mamba's short convolution) with fused SiLU, its backward and the
// one-token decode step: the interface between the torch binding and causal_conv1d.cu. Plain C++.
//
//   z[b,d,l] = bias[d] + sum_k weight[d,k] * x[b,d,l-(W-1)+k]   (x = 0 before l = 0),  y = z or silu(z)
//   dz = dy (or dy * silu'(z), z recomputed);  dx[l] = sum_k weight[d,k] * dz[l+(W-1)-k]
//   dweight[d,k] = sum_{b,l} dz[l] * x[l-(W-1)+k];  dbias[d] = sum_{b,l} dz[l]
// Tensors are given by element strides (channel-first, channel-last and strided views alike);
// weight (D, W) is contiguous, weight and bias have x's dtype; dweight/dbias are fp32. Math in fp32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

constexpr int kCausalConvMaxWidth = 8;

struct CausalConv1dFwdParams {
  // pointers
  const void* x;       // (B, D, L) strided
  const void* weight;  // (D, W) contiguous
  const void* bias;    // (D,) or nullptr
  void* y;             // (B, D, L) strided
  // sizes and strides (elements)
  int64_t B, D, L;
  int width;
  int64_t x_stride[3], y_stride[3];
  // meta
  bool silu;
  DType dtype;
  int num_sms;
};

struct CausalConv1dBwdParams {
  // pointers
  const void* dy;      // (B, D, L) strided (stride 0 allowed)
  const void* x;       // (B, D, L) strided
  const void* weight;  // (D, W) contiguous
  const void* bias;    // (D,) or nullptr (needed to recompute z under SiLU)
  void* dx;            // (B, D, L) strided
  float* dweight;      // (D, W)
  float* dbias;        // (D,) or nullptr
  // sizes and strides (elements)
  int64_t B, D, L;
  int width;
  int64_t dy_stride[3], x_stride[3], dx_stride[3];
  // meta
  bool silu;
  DType dtype;
  int num_sms;
};

// y = act(bias + sum_{k < W-1} weight[:, k] * state[:, :, k] + weight[:, W-1] * x); then the state
// shifts by one and ends with x (in place).
struct CausalConv1dUpdateParams {
  // pointers
  const void* x;       // (B, D) strided
  void* state;         // (B, D, W - 1) strided, updated in place
  const void* weight;  // (D, W) contiguous
  const void* bias;    // (D,) or nullptr
  void* y;             // (B, D) strided
  // sizes and strides (elements)
  int64_t B, D;
  int width;
  int64_t x_stride[2], state_stride[3], y_stride[2];
  // meta
  bool silu;
  DType dtype;
  int num_sms;
};

// Launch on `stream` (a cudaStream_t); nothing is launched for empty tensors. Throw on invalid
// parameters or a failed launch. Never synchronize.
void causal_conv1d_fwd(const CausalConv1dFwdParams& params, void* stream);
void causal_conv1d_bwd(const CausalConv1dBwdParams& params, void* stream);
void causal_conv1d_update(const CausalConv1dUpdateParams& params, void* stream);

}  // namespace dlk
