// WaveNet residual layer: the fused forward and the gate part of the backward (the rest of the
// backward reuses the dilated conv1d kernels). Interface between the torch binding and wavenet.cu.
//
//   h = b_dil + sum_{ci,k} w_dil[:, ci, k] * x[b, ci, l - (K-1-k)*dil]  (+ cond)      (B, 2C, L)
//   z = tanh(h[:, :C]) * sigmoid(h[:, C:])                                               (B, C, L)
//   out = x + (w_res @ z + b_res),  skip = w_skip @ z + b_skip                          (B, C|S, L)
// Gate backward: dz = w_res^T dout + w_skip^T dskip; dh = (dz * sig(g) * (1 - tanh(a)^2),
//   dz * tanh(a) * sig(g) * (1 - sig(g))); also writes z for the projections' weight gradients.
// x, cond, dout, dskip are strided; weights contiguous in x's dtype; out, skip, h, dh, z are
// contiguous. Math in fp32; z is rounded to x's dtype before the projections (as the eager
// composition does).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

struct WavenetFwdParams {
  // pointers
  const void* x;       // (B, C, L) strided
  const void* w_dil;   // (2C, C, K)
  const void* b_dil;   // (2C,) or nullptr
  const void* cond;    // (B, 2C, L) strided, or nullptr
  const void* w_res;   // (C, C)
  const void* b_res;   // (C,) or nullptr
  const void* w_skip;  // (S, C)
  const void* b_skip;  // (S,) or nullptr
  void* out;           // (B, C, L)
  void* skip;          // (B, S, L)
  void* h;             // (B, 2C, L)
  // sizes and strides (elements)
  int64_t B, C, S, L;
  int K, dilation;
  int64_t x_stride[3], cond_stride[3];
  // meta
  DType dtype;
  int num_sms;
};

struct WavenetGateBwdParams {
  // pointers
  const void* dout;    // (B, C, L) strided (stride 0 allowed)
  const void* dskip;   // (B, S, L) strided (stride 0 allowed)
  const void* h;       // (B, 2C, L)
  const void* w_res;   // (C, C)
  const void* w_skip;  // (S, C)
  void* dh;            // (B, 2C, L)
  void* z;             // (B, C, L)
  // sizes and strides (elements)
  int64_t B, C, S, L;
  int64_t dout_stride[3], dskip_stride[3];
  // meta
  DType dtype;
  int num_sms;
};

constexpr int kWavenetMaxChannels = 1024;  // C: the forward keeps a (C, 32) fp32 tile of z on chip

// Launch on `stream` (a cudaStream_t); nothing is launched for empty tensors. Throw on invalid
// parameters or a failed launch. Never synchronize.
void wavenet_layer_fwd(const WavenetFwdParams& params, void* stream);
void wavenet_gate_bwd(const WavenetGateBwdParams& params, void* stream);

}  // namespace dlk
