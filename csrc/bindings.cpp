// dlkern._C: the torch binding of the CUDA C++ kernels, and the only translation unit that
// includes torch. For each launcher: check the inputs (messages name the argument), allocate the
// outputs, take the device guard, current stream and SM count, fill the kernel's params struct and
// call its launcher (declared in csrc/<op>/<op>.h). The Python-visible names and signatures are
// those of the Triton launchers in dlkern.kernels, so the two backends are interchangeable.
//
// setup.py defines DLK_WITH_CUDA. Without it (a CPU emulation build of the same kernels) the
// tensors are CPU tensors, the stream is null and the SM count is kEmulatedSms.
#include <torch/extension.h>

#ifdef DLK_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "norm/row_norm.h"

namespace {

using OptTensor = std::optional<at::Tensor>;

// ---- common -----------------------------------------------------------------------------------
#ifdef DLK_WITH_CUDA
constexpr const char* kDeviceKind = "a CUDA tensor";
bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }
#else
constexpr const char* kDeviceKind = "a CPU tensor";
bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }
constexpr int kEmulatedSms = 4;
#endif

std::atomic<bool> g_debug_nan_fill{false};

void set_debug_nan_fill(bool enabled) { g_debug_nan_fill.store(enabled); }

// A new tensor, NaN-filled in debug mode so that any element a kernel fails to write shows up.
at::Tensor new_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (g_debug_nan_fill.load()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

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

bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

template <typename T = void>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

dlk::DType kernel_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return dlk::DType::F32;
    case at::kHalf: return dlk::DType::F16;
    case at::kBFloat16: return dlk::DType::BF16;
    default: TORCH_CHECK(false, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return dlk::DType::F32;  // unreachable
}

// Kernels index columns with unit stride; a (rows, cols) operand without it is copied.
at::Tensor with_unit_col_stride(const at::Tensor& t) {
  return t.size(1) <= 1 || t.stride(1) == 1 ? t : t.contiguous();
}

// x: the (rows, cols) input every other operand is checked against.
at::Tensor check_x(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "x must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(x), "x must be ", kDeviceKind, ", got a tensor on ", x.device());
  TORCH_CHECK(x.dim() == 2, "x must be 2-D (rows, cols), got shape ", x.sizes());
  kernel_dtype(x);
  TORCH_CHECK(x.size(1) <= (int64_t(1) << 30), "x must have at most 2^30 columns, got shape ",
              x.sizes());
  return with_unit_col_stride(x);
}

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

// residual, dy, dresidual: (rows, cols) like x, any row stride.
at::Tensor check_matrix(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_like_x(t, name, x);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ",
              t.sizes());
  return with_unit_col_stride(t);
}

// weight, bias: (cols,) like x.
at::Tensor check_vector(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_like_x(t, name, x);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape (", x.size(1),
              ",), got ", t.sizes());
  return t.contiguous();
}

// mean, rstd: (rows,) float32.
at::Tensor check_stats(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(0), name, " must have shape (", x.size(0),
              ",), got ", t.sizes());
  return t.contiguous();
}

// ---- LayerNorm / RMSNorm ----------------------------------------------------------------------
// (y, residual_out | undefined, mean | undefined for RMS, rstd)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> row_norm_forward(
    const at::Tensor& x_in, const OptTensor& weight_in, const OptTensor& bias_in,
    const OptTensor& residual_in, double eps, bool is_rms) {
  const at::Tensor x = check_x(x_in);
  const at::Tensor weight =
      present(weight_in) ? check_vector(*weight_in, "weight", x) : at::Tensor();
  const at::Tensor bias = present(bias_in) ? check_vector(*bias_in, "bias", x) : at::Tensor();
  const at::Tensor residual =
      present(residual_in) ? check_matrix(*residual_in, "residual", x) : at::Tensor();
  const int64_t rows = x.size(0), cols = x.size(1);

  LaunchContext ctx(x);
  const at::TensorOptions stats_options = x.options().dtype(at::kFloat);
  at::Tensor y = new_buffer({rows, cols}, x.options());                             // (M, N)
  at::Tensor residual_out = residual.defined() ? new_buffer({rows, cols}, x.options())
                                               : at::Tensor();                      // (M, N)
  at::Tensor mean = is_rms ? at::Tensor() : new_buffer({rows}, stats_options);      // (M,)
  at::Tensor rstd = new_buffer({rows}, stats_options);                              // (M,)
  if (rows == 0 || cols == 0) {  // nothing to launch; the statistics of an empty row are NaN
    if (mean.defined()) mean.fill_(std::numeric_limits<double>::quiet_NaN());
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, residual_out, mean, rstd};
  }

  dlk::RowNormFwdParams p{};
  p.x = x.data_ptr();
  p.residual = ptr_or_null(residual);
  p.weight = ptr_or_null(weight);
  p.bias = ptr_or_null(bias);
  p.y = y.data_ptr();
  p.residual_out = ptr_or_null(residual_out);
  p.mean = ptr_or_null<float>(mean);
  p.rstd = rstd.data_ptr<float>();
  p.rows = rows;
  p.cols = cols;
  p.x_row_stride = x.stride(0);
  p.residual_row_stride = residual.defined() ? residual.stride(0) : 0;
  p.y_row_stride = y.stride(0);
  p.residual_out_row_stride = residual_out.defined() ? residual_out.stride(0) : 0;
  p.eps = static_cast<float>(eps);
  p.dtype = kernel_dtype(x);
  p.is_rms = is_rms;
  p.has_weight = weight.defined();
  p.has_bias = bias.defined();
  p.has_residual = residual.defined();
  p.num_sms = ctx.num_sms();
  dlk::row_norm_fwd(p, ctx.stream());
  return {y, residual_out, mean, rstd};
}

// (dx, dweight | undefined, dbias | undefined)
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_norm_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const OptTensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, const OptTensor& dresidual_in,
    bool has_bias, bool is_rms) {
  const at::Tensor x = check_x(x_in);
  TORCH_CHECK(dy_in.defined(), "dy must be a tensor, got None");
  const at::Tensor dy = check_matrix(dy_in, "dy", x);
  const at::Tensor weight =
      present(weight_in) ? check_vector(*weight_in, "weight", x) : at::Tensor();
  const at::Tensor mean = is_rms ? at::Tensor() : check_stats(mean_in, "mean", x);
  const at::Tensor rstd = check_stats(rstd_in, "rstd", x);
  const at::Tensor dresidual =
      present(dresidual_in) ? check_matrix(*dresidual_in, "dresidual", x) : at::Tensor();
  const int64_t rows = x.size(0), cols = x.size(1);

  LaunchContext ctx(x);
  at::Tensor dx = new_buffer({rows, cols}, x.options());  // (M, N)
  if (rows == 0 || cols == 0) {  // nothing to launch; dweight/dbias are empty sums
    return {dx, weight.defined() ? at::zeros({cols}, x.options()) : at::Tensor(),
            has_bias ? at::zeros({cols}, x.options()) : at::Tensor()};
  }

  dlk::RowNormBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = ptr_or_null(weight);
  p.mean = ptr_or_null<const float>(mean);
  p.rstd = rstd.data_ptr<float>();
  p.dresidual = ptr_or_null(dresidual);
  p.dx = dx.data_ptr();
  p.rows = rows;
  p.cols = cols;
  p.dy_row_stride = dy.stride(0);
  p.x_row_stride = x.stride(0);
  p.dresidual_row_stride = dresidual.defined() ? dresidual.stride(0) : 0;
  p.dx_row_stride = dx.stride(0);
  p.dtype = kernel_dtype(x);
  p.is_rms = is_rms;
  p.has_weight = weight.defined();
  p.has_bias = has_bias;
  p.has_dresidual = dresidual.defined();
  p.num_sms = ctx.num_sms();

  // fp32 partial sums of dweight/dbias, one row per block, reduced here in a fixed order.
  const int64_t num_partials = dlk::row_norm_bwd_num_partials(p);
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  at::Tensor dw_partial = p.has_weight ? new_buffer({num_partials, cols}, f32) : at::Tensor();
  at::Tensor db_partial = p.has_bias ? new_buffer({num_partials, cols}, f32) : at::Tensor();
  p.num_partials = num_partials;
  p.dweight_partial = ptr_or_null<float>(dw_partial);
  p.dbias_partial = ptr_or_null<float>(db_partial);
  dlk::row_norm_bwd(p, ctx.stream());

  at::Tensor dweight = p.has_weight ? dw_partial.sum(0).to(x.scalar_type()) : at::Tensor();
  at::Tensor dbias = p.has_bias ? db_partial.sum(0).to(x.scalar_type()) : at::Tensor();
  return {dx, dweight, dbias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& residual, double eps) {
  return row_norm_forward(x, weight, bias, residual, eps, /*is_rms=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x,
                                                            const OptTensor& weight,
                                                            const OptTensor& residual,
                                                            double eps) {
  auto [y, residual_out, mean, rstd] =
      row_norm_forward(x, weight, std::nullopt, residual, eps, /*is_rms=*/true);
  return {y, residual_out, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const at::Tensor& x, const OptTensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, const OptTensor& dresidual, bool has_bias) {
  TORCH_CHECK(mean.defined(), "mean must be a tensor, got None");
  return row_norm_backward(dy, x, weight, mean, rstd, dresidual, has_bias, /*is_rms=*/false);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                const OptTensor& weight, const at::Tensor& rstd,
                                                const OptTensor& dresidual) {
  auto [dx, dweight, dbias] =
      row_norm_backward(dy, x, weight, at::Tensor(), rstd, dresidual, false, /*is_rms=*/true);
  return {dx, dweight};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "dlkern CUDA C++ kernels; same launchers and signatures as dlkern.kernels (Triton).";

  m.def("layer_norm_fwd", &layer_norm_fwd,
        "LayerNorm over the last dim of x (M, N), fused residual add.\n"
        "s = x + residual (rounded to x.dtype) if residual is given, else x; y = (s - mean) * rstd"
        " * weight + bias.\nReturns (y (M, N), residual_out = s (M, N) or None, mean (M,) fp32,"
        " rstd (M,) fp32).",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("eps"));
  m.def("rms_norm_fwd", &rms_norm_fwd,
        "RMSNorm over the last dim of x (M, N), fused residual add.\n"
        "s = x + residual (rounded to x.dtype) if residual is given, else x; y = s * rstd * weight."
        "\nReturns (y (M, N), residual_out = s (M, N) or None, rstd (M,) fp32).",
        py::arg("x"), py::arg("weight"), py::arg("residual"), py::arg("eps"));
  m.def("layer_norm_bwd", &layer_norm_bwd,
        "LayerNorm backward. x is the saved s of the forward; dresidual, the gradient of"
        " residual_out, is added to dx.\nReturns (dx (M, N), dweight (N,) or None, dbias (N,) or"
        " None); dweight/dbias are deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("dresidual"), py::arg("has_bias"));
  m.def("rms_norm_bwd", &rms_norm_bwd,
        "RMSNorm backward. x is the saved s of the forward; dresidual is added to dx.\n"
        "Returns (dx (M, N), dweight (N,) or None); dweight is deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("rstd"), py::arg("dresidual"));
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
