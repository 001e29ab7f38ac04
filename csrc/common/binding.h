// What the torch binding files of dlkern._C / _C_emu (csrc/<family>/*_binding.cpp, defined as a
// module in csrc/module.cpp) share: the kernel device, the launch context, and the checks of the
// operands several op families take. For each launcher a binding file checks the inputs (messages
// name the argument), allocates the outputs, takes the device guard, current stream and SM count,
// fills the kernel's params struct and calls its launcher (declared in csrc/<op>/<op>.h). The
// Python-visible names and signatures are those of the Triton launchers in dlkern.kernels, so the
// two backends are interchangeable.
//
// setup.py defines DLK_WITH_CUDA. Without it (a CPU emulation build of the same kernels) the
// tensors are CPU tensors, the stream is null and the SM count is kEmulatedSms.
//
// Light on purpose: ATen's Tensor class and the few at:: functions the bindings call, never
// <torch/extension.h> (a translation unit with it costs a minute of compile time; only
// csrc/module.cpp, which needs pybind11's tensor casters, includes it).
#pragma once

#include <ATen/core/Tensor.h>

#ifdef DLK_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <cstdint>
#include <optional>

#include "common/debug_buffer.h"
#include "common/dtype.h"

namespace dlk_bind {

using OptTensor = std::optional<at::Tensor>;

#ifdef DLK_WITH_CUDA
inline constexpr const char* kDeviceKind = "a CUDA tensor";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
#else
inline constexpr const char* kDeviceKind = "a CPU tensor";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
inline constexpr int kEmulatedSms = 4;
#endif

using dlk::debug_nan_fill;
using dlk::new_buffer;
using dlk::set_debug_nan_fill;

// Device guard, current stream and SM count for one call on x's device.
class LaunchContext {
 public:
#ifdef DLK_WITH_CUDA
  explicit LaunchContext(const at::Tensor& x) : guard_(x.device()) {
    stream_ = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount,
                                          x.get_device()));
  }
#else
  explicit LaunchContext(const at::Tensor&) {}
#endif
  void* stream() const { return stream_; }
  int num_sms() const { return num_sms_; }

 private:
#ifdef DLK_WITH_CUDA
  c10::cuda::CUDAGuard guard_;
  void* stream_ = nullptr;
  int num_sms_ = 0;
#else
  void* stream_ = nullptr;
  int num_sms_ = kEmulatedSms;
#endif
};

inline bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

template <typename T = void>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

inline dlk::DType kernel_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return dlk::DType::F32;
    case at::kHalf: return dlk::DType::F16;
    case at::kBFloat16: return dlk::DType::BF16;
    default: TORCH_CHECK(false, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return dlk::DType::F32;  // unreachable
}

// Kernels index columns with unit stride; a (rows, cols) operand without it is copied.
inline at::Tensor with_unit_col_stride(const at::Tensor& t) {
  return t.size(1) <= 1 || t.stride(1) == 1 ? t : t.contiguous();
}

// x: the (rows, cols) input every other operand is checked against.
inline at::Tensor check_x(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "x must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(x), "x must be ", kDeviceKind, ", got a tensor on ", x.device());
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (rows, cols), got shape ", x.sizes());
  kernel_dtype(x);
  TORCH_CHECK(x.size(1) <= (int64_t(1) << 30), "x must have at most 2^30 columns, got shape ",
              x.sizes());
  return with_unit_col_stride(x);
}

inline void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

// residual, dy, dresidual: (rows, cols) like x, any row stride.
inline at::Tensor check_matrix(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_like_x(t, name, x);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ",
              t.sizes());
  return with_unit_col_stride(t);
}

// mean, rstd of the backward: `units` fp32 values (any shape holding them, e.g. (N, G)).
inline at::Tensor check_unit_stats(const at::Tensor& t, const char* name, const at::Tensor& x,
                                   int64_t units) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == units, name, " must hold ", units, " values, got shape ", t.sizes());
  return t.reshape({units}).contiguous();
}

}  // namespace dlk_bind
