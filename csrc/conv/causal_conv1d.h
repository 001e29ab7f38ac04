// Causal depthwise conv1d (Mamba's short convolution) with fused SiLU, its backward and the
// one-token decode step: the interface between the torch binding and causal_conv1d.cu. Plain C++.
//
//   z[b,d,l] = bias[d] + sum_k weight[d,k] * x[b,d,l-(W-1)+k]   (x = 0 before l = 0),  y = z or silu(z)
//   dz = dy (or dy * silu'(z), z recomputed);  dx[l] = sum_k weight[d,k] * dz[l+(W-1)-k]
//   dweight[d,k] = sum_{b,l} dz[l] * x[l-(W-1)+k];  dbias[d] = sum_{b,l} dz[l]
// Optional (causal-conv1d's arguments): initial_states (B, D, W-1) are the inputs before l = 0
// (zeros without); under seq_idx (B, L) int32 a tap at a position of another sequence reads 0;
// dinitial_states[p] (p = -(W-1)..-1) is dx's formula at a negative position.
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
  const void* initial_states;  // (B, D, W - 1) strided, or nullptr
  const int32_t* seq_idx;      // (B, L) strided, or nullptr
  void* y;             // (B, D, L) strided
  // sizes and strides (elements)
  int64_t B, D, L;
  int width;
  int64_t x_stride[3], y_stride[3], init_stride[3], seq_stride[2];
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
  const void* initial_states;  // (B, D, W - 1) strided, or nullptr
  const int32_t* seq_idx;      // (B, L) strided, or nullptr
  void* dx;            // (B, D, L) strided
  float* dweight;      // (D, W)
  float* dbias;        // (D,) or nullptr
  void* dinitial_states;  // (B, D, W - 1) contiguous in x's dtype; required with initial_states
  // sizes and strides (elements)
  int64_t B, D, L;
  int width;
  int64_t dy_stride[3], x_stride[3], dx_stride[3], init_stride[3], seq_stride[2];
  // meta
  bool silu;
  DType dtype;
  int num_sms;
};

// L new tokens x[:, :, t] against a state of S >= W - 1 slots. Token t sees positions
// p = t-(W-1)..t: p >= 0 is x[t'], p < 0 the state slot (base + p) mod S, base = cache_seqlens[b]
// (circular buffer) or 0 (linear: the state ends with the newest input). Afterwards, in place:
// circular: slot (base + t) mod S <- x[t] for the last min(L, S) tokens; linear: the newest S
// inputs, oldest first. The state row of batch b is state_indices[b] (b when nullptr); a negative
// index is a padding slot: y = 0, no state touched.
struct CausalConv1dUpdateParams {
  // pointers
  const void* x;       // (B, D, L) strided
  void* state;         // (B_pool, D, S) strided, updated in place
  const void* weight;  // (D, W) contiguous
  const void* bias;    // (D,) or nullptr
  const int32_t* cache_seqlens;  // (B,) or nullptr
  const int32_t* state_indices;  // (B,) or nullptr
  void* y;             // (B, D, L) strided
  // sizes and strides (elements)
  int64_t B, D, L, S;
  int width;
  int64_t x_stride[3], state_stride[3], y_stride[3], lens_stride, indices_stride;
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
