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
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>

#include "norm/channel_norm.h"
#include "norm/row_norm.h"
#include "norm/weight_norm.h"
#include "scan/scan_inputs.h"
#include "scan/selective_scan.h"

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

// ---- BatchNorm / GroupNorm / InstanceNorm -----------------------------------------------------
// Every tensor is handed to the kernels as its (N, C, S) view, S = the flattened spatial dims.

// Strides of t's (N, C, S) view; false when its spatial dims do not merge into one stride.
bool ncs_strides(const at::Tensor& t, dlk::NcsStrides& st) {
  st = {t.stride(0), t.stride(1), 1};
  int64_t next = -1;  // the stride the next-outer spatial dim needs to merge
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) == 1) continue;
    if (next < 0) {
      st.s = t.stride(d);
    } else if (t.stride(d) != next) {
      return false;
    }
    next = t.stride(d) * t.size(d);
  }
  return true;
}

int64_t spatial_size(const at::Tensor& t) {
  int64_t s = 1;
  for (int64_t d = 2; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

// x or dy and its (N, C, S) strides: a contiguous copy when its spatial dims do not merge.
struct NcsView {
  at::Tensor t;
  dlk::NcsStrides st;
};

NcsView ncs_view(const at::Tensor& t) {
  NcsView v{t, {}};
  if (!ncs_strides(v.t, v.st)) {
    v.t = t.contiguous();
    ncs_strides(v.t, v.st);
  }
  return v;
}

// A new tensor like x (its dense layout kept, e.g. channels_last; NaN-filled in debug mode), or a
// contiguous one when that layout has no (N, C, S) view.
NcsView new_buffer_like(const at::Tensor& x) {
  NcsView v{at::empty_like(x), {}};
  if (!ncs_strides(v.t, v.st)) {
    v.t = at::empty(x.sizes(), x.options());
    ncs_strides(v.t, v.st);
  }
  if (g_debug_nan_fill.load()) v.t.fill_(std::numeric_limits<double>::quiet_NaN());
  return v;
}

// x: (N, C, *spatial), 2-D to 5-D, the tensor every other operand is checked against.
void check_ncs_x(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "x must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(x), "x must be ", kDeviceKind, ", got a tensor on ", x.device());
  TORCH_CHECK(x.dim() >= 2 && x.dim() <= 5, "x must be 2-D to 5-D (N, C, *spatial), got shape ",
              x.sizes());
  kernel_dtype(x);
}

// dy: x's shape, dtype and device; any strides.
void check_ncs_dy(const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK(dy.defined(), "dy must be a tensor, got None");
  check_like_x(dy, "dy", x);
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy must have x's shape ", x.sizes(), ", got ", dy.sizes());
}

// weight, bias: (C,) floating point of any dtype (fp32 parameters with fp16/bf16 x under AMP),
// handed to the kernels as fp32.
at::Tensor channel_param_f32(const OptTensor& t, const char* name, const at::Tensor& x) {
  if (!present(t)) return at::Tensor();
  TORCH_CHECK(t->device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t->device());
  TORCH_CHECK(t->is_floating_point(), name, " must be floating point, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), name, " must have shape (", x.size(1),
              ",), got ", t->sizes());
  return t->to(at::kFloat).contiguous();
}

// mean, rstd of the backward: `units` fp32 values (any shape holding them, e.g. (N, G)).
at::Tensor check_unit_stats(const at::Tensor& t, const char* name, const at::Tensor& x,
                            int64_t units) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.numel() == units, name, " must hold ", units, " values, got shape ", t.sizes());
  return t.reshape({units}).contiguous();
}

dlk::Activation parse_activation(const std::string& name) {
  if (name == "none") return dlk::Activation::None;
  if (name == "silu") return dlk::Activation::Silu;
  if (name == "gelu") return dlk::Activation::Gelu;
  if (name == "relu") return dlk::Activation::Relu;
  TORCH_CHECK(false, "activation must be one of 'none', 'silu', 'gelu', 'relu', got '", name, "'");
  return dlk::Activation::None;  // unreachable
}

void fill_nan(std::initializer_list<at::Tensor> ts) {
  for (const at::Tensor& t : ts) {
    if (t.defined()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

// Common forward: y = act((x - mean) * rstd * w + b); statistics computed unless given.
void channel_norm_forward(const NcsView& x, const NcsView& y, const at::Tensor& weight,
                          const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd,
                          const at::Tensor& var_unbiased, dlk::ChannelNormKind kind,
                          int64_t groups, dlk::Activation activation, bool compute_stats,
                          double eps, const LaunchContext& ctx) {
  dlk::ChannelNormFwdParams p{};
  p.x = x.t.data_ptr();
  p.weight = ptr_or_null<const float>(weight);
  p.bias = ptr_or_null<const float>(bias);
  p.y = y.t.data_ptr();
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.var_unbiased = ptr_or_null<float>(var_unbiased);
  p.N = x.t.size(0);
  p.C = x.t.size(1);
  p.S = spatial_size(x.t);
  p.x_stride = x.st;
  p.y_stride = y.st;
  p.groups = groups;
  p.kind = kind;
  p.activation = activation;
  p.compute_stats = compute_stats;
  p.eps = static_cast<float>(eps);
  p.dtype = kernel_dtype(x.t);
  p.num_sms = ctx.num_sms();
  // fp32 scratch: per-split partial statistics, merged in a fixed order by the kernels.
  const int64_t ws = dlk::channel_norm_fwd_workspace(p);
  at::Tensor workspace = ws > 0 ? new_buffer({ws}, x.t.options().dtype(at::kFloat)) : at::Tensor();
  p.workspace = ptr_or_null<float>(workspace);
  dlk::channel_norm_fwd(p, ctx.stream());
}

// Common backward: dx like x; dweight/dbias as fp32 (C,) when the tensors are defined.
void channel_norm_backward(const NcsView& dy, const NcsView& x, const NcsView& dx,
                           const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& mean, const at::Tensor& rstd,
                           const at::Tensor& dweight, const at::Tensor& dbias,
                           dlk::ChannelNormKind kind, int64_t groups, dlk::Activation activation,
                           bool has_c, const LaunchContext& ctx) {
  dlk::ChannelNormBwdParams p{};
  p.dy = dy.t.data_ptr();
  p.x = x.t.data_ptr();
  p.weight = ptr_or_null<const float>(weight);
  p.bias = ptr_or_null<const float>(bias);
  p.mean = mean.data_ptr<float>();
  p.rstd = rstd.data_ptr<float>();
  p.dx = dx.t.data_ptr();
  p.dweight = ptr_or_null<float>(dweight);
  p.dbias = ptr_or_null<float>(dbias);
  p.N = x.t.size(0);
  p.C = x.t.size(1);
  p.S = spatial_size(x.t);
  p.dy_stride = dy.st;
  p.x_stride = x.st;
  p.dx_stride = dx.st;
  p.groups = groups;
  p.kind = kind;
  p.activation = activation;
  p.has_c = has_c;
  p.dtype = kernel_dtype(x.t);
  p.num_sms = ctx.num_sms();
  // fp32 scratch: per-split partial sums and per-unit coefficients (fixed-order reductions).
  const int64_t ws = dlk::channel_norm_bwd_workspace(p);
  at::Tensor workspace = ws > 0 ? new_buffer({ws}, x.t.options().dtype(at::kFloat)) : at::Tensor();
  p.workspace = ptr_or_null<float>(workspace);
  dlk::channel_norm_bwd(p, ctx.stream());
}

// (y like x, mean (C,) fp32, rstd (C,) fp32, unbiased variance (C,) fp32 or an empty tensor)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd(
    const at::Tensor& x_in, const OptTensor& weight_in, const OptTensor& bias_in,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double eps) {
  check_ncs_x(x_in);
  const NcsView x = ncs_view(x_in);
  const at::Tensor weight = channel_param_f32(weight_in, "weight", x_in);
  const at::Tensor bias = channel_param_f32(bias_in, "bias", x_in);
  const int64_t C = x_in.size(1);
  const at::TensorOptions f32 = x_in.options().dtype(at::kFloat);

  LaunchContext ctx(x_in);
  const NcsView y = new_buffer_like(x_in);
  at::Tensor mean, rstd, var;
  if (training) {
    mean = new_buffer({C}, f32);
    rstd = new_buffer({C}, f32);
    var = new_buffer({C}, f32);
  } else {  // the running statistics, as fp32 copies (nothing is mutated)
    TORCH_CHECK(present(running_mean) && present(running_var),
                "running_mean and running_var must be given when training is False");
    mean = channel_param_f32(running_mean, "running_mean", x_in).clone();
    rstd = at::rsqrt(channel_param_f32(running_var, "running_var", x_in) + eps);
    var = at::empty({0}, f32);
  }
  if (x_in.numel() == 0) {  // nothing to launch; the statistics of empty channels are NaN
    if (training) fill_nan({mean, rstd, var});
    return {y.t, mean, rstd, var};
  }
  channel_norm_forward(x, y, weight, bias, mean, rstd, training ? var : at::Tensor(),
                       dlk::ChannelNormKind::Batch, 0, dlk::Activation::None, training, eps, ctx);
  return {y.t, mean, rstd, var};
}

// (dx like x, dweight (C,) in weight's dtype | undefined, dbias (C,) in x's dtype | undefined)
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd(
    const at::Tensor& dy_in, const at::Tensor& x_in, const OptTensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, bool training, bool has_bias) {
  check_ncs_x(x_in);
  check_ncs_dy(dy_in, x_in);
  const NcsView x = ncs_view(x_in);
  const NcsView dy = ncs_view(dy_in);
  const at::Tensor weight = channel_param_f32(weight_in, "weight", x_in);
  const int64_t C = x_in.size(1);
  const at::Tensor mean = check_unit_stats(mean_in, "mean", x_in, C);
  const at::Tensor rstd = check_unit_stats(rstd_in, "rstd", x_in, C);
  const at::TensorOptions f32 = x_in.options().dtype(at::kFloat);

  LaunchContext ctx(x_in);
  const NcsView dx = new_buffer_like(x_in);
  at::Tensor dweight = weight.defined() ? new_buffer({C}, f32) : at::Tensor();
  at::Tensor dbias = has_bias ? new_buffer({C}, f32) : at::Tensor();
  if (x_in.numel() == 0) {  // nothing to launch; dweight/dbias are empty sums
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
  } else {
    channel_norm_backward(dy, x, dx, weight, at::Tensor(), mean, rstd, dweight, dbias,
                          dlk::ChannelNormKind::Batch, 0, dlk::Activation::None, training, ctx);
  }
  return {dx.t, dweight.defined() ? dweight.to(weight_in->scalar_type()) : at::Tensor(),
          dbias.defined() ? dbias.to(x_in.scalar_type()) : at::Tensor()};
}

// (act(group_norm(x)) like x, mean (N, G) fp32, rstd (N, G) fp32)
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(
    const at::Tensor& x_in, int64_t num_groups, const OptTensor& weight_in,
    const OptTensor& bias_in, double eps, const std::string& activation) {
  check_ncs_x(x_in);
  const int64_t N = x_in.size(0), C = x_in.size(1);
  TORCH_CHECK(num_groups >= 1 && C % num_groups == 0,
              "num_groups must be a positive divisor of the channel count ", C, ", got ",
              num_groups);
  const dlk::Activation act = parse_activation(activation);
  const NcsView x = ncs_view(x_in);
  const at::Tensor weight = channel_param_f32(weight_in, "weight", x_in);
  const at::Tensor bias = channel_param_f32(bias_in, "bias", x_in);
  const at::TensorOptions f32 = x_in.options().dtype(at::kFloat);

  LaunchContext ctx(x_in);
  const NcsView y = new_buffer_like(x_in);
  at::Tensor mean = new_buffer({N, num_groups}, f32);
  at::Tensor rstd = new_buffer({N, num_groups}, f32);
  if (x_in.numel() == 0) {  // nothing to launch; the statistics of empty groups are NaN
    fill_nan({mean, rstd});
    return {y.t, mean, rstd};
  }
  channel_norm_forward(x, y, weight, bias, mean, rstd, at::Tensor(), dlk::ChannelNormKind::Group,
                       num_groups, act, /*compute_stats=*/true, eps, ctx);
  return {y.t, mean, rstd};
}

// (dx like x, dweight (C,) in weight's dtype | undefined, dbias (C,) in bias's dtype | undefined)
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd(
    const at::Tensor& dy_in, const at::Tensor& x_in, int64_t num_groups,
    const OptTensor& weight_in, const OptTensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const std::string& activation) {
  check_ncs_x(x_in);
  check_ncs_dy(dy_in, x_in);
  const int64_t N = x_in.size(0), C = x_in.size(1);
  TORCH_CHECK(num_groups >= 1 && C % num_groups == 0,
              "num_groups must be a positive divisor of the channel count ", C, ", got ",
              num_groups);
  const dlk::Activation act = parse_activation(activation);
  const NcsView x = ncs_view(x_in);
  const NcsView dy = ncs_view(dy_in);
  const at::Tensor weight = channel_param_f32(weight_in, "weight", x_in);
  const at::Tensor bias = channel_param_f32(bias_in, "bias", x_in);
  const at::Tensor mean = check_unit_stats(mean_in, "mean", x_in, N * num_groups);
  const at::Tensor rstd = check_unit_stats(rstd_in, "rstd", x_in, N * num_groups);
  const at::TensorOptions f32 = x_in.options().dtype(at::kFloat);

  LaunchContext ctx(x_in);
  const NcsView dx = new_buffer_like(x_in);
  at::Tensor dweight = weight.defined() ? new_buffer({C}, f32) : at::Tensor();
  at::Tensor dbias = bias.defined() ? new_buffer({C}, f32) : at::Tensor();
  if (x_in.numel() == 0) {  // nothing to launch; dweight/dbias are empty sums
    if (dweight.defined()) dweight.zero_();
    if (dbias.defined()) dbias.zero_();
  } else {
    channel_norm_backward(dy, x, dx, weight, bias, mean, rstd, dweight, dbias,
                          dlk::ChannelNormKind::Group, num_groups, act, /*has_c=*/true, ctx);
  }
  return {dx.t, dweight.defined() ? dweight.to(weight_in->scalar_type()) : at::Tensor(),
          dbias.defined() ? dbias.to(bias_in->scalar_type()) : at::Tensor()};
}

// ---- weight normalization ---------------------------------------------------------------------
// v2 (D, K) (made contiguous), g1 (D,) of any floating dtype (handed to the kernels as fp32).
at::Tensor check_weight_norm_v(const at::Tensor& v) {
  TORCH_CHECK(v.defined(), "v2 must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(v), "v2 must be ", kDeviceKind, ", got a tensor on ", v.device());
  TORCH_CHECK(v.dim() == 2, "v2 must be 2-D (D, K), got shape ", v.sizes());
  kernel_dtype(v);
  return v.contiguous();
}

at::Tensor check_weight_norm_g(const at::Tensor& g, const at::Tensor& v) {
  TORCH_CHECK(g.defined(), "g1 must be a tensor, got None");
  TORCH_CHECK(g.device() == v.device(), "g1 must be on v2's device ", v.device(), ", got ",
              g.device());
  TORCH_CHECK(g.is_floating_point(), "g1 must be floating point, got ", g.scalar_type());
  TORCH_CHECK(g.numel() == v.size(0), "g1 must hold D = ", v.size(0), " values, got shape ",
              g.sizes());
  return g.reshape({v.size(0)}).to(at::kFloat).contiguous();
}

// (w (D, K) in v's dtype, norm (D,) fp32)
std::tuple<at::Tensor, at::Tensor> weight_norm_fwd(const at::Tensor& v_in, const at::Tensor& g_in) {
  const at::Tensor v = check_weight_norm_v(v_in);
  const at::Tensor g = check_weight_norm_g(g_in, v);
  const int64_t D = v.size(0), K = v.size(1);

  LaunchContext ctx(v);
  at::Tensor w = new_buffer({D, K}, v.options());                       // (D, K)
  at::Tensor norm = new_buffer({D}, v.options().dtype(at::kFloat));     // (D,)
  dlk::WeightNormFwdParams p{};
  p.v = v.data_ptr();
  p.g = g.data_ptr<float>();
  p.w = w.data_ptr();
  p.norm = norm.data_ptr<float>();
  p.D = D;
  p.K = K;
  p.dtype = kernel_dtype(v);
  p.num_sms = ctx.num_sms();
  dlk::weight_norm_fwd(p, ctx.stream());
  return {w, norm};
}

// (dv (D, K) in v's dtype, dg (D,) in g's dtype)
std::tuple<at::Tensor, at::Tensor> weight_norm_bwd(const at::Tensor& dw_in, const at::Tensor& v_in,
                                                   const at::Tensor& g_in,
                                                   const at::Tensor& norm_in) {
  const at::Tensor v = check_weight_norm_v(v_in);
  const at::Tensor g = check_weight_norm_g(g_in, v);
  TORCH_CHECK(dw_in.defined(), "dw2 must be a tensor, got None");
  TORCH_CHECK(dw_in.device() == v.device(), "dw2 must be on v2's device ", v.device(), ", got ",
              dw_in.device());
  TORCH_CHECK(dw_in.scalar_type() == v.scalar_type(), "dw2 must have v2's dtype ",
              v.scalar_type(), ", got ", dw_in.scalar_type());
  TORCH_CHECK(dw_in.sizes() == v.sizes(), "dw2 must have v2's shape ", v.sizes(), ", got ",
              dw_in.sizes());
  const at::Tensor dw = dw_in.contiguous();
  const at::Tensor norm = check_unit_stats(norm_in, "norm", v, v.size(0));
  const int64_t D = v.size(0), K = v.size(1);

  LaunchContext ctx(v);
  at::Tensor dv = new_buffer({D, K}, v.options());                    // (D, K)
  at::Tensor dg = new_buffer({D}, v.options().dtype(at::kFloat));     // (D,)
  dlk::WeightNormBwdParams p{};
  p.dw = dw.data_ptr();
  p.v = v.data_ptr();
  p.g = g.data_ptr<float>();
  p.norm = norm.data_ptr<float>();
  p.dv = dv.data_ptr();
  p.dg = dg.data_ptr<float>();
  p.D = D;
  p.K = K;
  p.dtype = kernel_dtype(v);
  p.num_sms = ctx.num_sms();
  dlk::weight_norm_bwd(p, ctx.stream());
  return {dv, dg.to(g_in.scalar_type())};
}

// ---- selective scan ---------------------------------------------------------------------------
const dlk_scan::Layout kScanLayout{on_kernel_device, kDeviceKind, /*fp32_time_major=*/false};

// (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32)
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, kScanLayout);
  LaunchContext ctx(in.u);
  at::Tensor out = new_buffer({in.p.batch, in.p.dim, in.p.L}, in.u.options());
  at::Tensor states = new_buffer({in.p.batch, in.p.dim, in.n_chunks(), in.p.N}, in.u.options().dtype(at::kFloat));
  in.p.out = out.data_ptr();
  in.p.states = states.data_ptr<float>();
  in.p.num_sms = ctx.num_sms();
  dlk::selective_scan_fwd(in.p, ctx.stream());
  return {out, states};
}

// (du, ddelta, dz or empty: u's dtype; dA, dB, dC: fp32 in A's, B's, C's shapes; dD, ddelta_bias:
// fp32 (dim,) or empty)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast) {
  dlk_scan::ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, kScanLayout);
  in.check_backward(dout, states, dlast, kScanLayout);
  const dlk::SelectiveScanFwdParams& p = in.p;
  LaunchContext ctx(in.u);
  const at::Tensor dout_c = dout.to(in.u.scalar_type()).contiguous(), states_c = states.contiguous();
  const at::Tensor dlast_c = present(dlast) ? dlast->to(at::kFloat).contiguous() : at::Tensor();
  const auto io = in.u.options(), f32 = io.dtype(at::kFloat);
  at::Tensor du = new_buffer({p.batch, p.dim, p.L}, io);
  at::Tensor ddelta = new_buffer({p.batch, p.dim, p.L}, io);
  at::Tensor dz = in.z.defined() ? new_buffer({p.batch, p.dim, p.L}, io) : at::empty({0}, io);
  at::Tensor dA = new_buffer({p.batch, p.dim, p.N}, f32);
  // variable B/C: summed over a group's channels atomically, so zeroed; else per-row partials
  auto bc = [&](const at::Tensor& X, bool variable) {
    return variable ? at::zeros(X.sizes(), f32) : new_buffer({p.batch, p.dim, p.N}, f32);
  };
  at::Tensor dB = bc(in.B, p.variable_B), dC = bc(in.C, p.variable_C);
  at::Tensor dD = in.D.defined() ? new_buffer({p.batch, p.dim}, f32) : at::Tensor();
  at::Tensor dbias = in.delta_bias.defined() ? new_buffer({p.batch, p.dim}, f32) : at::Tensor();
  dlk::SelectiveScanBwdParams q{};
  q.fwd = p;
  q.fwd.states = states_c.data_ptr<float>();
  q.fwd.num_sms = ctx.num_sms();
  q.dout = dout_c.data_ptr();
  q.dlast = dlast_c.defined() ? dlast_c.data_ptr<float>() : nullptr;
  q.du = du.data_ptr();
  q.ddelta = ddelta.data_ptr();
  q.dz = in.z.defined() ? dz.data_ptr() : nullptr;
  q.dA = dA.data_ptr<float>();
  q.dB = dB.data_ptr<float>();
  q.dC = dC.data_ptr<float>();
  q.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
  q.ddelta_bias = dbias.defined() ? dbias.data_ptr<float>() : nullptr;
  q.n_dblocks = 1;
  if (p.batch > 0) {
    dlk::selective_scan_bwd(q, ctx.stream());
  } else {
    for (at::Tensor* t : {&dA, &dB, &dC, &dD, &dbias}) if (t->defined()) t->zero_();
  }
  auto finish = [&](const at::Tensor& t, bool variable) { return variable ? t : t.sum(0); };
  return {du, ddelta, dA.sum(0), finish(dB, p.variable_B), finish(dC, p.variable_C),
          dD.defined() ? dD.sum(0) : at::empty({0}, f32), dz,
          dbias.defined() ? dbias.sum(0) : at::empty({0}, f32)};
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
  m.def("batch_norm_fwd", &batch_norm_fwd,
        "BatchNorm forward over x (N, C, *spatial), any layout.\nTraining: batch statistics; else"
        " the running statistics (nothing is mutated).\nReturns (y like x, mean (C,) fp32, rstd"
        " (C,) fp32, unbiased batch variance (C,) fp32 if training else an empty fp32 tensor).",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
        py::arg("running_var"), py::arg("training"), py::arg("eps"));
  m.def("batch_norm_bwd", &batch_norm_bwd,
        "BatchNorm backward (dy may have any layout, e.g. expanded).\nReturns (dx like x, dweight"
        " (C,) in weight's dtype or None, dbias (C,) in x's dtype or None); deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("training"), py::arg("has_bias"));
  m.def("group_norm_fwd", &group_norm_fwd,
        "GroupNorm forward over x (N, C, *spatial), fused activation ('none', 'silu', 'gelu',"
        " 'relu').\nReturns (y like x, mean (N, G) fp32, rstd (N, G) fp32).",
        py::arg("x"), py::arg("num_groups"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("activation"));
  m.def("group_norm_bwd", &group_norm_bwd,
        "GroupNorm backward, the activation's gradient included.\nReturns (dx like x, dweight (C,)"
        " in weight's dtype or None, dbias (C,) in bias's dtype or None); deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("num_groups"), py::arg("weight"), py::arg("bias"),
        py::arg("mean"), py::arg("rstd"), py::arg("activation"));
  m.def("weight_norm_fwd", &weight_norm_fwd,
        "Weight normalization w = g * v / ||v|| over the rows of v2 (D, K).\nReturns (w (D, K) in"
        " v's dtype, norm (D,) fp32).",
        py::arg("v2"), py::arg("g1"));
  m.def("weight_norm_bwd", &weight_norm_bwd,
        "Weight normalization backward.\nReturns (dv (D, K) in v's dtype, dg (D,) in g's dtype).",
        py::arg("dw2"), py::arg("v2"), py::arg("g1"), py::arg("norm"));
  dlk_scan::def_selective_scan(m, &selective_scan_fwd, &selective_scan_bwd);
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
