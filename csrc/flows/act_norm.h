// ActNorm's per-channel affine map y = x · m[c] + k[c] and its backward: the interface between the
// torch binding and the kernels in act_norm.cu. Plain C++.
//
// x is (B, C, S) with unit stride along S; its positions r = b·S + s of one channel are split into
// tiles of kActNormTile, walked by act_norm_programs(B·S) blocks per channel. Backward:
//   dx = dy · m[c],   sum_dy[c] = Σ_{b,s} dy,   sum_dyx[c] = Σ_{b,s} dy · x
// with one partial per (block, channel) in `partial` (2, P, C), summed by the binding in a fixed
// order. m, k, the partials and all math are fp32.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/dtype.h"
#include "flows/bcs.h"

namespace dlk {

constexpr int64_t kActNormTile = 1024;
constexpr int64_t kActNormMaxPrograms = 64;

// Blocks per channel (P) for R = B·S positions.
inline int64_t act_norm_programs(int64_t rows) {
  return std::clamp<int64_t>((rows + kActNormTile - 1) / kActNormTile, 1, kActNormMaxPrograms);
}

struct ActNormFwdParams {
  // operands
  BcsOperand x;     // (B, C, S)
  const float* m;   // (C,)
  const float* k;   // (C,)
  void* y;          // (B, C, S) contiguous
  // sizes
  int64_t B, C, S;
  // meta
  DType dtype;
};

struct ActNormBwdParams {
  // operands
  BcsOperand dy;    // (B, C, S)
  BcsOperand x;     // (B, C, S)
  const float* m;   // (C,)
  void* dx;         // (B, C, S) contiguous
  float* partial;   // (2, act_norm_programs(B·S), C): partial Σ dy, then partial Σ dy · x
  // sizes
  int64_t B, C, S;
  // meta
  DType dtype;
};

// Launch on `stream` (a cudaStream_t); nothing is launched when B·S == 0 or C == 0 (the binding
// zeroes the sums then). Throw on invalid parameters or a failed launch. Never synchronize.
void act_norm_fwd(const ActNormFwdParams& params, void* stream);
void act_norm_bwd(const ActNormBwdParams& params, void* stream);

}  // namespace dlk
