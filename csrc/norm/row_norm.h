// LayerNorm / RMSNorm over the last dimension of a (rows, cols) matrix: the interface between the
// torch binding and the kernels in row_norm.cu. Plain C++: no CUDA and no torch headers.
//
// Forward (all math in fp32, storage in `dtype`):
//   s    = residual ? round_to_dtype(x + residual) : x      (residual_out = s when residual given)
//   LN:  mean = mean(s), rstd = 1/sqrt(mean((s-mean)^2) + eps), y = (s-mean)*rstd*w + b
//   RMS: rstd = 1/sqrt(mean(s^2) + eps),                       y = s*rstd*w
// Backward (x is the saved s; xhat = (x-mean)*rstd, or x*rstd for RMS; g = dy*w, or dy):
//   LN:  dx = rstd*(g - xhat*mean(g*xhat) - mean(g)),  RMS: dx = rstd*(g - xhat*mean(g*xhat))
//   dx += dresidual (when given); dweight = sum_rows dy*xhat; dbias = sum_rows dy.
//   dweight/dbias are first fp32 partial sums, one row per block: partial[num_partials, cols];
//   a second kernel sums each column's partials in a fixed order and writes dweight (in
//   dweight_dtype) and dbias (fp32): deterministic, no atomics.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

// Every (rows, cols) operand has unit column stride and the given row stride (in elements; any
// value >= 0, including 0 for a broadcast row). Absent optional operands are nullptr.
struct RowNormFwdParams {
  // pointers
  const void* x;         // (rows, cols)
  const void* residual;  // (rows, cols) or nullptr
  const void* weight;    // (cols,) contiguous or nullptr
  const void* bias;      // (cols,) contiguous or nullptr
  void* y;               // (rows, cols)
  void* residual_out;    // (rows, cols), required when has_residual
  float* mean;           // (rows,), required for LayerNorm, unused for RMSNorm
  float* rstd;           // (rows,)
  // sizes and row strides (elements)
  int64_t rows, cols;
  int64_t x_row_stride, residual_row_stride, y_row_stride, residual_out_row_stride;
  // meta
  float eps;
  DType dtype;
  bool is_rms, has_weight, has_bias, has_residual;
  int num_sms;  // streaming multiprocessors of the device (sizes the grid)
};

struct RowNormBwdParams {
  // pointers
  const void* dy;         // (rows, cols)
  const void* x;          // (rows, cols): the normalized input s saved by the forward
  const void* weight;     // (cols,) contiguous or nullptr
  const float* mean;      // (rows,), LayerNorm only
  const float* rstd;      // (rows,)
  const void* dresidual;  // (rows, cols) or nullptr
  void* dx;               // (rows, cols)
  float* dweight_partial;  // (num_partials, cols) contiguous fp32, required when has_weight
  float* dbias_partial;    // (num_partials, cols) contiguous fp32, required when has_bias
  void* dweight;           // (cols,) in dweight_dtype, required when has_weight
  float* dbias;            // (cols,) fp32, required when has_bias
  float* coef;             // (rows, 2) fp32 scratch (the uncached kernel's per-row coefficients)
  // sizes and row strides (elements)
  int64_t rows, cols;
  int64_t dy_row_stride, x_row_stride, dresidual_row_stride, dx_row_stride;
  int64_t num_partials;  // from row_norm_bwd_num_partials(); the backward grid size
  // meta
  DType dtype;
  DType dweight_dtype;
  bool is_rms, has_weight, has_bias, has_dresidual;
  int num_sms;
};

// Launch on `stream` (a cudaStream_t). Return immediately when rows == 0. Throw std::runtime_error
// on invalid parameters or a failed launch. Never synchronize.
void row_norm_fwd(const RowNormFwdParams& params, void* stream);
void row_norm_bwd(const RowNormBwdParams& params, void* stream);

// Rows of the fp32 dweight/dbias partial buffers row_norm_bwd writes (= its grid size): at most
// `rows`, about as many blocks as fit on the device at once. Every field of `params` except
// num_partials and the partial pointers must be filled in (the kernel choice depends on them).
int64_t row_norm_bwd_num_partials(const RowNormBwdParams& params);

}  // namespace dlk
