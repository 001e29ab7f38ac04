// Length-preserving dilated conv1d (WaveNet / ByteNet) forward and backward: the interface between
// the torch binding and dilated_conv1d.cu. Plain C++.
//
//   y[b,co,l] = bias[co] + sum_{ci,k} w[co,ci,k] * x[b, ci, l - left + k*dil]   (x = 0 outside [0, L))
//   dx[b,ci,s] = sum_{co,k} w[co,ci,k] * dy[b, co, s + left - k*dil]
//   dweight[co,ci,k] = sum_{b,l} dy[b,co,l] * x[b, ci, l - left + k*dil],  dbias[co] = sum_{b,l} dy
// x, dy, y, dx are given by element strides; weight (Cout, Cin, K) is contiguous in x's dtype;
// dweight/dbias are fp32. Math in fp32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

struct DilatedConv1dFwdParams {
  // pointers
  const void* x;       // (B, Cin, L) strided
  const void* weight;  // (Cout, Cin, K) contiguous
  const void* bias;    // (Cout,) or nullptr
  void* y;             // (B, Cout, L) strided
  // sizes and strides (elements)
  int64_t B, Cin, Cout, L;
  int K, dilation, left;
  int64_t x_stride[3], y_stride[3];
  // meta
  DType dtype;
  int num_sms;
};

struct DilatedConv1dBwdParams {
  // pointers
  const void* dy;      // (B, Cout, L) strided (stride 0 allowed)
  const void* x;       // (B, Cin, L) strided
  const void* weight;  // (Cout, Cin, K) contiguous
  void* dx;            // (B, Cin, L) strided, or nullptr: only the weight (and bias) gradients
  float* dweight;      // (Cout, Cin, K)
  float* dbias;        // (Cout,) or nullptr
  // sizes and strides (elements)
  int64_t B, Cin, Cout, L;
  int K, dilation, left;
  int64_t dy_stride[3], x_stride[3], dx_stride[3];
  // meta
  DType dtype;
  int num_sms;
};

// Launch on `stream` (a cudaStream_t); nothing is launched for empty tensors. Throw on invalid
// parameters or a failed launch. Never synchronize.
void dilated_conv1d_fwd(const DilatedConv1dFwdParams& params, void* stream);
void dilated_conv1d_bwd(const DilatedConv1dBwdParams& params, void* stream);

}  // namespace dlk
