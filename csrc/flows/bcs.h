// The (B, C, S) layout shared by the ActNorm and 1×1-convolution kernels. Plain C++.
//
// An operand is (B, C, S) with unit stride along S (S = 1 for vectors) and any batch and channel
// strides (channel slices of a bigger tensor need no copy). Kernels walk one channel's positions
// r = b·S + s in tiles, so the position -> (sample, pixel) division runs per element.
#pragma once

#include <cstdint>
#include <type_traits>

namespace dlk {

struct BcsOperand {
  const void* data;
  int64_t stride_b, stride_c;  // elements; the S stride is 1
};

// f(I{}) with I the type of the position division: uint32_t when every position r < B·S fits
// (a 32-bit division is several times cheaper on the GPU), else int64_t.
template <typename F>
void dispatch_position_type(int64_t rows, F&& f) {
  if (rows <= int64_t(UINT32_MAX)) {
    f(uint32_t{});
  } else {
    f(int64_t{});
  }
}

}  // namespace dlk
