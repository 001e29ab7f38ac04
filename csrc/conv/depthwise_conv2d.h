// Depthwise conv2d (F.conv2d with groups = C, weight (C, 1, KH, KW)) forward and backward: the
// interface between the torch binding and depthwise_conv2d.cu. Plain C++.
//
//   y[n,c,oh,ow] = bias[c] + sum_{kh,kw} w[c,kh,kw] * x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
// (x = 0 outside the image). pad is (top, left): the bottom/right padding only shows in (OH, OW).
//   dx[n,c,ih,iw] = sum over the taps whose output pixel oh = (ih + ph - kh*dh) / sh is whole and in range
//   dweight[c,kh,kw] = sum_{n,oh,ow} dy * x[...],  dbias[c] = sum_{n,oh,ow} dy
// Tensors are given by element strides (NCHW, channels_last, strided views); weight (C, KH, KW) is
// contiguous in x's dtype; bias has x's dtype; dweight/dbias are fp32. Math in fp32.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

struct DepthwiseConv2dGeometry {
  int64_t N, C, H, W, OH, OW;
  int KH, KW;
  int stride[2], pad[2], dilation[2];  // (h, w); pad = (top, left)
};

struct DepthwiseConv2dFwdParams {
  // pointers
  const void* x;       // (N, C, H, W) strided
  const void* weight;  // (C, KH, KW) contiguous
  const void* bias;    // (C,) or nullptr
  void* y;             // (N, C, OH, OW) strided
  // sizes and strides (elements)
  DepthwiseConv2dGeometry g;
  int64_t x_stride[4], y_stride[4];
  // meta
  DType dtype;
  int num_sms;
};

struct DepthwiseConv2dBwdParams {
  // pointers
  const void* dy;      // (N, C, OH, OW) strided (stride 0 allowed)
  const void* x;       // (N, C, H, W) strided
  const void* weight;  // (C, KH, KW) contiguous
  void* dx;            // (N, C, H, W) strided
  float* dweight;      // (C, KH, KW)
  float* dbias;        // (C,) or nullptr
  float* dweight_scratch;  // depthwise_conv2d_dweight_scratch(params) floats (may be 0: then unused)
  // sizes and strides (elements)
  DepthwiseConv2dGeometry g;
  int64_t dy_stride[4], x_stride[4], dx_stride[4];
  // meta
  DType dtype;
  int num_sms;
};

// Launch on `stream` (a cudaStream_t); nothing is launched for empty tensors. Throw on invalid
// parameters or a failed launch. Never synchronize.
void depthwise_conv2d_fwd(const DepthwiseConv2dFwdParams& params, void* stream);
void depthwise_conv2d_bwd(const DepthwiseConv2dBwdParams& params, void* stream);
// fp32 scratch the backward's dweight needs for these params (pointers, strides, dtype and num_sms
// set): the per-chunk partial sums of the register-blocked path, 0 where that path does not apply.
int64_t depthwise_conv2d_dweight_scratch(const DepthwiseConv2dBwdParams& params);

}  // namespace dlk
