// Invertible 1×1 convolution: the per-pixel channel matmul y[b, :, s] = W x[b, :, s] and the
// weight gradient dW = Σ_{b,s} dy[b, :, s] x[b, :, s]ᵀ: the interface between the torch binding and
// the kernels in inv_conv1x1.cu. Plain C++. (dx = Wᵀ dy is the matmul with Wᵀ.)
//
// x and dy are (B, C, S) with unit stride along S; positions r = b·S + s are tiled alike for vectors
// (S = 1) and images. W (C, C) row-major fp32, C <= kInvConvMaxChannels. The weight gradient is
// written as inv_conv1x1_dw_programs(B·S) partials (P, C, C), summed by the binding in a fixed order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/dtype.h"
#include "flows/bcs.h"

namespace dlk {

constexpr int64_t kInvConvMaxChannels = 128;
constexpr int64_t kInvConvDwTile = 32;          // positions per shared-memory tile of the dW kernel
constexpr int64_t kInvConvDwMaxPrograms = 128;

inline int64_t inv_conv1x1_dw_programs(int64_t rows) {
  return std::clamp<int64_t>((rows + kInvConvDwTile - 1) / kInvConvDwTile, 1, kInvConvDwMaxPrograms);
}

struct InvConvMatmulParams {
  // operands
  BcsOperand x;     // (B, C, S)
  const float* w;   // (C, C) contiguous
  void* y;          // (B, C, S) contiguous
  // sizes
  int64_t B, C, S;
  // meta
  DType dtype;
  int num_sms;
};

struct InvConvDwParams {
  // operands
  BcsOperand dy;    // (B, C, S)
  BcsOperand x;     // (B, C, S)
  float* partial;   // (inv_conv1x1_dw_programs(B·S), C, C)
  // sizes
  int64_t B, C, S;
  // meta
  DType dtype;
};

// Launch on `stream` (a cudaStream_t); nothing is launched when B·S == 0 (the binding zeroes dW
// then). Throw on invalid parameters or a failed launch. Never synchronize.
void inv_conv1x1_matmul(const InvConvMatmulParams& params, void* stream);
void inv_conv1x1_dw(const InvConvDwParams& params, void* stream);

}  // namespace dlk
