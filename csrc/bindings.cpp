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

#include <algorithm>
#include <cstdint>
#include <limits>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "conv/causal_conv1d.h"
#include "conv/depthwise_conv2d.h"
#include "conv/dilated_conv1d.h"
#include "conv/wavenet.h"
#include "flows/act_norm.h"
#include "flows/affine_coupling.h"
#include "flows/inv_conv1x1.h"
#include "norm/channel_norm.h"
#include "norm/row_norm.h"
#include "norm/weight_norm.h"
#include "optim/multi_tensor.h"
#include "common/debug_buffer.h"
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
  debug_nan_fill(v.t);
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

// ---- multi-tensor optimizers ------------------------------------------------------------------
// Lists of tensors, one launch each: the tables of pointers, sizes and chunks are packed on the
// host into one int64 buffer (pinned) and copied to the device with one asynchronous copy.
using TensorList = std::vector<at::Tensor>;
using OptTensorList = std::optional<TensorList>;
using NamedList = std::pair<const char*, const TensorList*>;    // nullptr: the list is absent
using NamedScalars = std::pair<const char*, const std::vector<double>*>;

// The tables of one launch and the tensor that holds them (kept alive until the launch is queued;
// the caching allocators keep its memory until the stream has used it).
struct PackedTable {
  at::Tensor storage;
  dlk::TensorTable table;
};

// Every list has params' length, every tensor is contiguous on params' device with its param's
// size, and each list has one dtype. Returns the lists' dtypes (F32 for absent ones).
std::vector<dlk::DType> check_lists(const std::vector<NamedList>& lists) {
  const TensorList& params = *lists.front().second;
  std::vector<dlk::DType> dtypes;
  for (const auto& [name, list] : lists) {
    if (list == nullptr) {
      dtypes.push_back(dlk::DType::F32);
      continue;
    }
    TORCH_CHECK(list->size() == params.size(), name, " must hold ", params.size(),
                " tensors (one per param), got ", list->size());
    for (size_t i = 0; i < list->size(); ++i) {
      const at::Tensor& t = (*list)[i];
      TORCH_CHECK(t.defined(), name, "[", i, "] must be a tensor, got None");
      TORCH_CHECK(on_kernel_device(t), name, "[", i, "] must be ", kDeviceKind, ", got a tensor on ",
                  t.device());
      TORCH_CHECK(t.device() == params[0].device(), name, "[", i, "] must be on ",
                  params[0].device(), ", got ", t.device());
      TORCH_CHECK(t.scalar_type() == (*list)[0].scalar_type(), name, "[", i, "] must have ", name,
                  "[0]'s dtype ", (*list)[0].scalar_type(), ", got ", t.scalar_type());
      TORCH_CHECK(t.is_contiguous(), name, "[", i, "] must be contiguous");
      TORCH_CHECK(t.numel() == params[i].numel(), name, "[", i, "] must have ", params[i].numel(),
                  " elements like its param, got ", t.numel());
    }
    const at::ScalarType st = (*list)[0].scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
                " must be float32, float16 or bfloat16, got ", st);
    dtypes.push_back(st == at::kFloat ? dlk::DType::F32
                                      : st == at::kHalf ? dlk::DType::F16 : dlk::DType::BF16);
  }
  return dtypes;
}

// lists in the kernel's row order (params first), per-tensor scalars in the kernel's order.
PackedTable pack_table(const std::vector<NamedList>& lists, const std::vector<NamedScalars>& scalars) {
  const TensorList& params = *lists.front().second;
  const int64_t T = int64_t(params.size()), L = int64_t(lists.size()), K = int64_t(scalars.size());
  for (const auto& [name, values] : scalars) {
    TORCH_CHECK(int64_t(values->size()) == T, name, " must hold ", T, " values (one per param), got ",
                values->size());
  }
  int64_t C = 0, max_size = 0;
  for (const at::Tensor& p : params) {
    C += (p.numel() + dlk::kOptimChunk - 1) / dlk::kOptimChunk;
    max_size = std::max(max_size, p.numel());
  }
  // int64 layout: addresses (L, T) | sizes (T) | chunk_tensor (C) | chunk_start (C) | fp32 (K, T)
  const int64_t float_offset = L * T + T + 2 * C;
  const bool to_device = !params[0].is_cpu();
  at::Tensor host = at::empty({float_offset + (K * T + 1) / 2},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(to_device));
  int64_t* h = host.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t t = 0; t < T; ++t) {
      h[l * T + t] = lists[l].second == nullptr
                         ? 0
                         : reinterpret_cast<int64_t>((*lists[l].second)[t].data_ptr());
    }
  }
  int64_t* sizes = h + L * T;
  int64_t* chunk_tensor = sizes + T;
  int64_t* chunk_start = chunk_tensor + C;
  for (int64_t t = 0, c = 0; t < T; ++t) {
    sizes[t] = params[t].numel();
    for (int64_t start = 0; start < sizes[t]; start += dlk::kOptimChunk, ++c) {
      chunk_tensor[c] = t;
      chunk_start[c] = start;
    }
  }
  float* f = reinterpret_cast<float*>(h + float_offset);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t t = 0; t < T; ++t) f[k * T + t] = static_cast<float>((*scalars[k].second)[t]);
  }
  PackedTable packed{to_device ? host.to(params[0].device(), /*non_blocking=*/true) : host, {}};
  const int64_t* d = packed.storage.data_ptr<int64_t>();
  packed.table = {d, d + L * T, d + L * T + T, d + L * T + T + C,
                  reinterpret_cast<const float*>(d + float_offset), T, C, max_size};
  return packed;
}

// A list that must be given exactly when `needed` (e.g. max_exp_avg_sqs when amsgrad).
const TensorList* optional_list(const OptTensorList& list, bool needed, const char* name,
                                const char* when) {
  TORCH_CHECK(!needed || list.has_value(), name, " must be a list of tensors when ", when,
              ", got None");
  return needed ? &*list : nullptr;
}

void check_same_dtype(const std::vector<dlk::DType>& dtypes, const std::vector<NamedList>& lists,
                      size_t first, size_t other) {
  if (lists[other].second == nullptr) return;
  TORCH_CHECK(dtypes[other] == dtypes[first], lists[other].first, " must have ",
              lists[first].first, "' dtype ", (*lists[first].second)[0].scalar_type(), ", got ",
              (*lists[other].second)[0].scalar_type());
}

// The dtype of lists that all share the params' dtype (SGD, Adagrad, RMSprop, AdaBound).
dlk::DType one_dtype(const std::vector<NamedList>& lists) {
  const std::vector<dlk::DType> dtypes = check_lists(lists);
  for (size_t l = 1; l < lists.size(); ++l) check_same_dtype(dtypes, lists, 0, l);
  return dtypes[0];
}

void multi_tensor_adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                       const TensorList& exp_avg_sqs, const OptTensorList& max_exp_avg_sqs,
                       const OptTensorList& master_params, const std::vector<double>& step_sizes,
                       const std::vector<double>& bc2_sqrts, double beta1, double beta2, double eps,
                       double weight_decay, double lr, bool decoupled, bool amsgrad,
                       bool maximize) {
  if (params.empty()) return;
  const bool has_master = master_params.has_value();
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"exp_avgs", &exp_avgs},
      {"exp_avg_sqs", &exp_avg_sqs},
      {"max_exp_avg_sqs", optional_list(max_exp_avg_sqs, amsgrad, "max_exp_avg_sqs", "amsgrad")},
      {"master_params", has_master ? &*master_params : nullptr}};
  const std::vector<dlk::DType> dtypes = check_lists(lists);
  check_same_dtype(dtypes, lists, dlk::kAdamParam, dlk::kAdamGrad);
  check_same_dtype(dtypes, lists, dlk::kAdamExpAvg, dlk::kAdamExpAvgSq);
  check_same_dtype(dtypes, lists, dlk::kAdamExpAvg, dlk::kAdamMaxExpAvgSq);
  TORCH_CHECK(dtypes[dlk::kAdamExpAvg] == dtypes[dlk::kAdamParam] ||
                  dtypes[dlk::kAdamExpAvg] == dlk::DType::F32,
              "exp_avgs must have the params' dtype or float32, got ", exp_avgs[0].scalar_type());
  TORCH_CHECK(!has_master || (dtypes[dlk::kAdamMaster] == dlk::DType::F32 &&
                              dtypes[dlk::kAdamExpAvg] == dlk::DType::F32),
              "master_params and the states must be float32 with master weights");
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {{"step_sizes", &step_sizes}, {"bc2_sqrts", &bc2_sqrts}});
  dlk::AdamParams p{};
  p.table = packed.table;
  p.beta1 = float(beta1);
  p.beta2 = float(beta2);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.decay_factor = float(1.0 - lr * weight_decay);
  p.param_dtype = dtypes[dlk::kAdamParam];
  p.state_dtype = dtypes[dlk::kAdamExpAvg];
  p.decoupled = decoupled;
  p.amsgrad = amsgrad;
  p.maximize = maximize;
  p.has_master = has_master;
  dlk::multi_tensor_adam(p, ctx.stream());
}

void multi_tensor_sgd(const TensorList& params, const TensorList& grads,
                      const OptTensorList& momentum_buffers, double lr, double momentum,
                      double dampening, double weight_decay, bool nesterov, bool maximize,
                      bool first) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads},
      {"momentum_buffers",
       optional_list(momentum_buffers, momentum != 0, "momentum_buffers", "momentum != 0")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {});
  dlk::SgdParams p{};
  p.table = packed.table;
  p.lr = float(lr);
  p.momentum = float(momentum);
  p.dampening = float(dampening);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.nesterov = nesterov;
  p.maximize = maximize;
  p.first = first;
  dlk::multi_tensor_sgd(p, ctx.stream());
}

void multi_tensor_adagrad(const TensorList& params, const TensorList& grads,
                          const TensorList& state_sums, const std::vector<double>& clrs, double eps,
                          double weight_decay, bool maximize) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"state_sums", &state_sums}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {{"clrs", &clrs}});
  dlk::AdagradParams p{};
  p.table = packed.table;
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.maximize = maximize;
  dlk::multi_tensor_adagrad(p, ctx.stream());
}

void multi_tensor_rmsprop(const TensorList& params, const TensorList& grads,
                          const TensorList& square_avgs, const OptTensorList& grad_avgs,
                          const OptTensorList& momentum_buffers, double lr, double alpha,
                          double eps, double weight_decay, double momentum, bool centered,
                          bool maximize) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"square_avgs", &square_avgs},
      {"grad_avgs", optional_list(grad_avgs, centered, "grad_avgs", "centered")},
      {"momentum_buffers",
       optional_list(momentum_buffers, momentum > 0, "momentum_buffers", "momentum > 0")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {});
  dlk::RmspropParams p{};
  p.table = packed.table;
  p.lr = float(lr);
  p.alpha = float(alpha);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.momentum = float(momentum);
  p.dtype = dtype;
  p.centered = centered;
  p.maximize = maximize;
  dlk::multi_tensor_rmsprop(p, ctx.stream());
}

void multi_tensor_adabound(const TensorList& params, const TensorList& grads,
                           const TensorList& exp_avgs, const TensorList& exp_avg_sqs,
                           const OptTensorList& max_exp_avg_sqs,
                           const std::vector<double>& step_sizes, const std::vector<double>& lowers,
                           const std::vector<double>& uppers, double beta1, double beta2, double eps,
                           double weight_decay, bool amsbound) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"exp_avgs", &exp_avgs},
      {"exp_avg_sqs", &exp_avg_sqs},
      {"max_exp_avg_sqs", optional_list(max_exp_avg_sqs, amsbound, "max_exp_avg_sqs", "amsbound")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(
      lists, {{"step_sizes", &step_sizes}, {"lowers", &lowers}, {"uppers", &uppers}});
  dlk::AdaBoundParams p{};
  p.table = packed.table;
  p.beta1 = float(beta1);
  p.beta2 = float(beta2);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.amsbound = amsbound;
  dlk::multi_tensor_adabound(p, ctx.stream());
}

// ---- normalizing flows ------------------------------------------------------------------------
dlk::CouplingScale coupling_scale(const std::string& scale) {
  if (scale == "exp") return dlk::CouplingScale::kExp;
  if (scale == "sigmoid") return dlk::CouplingScale::kSigmoid;
  TORCH_CHECK(scale == "softclamp", "scale must be 'exp', 'sigmoid' or 'softclamp', got '", scale, "'");
  return dlk::CouplingScale::kSoftclamp;
}

// h2 (B, 2N) like x2 (B, N), unit column stride (copied otherwise).
at::Tensor check_coupling_h(const at::Tensor& h, const at::Tensor& x) {
  TORCH_CHECK(h.defined(), "h2 must be a tensor, got None");
  check_like_x(h, "h2", x);
  TORCH_CHECK(h.dim() == 2 && h.size(0) == x.size(0) && h.size(1) == 2 * x.size(1),
              "h2 must have shape (", x.size(0), ", ", 2 * x.size(1), "), got ", h.sizes());
  return with_unit_col_stride(h);
}

dlk::AffineCouplingArgs coupling_args(const at::Tensor& x, const at::Tensor& h, bool reverse,
                                      const std::string& scale, double clamp, const LaunchContext& ctx) {
  dlk::AffineCouplingArgs a{};
  a.B = x.size(0);
  a.N = x.size(1);
  a.stride_xb = x.stride(0);
  a.stride_hb = h.stride(0);
  a.scale = coupling_scale(scale);
  a.clamp = float(clamp);
  a.reverse = reverse;
  a.dtype = kernel_dtype(x);
  a.num_sms = ctx.num_sms();
  return a;
}

// (y (B, N) in x's dtype, logdet (B,) fp32)
std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd(const at::Tensor& x_in, const at::Tensor& h_in,
                                                       bool reverse, const std::string& scale,
                                                       double clamp) {
  const at::Tensor x = check_x(x_in);
  const at::Tensor h = check_coupling_h(h_in, x);
  const int64_t B = x.size(0), N = x.size(1);
  const int64_t chunks = (N + dlk::kAffineCouplingChunk - 1) / dlk::kAffineCouplingChunk;

  LaunchContext ctx(x);
  at::Tensor y = new_buffer({B, N}, x.options());                                   // (B, N)
  at::Tensor partial = new_buffer({B, chunks}, x.options().dtype(at::kFloat));      // (B, chunks)
  dlk::AffineCouplingFwdParams p{};
  p.x = x.data_ptr();
  p.h = h.data_ptr();
  p.y = y.data_ptr();
  p.partial = partial.data_ptr<float>();
  p.a = coupling_args(x, h, reverse, scale, clamp, ctx);
  dlk::affine_coupling_fwd(p, ctx.stream());
  return {y, partial.sum(1)};  // fixed-order sum of the per-chunk partials
}

// (dx (B, N) in x's dtype, dh (B, 2N) in h's dtype)
std::tuple<at::Tensor, at::Tensor> affine_coupling_bwd(const at::Tensor& dy_in, const at::Tensor& dlogdet_in,
                                                       const at::Tensor& x_in, const at::Tensor& h_in,
                                                       bool reverse, const std::string& scale,
                                                       double clamp) {
  const at::Tensor x = check_x(x_in);
  const at::Tensor h = check_coupling_h(h_in, x);
  const at::Tensor dy = check_matrix(dy_in, "dy2", x);
  TORCH_CHECK(dlogdet_in.defined() && dlogdet_in.device() == x.device() && dlogdet_in.numel() == x.size(0),
              "dlogdet must be a tensor of ", x.size(0), " values on x2's device");
  const at::Tensor dlogdet = dlogdet_in.reshape({x.size(0)}).to(at::kFloat).contiguous();
  const int64_t B = x.size(0), N = x.size(1);

  LaunchContext ctx(x);
  at::Tensor dx = new_buffer({B, N}, x.options());       // (B, N)
  at::Tensor dh = new_buffer({B, 2 * N}, x.options());   // (B, 2N)
  dlk::AffineCouplingBwdParams p{};
  p.dy = dy.data_ptr();
  p.dlogdet = dlogdet.data_ptr<float>();
  p.x = x.data_ptr();
  p.h = h.data_ptr();
  p.dx = dx.data_ptr();
  p.dh = dh.data_ptr();
  p.stride_dyb = dy.stride(0);
  p.a = coupling_args(x, h, reverse, scale, clamp, ctx);
  dlk::affine_coupling_bwd(p, ctx.stream());
  return {dx, dh};
}

// x3, dy3: (B, C, S) with unit stride along S (copied otherwise, e.g. an expanded gradient).
at::Tensor check_bcs(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(t), name, " must be ", kDeviceKind, ", got a tensor on ", t.device());
  TORCH_CHECK(t.dim() == 3, name, " must be 3-D (B, C, S), got shape ", t.sizes());
  kernel_dtype(t);
  return t.size(2) <= 1 || t.stride(2) == 1 ? t : t.contiguous();
}

at::Tensor check_bcs_like(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  check_like_x(t, name, x);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x3's shape ", x.sizes(), ", got ", t.sizes());
  return check_bcs(t, name);
}

dlk::BcsOperand bcs_operand(const at::Tensor& t) { return {t.data_ptr(), t.stride(0), t.stride(1)}; }

// Per-channel (C,) parameters handed to the kernels as fp32.
at::Tensor check_channel_vector(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.defined() && t.device() == x.device() && t.is_floating_point(), name,
              " must be a floating-point tensor on x3's device");
  TORCH_CHECK(t.numel() == x.size(1), name, " must hold C = ", x.size(1), " values, got shape ", t.sizes());
  return t.reshape({x.size(1)}).to(at::kFloat).contiguous();
}

// y = x3 · m[c] + k[c] (B, C, S) in x's dtype
at::Tensor act_norm_fwd(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& k_in) {
  const at::Tensor x = check_bcs(x_in, "x3");
  const at::Tensor m = check_channel_vector(m_in, "m", x);
  const at::Tensor k = check_channel_vector(k_in, "k", x);
  LaunchContext ctx(x);
  at::Tensor y = new_buffer({x.size(0), x.size(1), x.size(2)}, x.options());  // (B, C, S)
  dlk::ActNormFwdParams p{};
  p.x = bcs_operand(x);
  p.m = m.data_ptr<float>();
  p.k = k.data_ptr<float>();
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.C = x.size(1);
  p.S = x.size(2);
  p.dtype = kernel_dtype(x);
  dlk::act_norm_fwd(p, ctx.stream());
  return y;
}

// (dx (B, C, S) in x's dtype, Σ dy (C,) fp32, Σ dy · x (C,) fp32)
std::tuple<at::Tensor, at::Tensor, at::Tensor> act_norm_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                            const at::Tensor& m_in) {
  const at::Tensor x = check_bcs(x_in, "x3");
  const at::Tensor dy = check_bcs_like(dy_in, "dy3", x);
  const at::Tensor m = check_channel_vector(m_in, "m", x);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  const int64_t programs = dlk::act_norm_programs(B * S);
  LaunchContext ctx(x);
  at::Tensor dx = new_buffer({B, C, S}, x.options());
  at::Tensor partial = new_buffer({2, programs, C}, x.options().dtype(at::kFloat));  // (2, P, C)
  if (B * S == 0) partial.zero_();
  dlk::ActNormBwdParams p{};
  p.dy = bcs_operand(dy);
  p.x = bcs_operand(x);
  p.m = m.data_ptr<float>();
  p.dx = dx.data_ptr();
  p.partial = partial.data_ptr<float>();
  p.B = B;
  p.C = C;
  p.S = S;
  p.dtype = kernel_dtype(x);
  dlk::act_norm_bwd(p, ctx.stream());
  return {dx, partial[0].sum(0), partial[1].sum(0)};  // fixed-order sums over the programs
}

// w (C, C) as fp32, C <= 128.
at::Tensor check_inv_conv_w(const at::Tensor& w, const at::Tensor& x) {
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= dlk::kInvConvMaxChannels,
              "x3 must have 1 to 128 channels, got shape ", x.sizes());
  TORCH_CHECK(w.defined() && w.device() == x.device() && w.is_floating_point(),
              "w must be a floating-point tensor on x3's device");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) == x.size(1), "w must have shape (",
              x.size(1), ", ", x.size(1), "), got ", w.sizes());
  return w.to(at::kFloat).contiguous();
}

at::Tensor inv_conv_matmul(const at::Tensor& x, const at::Tensor& w) {
  LaunchContext ctx(x);
  at::Tensor y = new_buffer({x.size(0), x.size(1), x.size(2)}, x.options());  // (B, C, S)
  dlk::InvConvMatmulParams p{};
  p.x = bcs_operand(x);
  p.w = w.data_ptr<float>();
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.C = x.size(1);
  p.S = x.size(2);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::inv_conv1x1_matmul(p, ctx.stream());
  return y;
}

// y[b, :, s] = w @ x3[b, :, s]: (B, C, S) in x's dtype
at::Tensor inv_conv1x1_fwd(const at::Tensor& x_in, const at::Tensor& w_in) {
  const at::Tensor x = check_bcs(x_in, "x3");
  return inv_conv_matmul(x, check_inv_conv_w(w_in, x));
}

// (dx = wᵀ dy (B, C, S) in x's dtype, dw = Σ dy xᵀ (C, C) fp32)
std::tuple<at::Tensor, at::Tensor> inv_conv1x1_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                   const at::Tensor& w_in) {
  const at::Tensor x = check_bcs(x_in, "x3");
  const at::Tensor dy = check_bcs_like(dy_in, "dy3", x);
  const at::Tensor w = check_inv_conv_w(w_in, x);
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2);
  at::Tensor dx = inv_conv_matmul(dy, w.t().contiguous());
  LaunchContext ctx(x);
  at::Tensor partial = new_buffer({dlk::inv_conv1x1_dw_programs(B * S), C, C}, x.options().dtype(at::kFloat));
  if (B * S == 0) partial.zero_();
  dlk::InvConvDwParams p{};
  p.dy = bcs_operand(dy);
  p.x = bcs_operand(x);
  p.partial = partial.data_ptr<float>();
  p.B = B;
  p.C = C;
  p.S = S;
  p.dtype = kernel_dtype(x);
  dlk::inv_conv1x1_dw(p, ctx.stream());
  return {dx, partial.sum(0)};  // fixed-order sum of the per-block partials
}

// ---- convolutions -----------------------------------------------------------------------------
// Kernels take element strides, so inputs are never copied; outputs keep the input's dense layout.

// A new tensor with t's sizes and (dense) layout, NaN-filled in debug mode.
at::Tensor new_buffer_same_layout(const at::Tensor& t) { return debug_nan_fill(at::empty_like(t)); }

template <size_t N>
void copy_strides(const at::Tensor& t, int64_t (&s)[N]) {
  for (size_t i = 0; i < N; ++i) s[i] = t.stride(int64_t(i));
}

// The input every other operand is checked against: `dims`-D, on the kernel device, a kernel dtype.
void check_conv_x(const at::Tensor& x, const char* name, int64_t dims, const char* shape) {
  TORCH_CHECK(x.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(x), name, " must be ", kDeviceKind, ", got a tensor on ", x.device());
  TORCH_CHECK(x.dim() == dims, name, " must have shape ", shape, ", got ", x.sizes());
  kernel_dtype(x);
}

// An operand of exactly `sizes` with x's device and dtype, any strides.
void check_conv_operand(const at::Tensor& t, const char* name, const at::Tensor& x,
                        at::IntArrayRef sizes) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  check_like_x(t, name, x);
  TORCH_CHECK(t.sizes() == sizes, name, " must have shape ", sizes, ", got ", t.sizes());
}

// bias (C,) like x, or undefined.
at::Tensor conv_bias(const OptTensor& bias, const at::Tensor& x, int64_t channels) {
  if (!present(bias)) return at::Tensor();
  check_conv_operand(*bias, "bias", x, {channels});
  return bias->contiguous();
}

// weight (D, W) like x, 1 <= W <= 8, made contiguous.
at::Tensor causal_conv1d_weight(const at::Tensor& weight, const at::Tensor& x, int64_t D) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2 && weight.size(0) == D &&
                  weight.size(1) >= 1 && weight.size(1) <= dlk::kCausalConvMaxWidth,
              "weight must have shape (D, W) = (", D, ", W) with 1 <= W <= 8, got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  check_like_x(weight, "weight", x);
  return weight.contiguous();
}

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                             const OptTensor& bias_in, bool silu) {
  check_conv_x(x, "x", 3, "(B, D, L)");
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  LaunchContext ctx(x);
  at::Tensor y = new_buffer_same_layout(x);  // (B, D, L)
  dlk::CausalConv1dFwdParams p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.D = x.size(1);
  p.L = x.size(2);
  p.width = int(weight.size(1));
  copy_strides(x, p.x_stride);
  copy_strides(y, p.y_stride);
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_fwd(p, ctx.stream());
  return y;
}

// (dx like x, dweight (D, W) in weight's dtype, dbias (D,) in bias's dtype or None)
std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_conv1d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in,
    const OptTensor& bias_in, bool silu) {
  check_conv_x(x, "x", 3, "(B, D, L)");
  check_conv_operand(dy, "dy", x, x.sizes());
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  const int64_t D = x.size(1);
  LaunchContext ctx(x);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = new_buffer_same_layout(x);                            // (B, D, L)
  at::Tensor dweight = new_buffer({D, weight.size(1)}, f32);           // (D, W)
  at::Tensor dbias = bias.defined() ? new_buffer({D}, f32) : at::Tensor();  // (D,)
  dlk::CausalConv1dBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.dx = dx.data_ptr();
  p.dweight = dweight.data_ptr<float>();
  p.dbias = ptr_or_null<float>(dbias);
  p.B = x.size(0);
  p.D = D;
  p.L = x.size(2);
  p.width = int(weight.size(1));
  copy_strides(dy, p.dy_stride);
  copy_strides(x, p.x_stride);
  copy_strides(dx, p.dx_stride);
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_bwd(p, ctx.stream());
  return {dx, dweight.to(weight.scalar_type()),
          bias.defined() ? dbias.to(bias.scalar_type()) : at::Tensor()};
}

// y (B, D); conv_state (B, D, W - 1) is updated in place (never copied).
at::Tensor causal_conv1d_update(const at::Tensor& x, const at::Tensor& conv_state,
                                const at::Tensor& weight_in, const OptTensor& bias_in, bool silu) {
  check_conv_x(x, "x", 2, "(B, D)");
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  check_conv_operand(conv_state, "conv_state", x, {x.size(0), x.size(1), weight.size(1) - 1});
  LaunchContext ctx(x);
  at::Tensor y = new_buffer({x.size(0), x.size(1)}, x.options());  // (B, D)
  dlk::CausalConv1dUpdateParams p{};
  p.x = x.data_ptr();
  p.state = conv_state.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.D = x.size(1);
  p.width = int(weight.size(1));
  copy_strides(x, p.x_stride);
  copy_strides(conv_state, p.state_stride);
  copy_strides(y, p.y_stride);
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_update(p, ctx.stream());
  return y;
}

// depthwise conv2d
// A new (N, C, h, w) tensor like x: channels_last when x has unit channel stride (C > 1), else
// contiguous (the rule the Triton launchers and the fake kernels follow too).
at::Tensor new_image_buffer(const at::Tensor& x, int64_t h, int64_t w) {
  const int64_t N = x.size(0), C = x.size(1);
  const bool cl = x.stride(1) == 1 && C > 1;
  return debug_nan_fill(cl ? at::empty({N, h, w, C}, x.options()).permute({0, 3, 1, 2})
                          : at::empty({N, C, h, w}, x.options()));
}

void int_pair(const std::vector<int64_t>& v, const char* name, int64_t minimum, int (&out)[2]) {
  TORCH_CHECK(v.size() == 2 && v[0] >= minimum && v[1] >= minimum &&
                  v[0] <= std::numeric_limits<int>::max() && v[1] <= std::numeric_limits<int>::max(),
              name, " must be two ints >= ", minimum, ", got ", at::IntArrayRef(v));
  out[0] = int(v[0]);
  out[1] = int(v[1]);
}

// weight (C, KH, KW) like x, made contiguous; fills the geometry but the output size.
at::Tensor depthwise_geometry(const at::Tensor& x, const at::Tensor& weight,
                              const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation, dlk::DepthwiseConv2dGeometry& g) {
  check_conv_x(x, "x", 4, "(N, C, H, W)");
  TORCH_CHECK(weight.defined() && weight.dim() == 3 && weight.size(0) == x.size(1) &&
                  weight.size(1) >= 1 && weight.size(1) <= 31 && weight.size(2) >= 1 && weight.size(2) <= 31,
              "weight must have shape (C, KH, KW) = (", x.size(1), ", KH, KW) with 1 <= KH, KW <= 31, got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  check_like_x(weight, "weight", x);
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.KH = int(weight.size(1));
  g.KW = int(weight.size(2));
  int_pair(stride, "stride", 1, g.stride);
  int_pair(padding, "padding", 0, g.pad);
  int_pair(dilation, "dilation", 1, g.dilation);
  return weight.contiguous();
}

at::Tensor depthwise_conv2d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                                const OptTensor& bias_in, const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation,
                                const std::vector<int64_t>& out_hw) {
  dlk::DepthwiseConv2dFwdParams p{};
  const at::Tensor weight = depthwise_geometry(x, weight_in, stride, padding, dilation, p.g);
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  TORCH_CHECK(out_hw.size() == 2 && out_hw[0] >= 0 && out_hw[1] >= 0,
              "out_hw must be two sizes >= 0, got ", at::IntArrayRef(out_hw));
  p.g.OH = out_hw[0];
  p.g.OW = out_hw[1];
  LaunchContext ctx(x);
  at::Tensor y = new_image_buffer(x, p.g.OH, p.g.OW);  // (N, C, OH, OW)
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.y = y.data_ptr();
  copy_strides(x, p.x_stride);
  copy_strides(y, p.y_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::depthwise_conv2d_fwd(p, ctx.stream());
  return y;
}

// (dx like x, dweight (C, KH, KW) in weight's dtype, dbias (C,) in x's dtype or None)
std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in, bool has_bias,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation) {
  dlk::DepthwiseConv2dBwdParams p{};
  const at::Tensor weight = depthwise_geometry(x, weight_in, stride, padding, dilation, p.g);
  TORCH_CHECK(dy.defined() && dy.dim() == 4 && dy.size(0) == x.size(0) && dy.size(1) == x.size(1),
              "dy must have shape (N, C, OH, OW) with x's N and C, got ",
              dy.defined() ? dy.sizes() : at::IntArrayRef{});
  check_like_x(dy, "dy", x);
  p.g.OH = dy.size(2);
  p.g.OW = dy.size(3);
  const int64_t C = x.size(1);
  LaunchContext ctx(x);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = new_image_buffer(x, x.size(2), x.size(3));                  // (N, C, H, W)
  at::Tensor dweight = new_buffer({C, weight.size(1), weight.size(2)}, f32);  // (C, KH, KW)
  at::Tensor dbias = has_bias ? new_buffer({C}, f32) : at::Tensor();          // (C,)
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.dx = dx.data_ptr();
  p.dweight = dweight.data_ptr<float>();
  p.dbias = ptr_or_null<float>(dbias);
  copy_strides(dy, p.dy_stride);
  copy_strides(x, p.x_stride);
  copy_strides(dx, p.dx_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::depthwise_conv2d_bwd(p, ctx.stream());
  return {dx, dweight.to(weight.scalar_type()), has_bias ? dbias.to(x.scalar_type()) : at::Tensor()};
}

// dilated conv1d: weight (Cout, Cin, K) like x, made contiguous.
at::Tensor dilated_conv1d_weight(const at::Tensor& weight, const at::Tensor& x, int64_t dilation,
                                 int64_t left) {
  TORCH_CHECK(weight.defined() && weight.dim() == 3 && weight.size(1) == x.size(1) && weight.size(2) >= 1,
              "weight must have shape (Cout, Cin, K) = (Cout, ", x.size(1), ", K), got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  check_like_x(weight, "weight", x);
  TORCH_CHECK(dilation >= 1 && dilation <= std::numeric_limits<int>::max(),
              "dilation must be an int >= 1, got ", dilation);
  TORCH_CHECK(left >= 0 && left <= (weight.size(2) - 1) * dilation,
              "left must be in [0, (K - 1) * dilation], got ", left);
  return weight.contiguous();
}

at::Tensor dilated_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                              const OptTensor& bias_in, int64_t dilation, int64_t left) {
  check_conv_x(x, "x", 3, "(B, Cin, L)");
  const at::Tensor weight = dilated_conv1d_weight(weight_in, x, dilation, left);
  const int64_t Cout = weight.size(0);
  const at::Tensor bias = conv_bias(bias_in, x, Cout);
  LaunchContext ctx(x);
  at::Tensor y = new_buffer({x.size(0), Cout, x.size(2)}, x.options());  // (B, Cout, L)
  dlk::DilatedConv1dFwdParams p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.Cin = x.size(1);
  p.Cout = Cout;
  p.L = x.size(2);
  p.K = int(weight.size(2));
  p.dilation = int(dilation);
  p.left = int(left);
  copy_strides(x, p.x_stride);
  copy_strides(y, p.y_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::dilated_conv1d_fwd(p, ctx.stream());
  return y;
}

// (dx (B, Cin, L), dweight (Cout, Cin, K) in weight's dtype, dbias (Cout,) in x's dtype or None)
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv1d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in, bool has_bias,
    int64_t dilation, int64_t left) {
  check_conv_x(x, "x", 3, "(B, Cin, L)");
  const at::Tensor weight = dilated_conv1d_weight(weight_in, x, dilation, left);
  const int64_t Cout = weight.size(0);
  check_conv_operand(dy, "dy", x, {x.size(0), Cout, x.size(2)});
  LaunchContext ctx(x);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = new_buffer(x.sizes(), x.options());                       // (B, Cin, L)
  at::Tensor dweight = new_buffer(weight.sizes(), f32);                     // (Cout, Cin, K)
  at::Tensor dbias = has_bias ? new_buffer({Cout}, f32) : at::Tensor();     // (Cout,)
  dlk::DilatedConv1dBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.dx = dx.data_ptr();
  p.dweight = dweight.data_ptr<float>();
  p.dbias = ptr_or_null<float>(dbias);
  p.B = x.size(0);
  p.Cin = x.size(1);
  p.Cout = Cout;
  p.L = x.size(2);
  p.K = int(weight.size(2));
  p.dilation = int(dilation);
  p.left = int(left);
  copy_strides(dy, p.dy_stride);
  copy_strides(x, p.x_stride);
  copy_strides(dx, p.dx_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::dilated_conv1d_bwd(p, ctx.stream());
  return {dx, dweight.to(weight.scalar_type()), has_bias ? dbias.to(x.scalar_type()) : at::Tensor()};
}

// WaveNet layer
// sum_b dy (B, O, L) @ z (B, C, L)^T: the dilated conv1d weight gradient with K = 1 (no dx).
std::tuple<at::Tensor, at::Tensor> wavenet_projection_grad(const at::Tensor& dy, const at::Tensor& z,
                                                           const at::Tensor& w, bool has_bias,
                                                           const LaunchContext& ctx) {
  const auto f32 = z.options().dtype(at::kFloat);
  const int64_t O = w.size(0), C = w.size(1);
  at::Tensor dw = new_buffer({O, C}, f32);                              // (O, C)
  at::Tensor db = has_bias ? new_buffer({O}, f32) : at::Tensor();       // (O,)
  dlk::DilatedConv1dBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = z.data_ptr();
  p.weight = w.data_ptr();
  p.dweight = dw.data_ptr<float>();
  p.dbias = ptr_or_null<float>(db);
  p.B = z.size(0);
  p.Cin = C;
  p.Cout = O;
  p.L = z.size(2);
  p.K = 1;
  p.dilation = 1;
  p.left = 0;
  copy_strides(dy, p.dy_stride);
  copy_strides(z, p.x_stride);
  p.dtype = kernel_dtype(z);
  p.num_sms = ctx.num_sms();
  dlk::dilated_conv1d_bwd(p, ctx.stream());
  return {dw.to(w.scalar_type()), has_bias ? db.to(w.scalar_type()) : at::Tensor()};
}

// weights of the layer: w_dil (2C, C, K), w_res (C, C), w_skip (S, C), like x, made contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> wavenet_weights(const at::Tensor& x,
                                                               const at::Tensor& w_dil,
                                                               const at::Tensor& w_res,
                                                               const at::Tensor& w_skip) {
  check_conv_x(x, "x", 3, "(B, C, L)");
  const int64_t C = x.size(1);
  TORCH_CHECK(C <= dlk::kWavenetMaxChannels, "x must have at most ", dlk::kWavenetMaxChannels,
              " channels, got ", C);
  TORCH_CHECK(w_dil.defined() && w_dil.dim() == 3 && w_dil.size(0) == 2 * C && w_dil.size(1) == C,
              "w_dil must have shape (2C, C, K) = (", 2 * C, ", ", C, ", K), got ",
              w_dil.defined() ? w_dil.sizes() : at::IntArrayRef{});
  check_like_x(w_dil, "w_dil", x);
  check_conv_operand(w_res, "w_res", x, {C, C});
  TORCH_CHECK(w_skip.defined() && w_skip.dim() == 2 && w_skip.size(1) == C,
              "w_skip must have shape (S, C) = (S, ", C, "), got ",
              w_skip.defined() ? w_skip.sizes() : at::IntArrayRef{});
  check_like_x(w_skip, "w_skip", x);
  return {w_dil.contiguous(), w_res.contiguous(), w_skip.contiguous()};
}

// (out (B, C, L), skip (B, S, L), h (B, 2C, L))
std::tuple<at::Tensor, at::Tensor, at::Tensor> wavenet_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_dil_in, const OptTensor& b_dil_in,
    const OptTensor& cond, const at::Tensor& w_res_in, const OptTensor& b_res_in,
    const at::Tensor& w_skip_in, const OptTensor& b_skip_in, int64_t dilation) {
  const auto [w_dil, w_res, w_skip] = wavenet_weights(x, w_dil_in, w_res_in, w_skip_in);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2), S = w_skip.size(0);
  TORCH_CHECK(dilation >= 1 && dilation <= std::numeric_limits<int>::max(),
              "dilation must be an int >= 1, got ", dilation);
  const at::Tensor b_dil = conv_bias(b_dil_in, x, 2 * C);
  const at::Tensor b_res = conv_bias(b_res_in, x, C);
  const at::Tensor b_skip = conv_bias(b_skip_in, x, S);
  if (present(cond)) check_conv_operand(*cond, "cond", x, {B, 2 * C, L});
  LaunchContext ctx(x);
  at::Tensor out = new_buffer({B, C, L}, x.options());      // (B, C, L)
  at::Tensor skip = new_buffer({B, S, L}, x.options());     // (B, S, L)
  at::Tensor h = new_buffer({B, 2 * C, L}, x.options());    // (B, 2C, L)
  dlk::WavenetFwdParams p{};
  p.x = x.data_ptr();
  p.w_dil = w_dil.data_ptr();
  p.b_dil = ptr_or_null<const void>(b_dil);
  p.cond = present(cond) ? cond->data_ptr() : nullptr;
  p.w_res = w_res.data_ptr();
  p.b_res = ptr_or_null<const void>(b_res);
  p.w_skip = w_skip.data_ptr();
  p.b_skip = ptr_or_null<const void>(b_skip);
  p.out = out.data_ptr();
  p.skip = skip.data_ptr();
  p.h = h.data_ptr();
  p.B = B;
  p.C = C;
  p.S = S;
  p.L = L;
  p.K = int(w_dil.size(2));
  p.dilation = int(dilation);
  copy_strides(x, p.x_stride);
  if (present(cond)) copy_strides(*cond, p.cond_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::wavenet_layer_fwd(p, ctx.stream());
  return {out, skip, h};
}

// (dx, dw_dil, db_dil | None, dh (= dcond), dw_res, db_res | None, dw_skip, db_skip | None)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
wavenet_layer_bwd(const at::Tensor& dout, const at::Tensor& dskip, const at::Tensor& x,
                  const at::Tensor& h, const at::Tensor& w_dil_in, const at::Tensor& w_res_in,
                  const at::Tensor& w_skip_in, bool has_b_dil, bool has_b_res, bool has_b_skip,
                  int64_t dilation) {
  const auto [w_dil, w_res, w_skip] = wavenet_weights(x, w_dil_in, w_res_in, w_skip_in);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2), S = w_skip.size(0);
  check_conv_operand(dout, "dout", x, {B, C, L});
  check_conv_operand(dskip, "dskip", x, {B, S, L});
  check_conv_operand(h, "h", x, {B, 2 * C, L});
  const at::Tensor hc = h.contiguous();
  LaunchContext ctx(x);
  at::Tensor dh = new_buffer({B, 2 * C, L}, x.options());   // (B, 2C, L)
  at::Tensor z = new_buffer({B, C, L}, x.options());        // (B, C, L)
  dlk::WavenetGateBwdParams p{};
  p.dout = dout.data_ptr();
  p.dskip = dskip.data_ptr();
  p.h = hc.data_ptr();
  p.w_res = w_res.data_ptr();
  p.w_skip = w_skip.data_ptr();
  p.dh = dh.data_ptr();
  p.z = z.data_ptr();
  p.B = B;
  p.C = C;
  p.S = S;
  p.L = L;
  copy_strides(dout, p.dout_stride);
  copy_strides(dskip, p.dskip_stride);
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::wavenet_gate_bwd(p, ctx.stream());
  auto [dx, dw_dil, db_dil] =
      dilated_conv1d_bwd(dh, x, w_dil, has_b_dil, dilation, (w_dil.size(2) - 1) * dilation);
  dx.add_(dout);  // the residual connection
  auto [dw_res, db_res] = wavenet_projection_grad(dout, z, w_res, has_b_res, ctx);
  auto [dw_skip, db_skip] = wavenet_projection_grad(dskip, z, w_skip, has_b_skip, ctx);
  return {dx, dw_dil, db_dil, dh, dw_res, db_res, dw_skip, db_skip};
}

// ---- attention --------------------------------------------------------------------------------
// q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); do like o. Any strides; copied only without unit stride
// along D (an expanded gradient has stride 0 there).
at::Tensor check_attention_operand(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(on_kernel_device(t), name, " must be ", kDeviceKind, ", got a tensor on ", t.device());
  TORCH_CHECK(t.device() == q.device(), name, " must be on q's device ", q.device(), ", got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", q.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B, H, L, D), got shape ", t.sizes());
  return t.size(3) <= 1 || t.stride(3) == 1 ? t : t.contiguous();
}

dlk::AttentionStrides seq_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// The checked inputs of attention_fwd / attention_bwd, with the params fields they define.
struct AttentionInputs {
  at::Tensor q, k, v, bias, scale;
  dlk::AttentionShape shape;
  dlk::AttentionMask mask;
};

AttentionInputs check_attention_inputs(const at::Tensor& q_in, const at::Tensor& k_in,
                                       const at::Tensor& v_in, const OptTensor& bias_in,
                                       const at::Tensor& scale_in, double dropout_p, int64_t seed,
                                       bool is_causal, bool bottom_right) {
  AttentionInputs in;
  TORCH_CHECK(q_in.defined(), "q must be a tensor, got None");
  in.q = check_attention_operand(q_in, "q", q_in);
  in.k = check_attention_operand(k_in, "k", q_in);
  in.v = check_attention_operand(v_in, "v", q_in);
  const int64_t B = in.q.size(0), Hq = in.q.size(1), Lq = in.q.size(2), D = in.q.size(3);
  const int64_t Hkv = in.k.size(1), Lk = in.k.size(2);
  TORCH_CHECK(in.k.size(0) == B && in.k.size(3) == D, "k must have shape (B=", B, ", Hkv, Lk, D=",
              D, "), got ", in.k.sizes());
  TORCH_CHECK(in.v.sizes() == in.k.sizes(), "v must have k's shape ", in.k.sizes(), ", got ",
              in.v.sizes());
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "k's head count Hkv=", Hkv,
              " must divide q's head count Hq=", Hq);
  TORCH_CHECK(D >= 1 && D <= 256, "q's head dimension D must be in [1, 256], got ", D);
  TORCH_CHECK(Lk >= 1, "k must hold at least one key (Lk >= 1), got shape ", in.k.sizes());
  TORCH_CHECK(B <= 65535 && Hq <= 65535 && Lq < (int64_t(1) << 31) && Lk < (int64_t(1) << 31),
              "q must have B, Hq <= 65535 and Lq, Lk < 2^31, got q ", in.q.sizes(), ", k ",
              in.k.sizes());
  in.shape = {int(B), int(Hq), int(Hkv), int(Lq), int(Lk), int(D)};

  in.mask = dlk::AttentionMask{};
  if (present(bias_in)) {
    const at::Tensor& bias = *bias_in;
    TORCH_CHECK(bias.device() == q_in.device(), "bias must be on q's device ", q_in.device(),
                ", got ", bias.device());
    TORCH_CHECK(bias.scalar_type() == at::kFloat || bias.scalar_type() == q_in.scalar_type(),
                "bias must be float32 or q's dtype ", q_in.scalar_type(), ", got ",
                bias.scalar_type());
    TORCH_CHECK(bias.sizes() == at::IntArrayRef({B, Hq, Lq, Lk}), "bias must have shape (B, Hq, "
                "Lq, Lk) = (", B, ", ", Hq, ", ", Lq, ", ", Lk, ") (expand broadcast dims), got ",
                bias.sizes());
    in.bias = bias;  // read through its strides (0 on expanded dims): never materialized
    in.mask.bias = bias.data_ptr();
    for (int d = 0; d < 4; ++d) in.mask.bias_strides[d] = bias.stride(d);
    in.mask.bias_is_f32 = bias.scalar_type() == at::kFloat;
  }
  TORCH_CHECK(scale_in.defined(), "scale must be a tensor, got None");
  TORCH_CHECK(scale_in.device() == q_in.device() && scale_in.scalar_type() == at::kFloat &&
                  scale_in.sizes() == at::IntArrayRef({Hq}),
              "scale must be a float32 tensor of shape (Hq,) = (", Hq, ",) on q's device, got ",
              scale_in.scalar_type(), " ", scale_in.sizes(), " on ", scale_in.device());
  in.scale = scale_in.contiguous();
  in.mask.scale = in.scale.data_ptr<float>();
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ", dropout_p);
  TORCH_CHECK(seed >= 0, "seed must be in [0, 2^63), got ", seed);
  in.mask.dropout_p = float(dropout_p);
  in.mask.seed = uint64_t(seed);
  in.mask.is_causal = is_causal;
  in.mask.bottom_right = bottom_right;
  return in;
}

// The fields AttentionFwdParams and AttentionBwdParams share.
template <typename Params>
void fill_attention_inputs(Params& p, const AttentionInputs& in) {
  p.q = in.q.data_ptr();
  p.k = in.k.data_ptr();
  p.v = in.v.data_ptr();
  p.q_strides = seq_strides(in.q);
  p.k_strides = seq_strides(in.k);
  p.v_strides = seq_strides(in.v);
  p.shape = in.shape;
  p.mask = in.mask;
  p.dtype = kernel_dtype(in.q);
}

// (o (B, Hq, Lq, D) in q's dtype, lse (B, Hq, Lq) float32), both contiguous.
std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const OptTensor& bias,
                                                 const at::Tensor& scale, double dropout_p,
                                                 int64_t seed, bool is_causal, bool bottom_right) {
  const AttentionInputs in = check_attention_inputs(q_in, k_in, v_in, bias, scale, dropout_p, seed,
                                                    is_causal, bottom_right);
  const dlk::AttentionShape& s = in.shape;
  LaunchContext ctx(in.q);
  at::Tensor o = new_buffer({s.B, s.Hq, s.Lq, s.D}, in.q.options());            // (B, Hq, Lq, D)
  at::Tensor lse = new_buffer({s.B, s.Hq, s.Lq}, in.q.options().dtype(at::kFloat));  // (B, Hq, Lq)
  if (o.numel() == 0) return {o, lse};
  dlk::AttentionFwdParams p{};
  fill_attention_inputs(p, in);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  dlk::attention_fwd(p, ctx.stream());
  return {o, lse};
}

// (dq, dk, dv in q's dtype, contiguous; dscores (B, Hq, Lq, Lk) float32 when bias_grad, else None)
std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor> attention_bwd(
    const at::Tensor& do_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& o_in, const at::Tensor& lse_in, const OptTensor& bias,
    const at::Tensor& scale, double dropout_p, int64_t seed, bool is_causal, bool bottom_right,
    bool bias_grad) {
  const AttentionInputs in = check_attention_inputs(q_in, k_in, v_in, bias, scale, dropout_p, seed,
                                                    is_causal, bottom_right);
  const dlk::AttentionShape& s = in.shape;
  const at::Tensor dout = check_attention_operand(do_in, "do", q_in);
  TORCH_CHECK(dout.sizes() == in.q.sizes(), "do must have q's shape ", in.q.sizes(), ", got ",
              dout.sizes());
  const at::Tensor o = check_attention_operand(o_in, "o", q_in).contiguous();
  TORCH_CHECK(o.sizes() == in.q.sizes(), "o must have q's shape ", in.q.sizes(), ", got ",
              o.sizes());
  TORCH_CHECK(lse_in.defined() && lse_in.device() == q_in.device() &&
                  lse_in.scalar_type() == at::kFloat &&
                  lse_in.sizes() == at::IntArrayRef({s.B, s.Hq, s.Lq}),
              "lse must be the forward's float32 (B, Hq, Lq) = (", s.B, ", ", s.Hq, ", ", s.Lq,
              ") tensor on q's device");
  const at::Tensor lse = lse_in.contiguous();

  LaunchContext ctx(in.q);
  const at::TensorOptions f32 = in.q.options().dtype(at::kFloat);
  at::Tensor dq = new_buffer({s.B, s.Hq, s.Lq, s.D}, in.q.options());   // (B, Hq, Lq, D)
  at::Tensor dk = new_buffer({s.B, s.Hkv, s.Lk, s.D}, in.q.options());  // (B, Hkv, Lk, D)
  at::Tensor dv = new_buffer({s.B, s.Hkv, s.Lk, s.D}, in.q.options());  // (B, Hkv, Lk, D)
  OptTensor dscores;
  if (bias_grad) dscores = new_buffer({s.B, s.Hq, s.Lq, s.Lk}, f32);   // (B, Hq, Lq, Lk)
  if (dq.numel() == 0) {  // no queries: nothing flows to k and v
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv, dscores};
  }
  at::Tensor delta = new_buffer({s.B, s.Hq, s.Lq}, f32);                // (B, Hq, Lq) workspace
  dlk::AttentionBwdParams p{};
  fill_attention_inputs(p, in);
  p.dout = dout.data_ptr();
  p.dout_strides = seq_strides(dout);
  p.o = o.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dscores = bias_grad ? dscores->data_ptr<float>() : nullptr;
  p.delta = delta.data_ptr<float>();
  dlk::attention_bwd(p, ctx.stream());
  return {dq, dk, dv, dscores};
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
  m.def("multi_tensor_adam", &multi_tensor_adam,
        "One Adam/AdamW step over same-dtype lists, in place, one launch. step_sizes/bc2_sqrts per"
        " tensor: lr / (1 - beta1^step), sqrt(1 - beta2^step). master_params: fp32 copies that are"
        " read and written, the params receive their rounding (states float32); else None.",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("master_params"), py::arg("step_sizes"),
        py::arg("bc2_sqrts"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("lr"), py::arg("decoupled"), py::arg("amsgrad"),
        py::arg("maximize"));
  m.def("multi_tensor_sgd", &multi_tensor_sgd,
        "One SGD step over same-dtype lists, in place, one launch. first: the buffers are set to"
        " the (decayed) gradient, as torch does on a buffer's first step.",
        py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"),
        py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("first"));
  m.def("multi_tensor_adagrad", &multi_tensor_adagrad,
        "One Adagrad step over same-dtype lists, in place, one launch; clrs per tensor.",
        py::arg("params"), py::arg("grads"), py::arg("state_sums"), py::arg("clrs"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("maximize"));
  m.def("multi_tensor_rmsprop", &multi_tensor_rmsprop,
        "One RMSprop step over same-dtype lists, in place, one launch (grad_avgs when centered,"
        " momentum_buffers when momentum > 0; else None).",
        py::arg("params"), py::arg("grads"), py::arg("square_avgs"), py::arg("grad_avgs"),
        py::arg("momentum_buffers"), py::arg("lr"), py::arg("alpha"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("momentum"), py::arg("centered"), py::arg("maximize"));
  m.def("multi_tensor_adabound", &multi_tensor_adabound,
        "One AdaBound step over same-dtype lists, in place, one launch; step sizes and bounds per"
        " tensor.",
        py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("step_sizes"), py::arg("lowers"), py::arg("uppers"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("amsbound"));
  m.def("affine_coupling_fwd", &affine_coupling_fwd,
        "Affine coupling over rows x2 (B, N), h2 (B, 2N) = (log-scale half, shift half).\n"
        "y = x * s + t (reverse: (x - t) / s), s from scale 'exp' | 'sigmoid' | 'softclamp'.\n"
        "Returns (y (B, N), logdet (B,) fp32 = +-sum log s).",
        py::arg("x2"), py::arg("h2"), py::arg("reverse"), py::arg("scale"), py::arg("clamp"));
  m.def("affine_coupling_bwd", &affine_coupling_bwd,
        "Affine coupling backward (x2 is the op's input).\nReturns (dx (B, N), dh (B, 2N)).",
        py::arg("dy2"), py::arg("dlogdet"), py::arg("x2"), py::arg("h2"), py::arg("reverse"),
        py::arg("scale"), py::arg("clamp"));
  m.def("act_norm_fwd", &act_norm_fwd,
        "ActNorm's per-channel map y = x3 * m[c] + k[c] over x3 (B, C, S).\nReturns y (B, C, S).",
        py::arg("x3"), py::arg("m"), py::arg("k"));
  m.def("act_norm_bwd", &act_norm_bwd,
        "ActNorm backward.\nReturns (dx = dy * m[c] (B, C, S), sum dy (C,) fp32, sum dy * x (C,)"
        " fp32); deterministic.",
        py::arg("dy3"), py::arg("x3"), py::arg("m"));
  m.def("inv_conv1x1_fwd", &inv_conv1x1_fwd,
        "Per-pixel channel matmul y[b, :, s] = w @ x3[b, :, s], x3 (B, C, S), C <= 128.\n"
        "Returns y (B, C, S).",
        py::arg("x3"), py::arg("w"));
  m.def("inv_conv1x1_bwd", &inv_conv1x1_bwd,
        "Channel matmul backward.\nReturns (dx = w^T dy (B, C, S), dw = sum dy x^T (C, C) fp32);"
        " deterministic.",
        py::arg("dy3"), py::arg("x3"), py::arg("w"));
  m.def("causal_conv1d_fwd", &causal_conv1d_fwd,
        "Causal depthwise conv1d of x (B, D, L) (any strides) with weight (D, W), W <= 8, bias (D,)"
        " or None, SiLU fused when silu.\nReturns y (B, D, L) in x's layout.",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("silu"));
  m.def("causal_conv1d_bwd", &causal_conv1d_bwd,
        "Causal depthwise conv1d backward.\nReturns (dx like x, dweight (D, W), dbias (D,) or None);"
        " dweight/dbias are deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("silu"));
  m.def("causal_conv1d_update", &causal_conv1d_update,
        "One decode step: x (B, D), conv_state (B, D, W - 1) updated in place.\nReturns y (B, D).",
        py::arg("x"), py::arg("conv_state"), py::arg("weight"), py::arg("bias"), py::arg("silu"));
  m.def("depthwise_conv2d_fwd", &depthwise_conv2d_fwd,
        "Depthwise conv2d of x (N, C, H, W) (any strides) with weight (C, KH, KW), bias (C,) or"
        " None; stride, padding (top, left), dilation and out_hw (OH, OW) are pairs.\nReturns y"
        " (N, C, OH, OW), channels_last when x has unit channel stride.",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("out_hw"));
  m.def("depthwise_conv2d_bwd", &depthwise_conv2d_bwd,
        "Depthwise conv2d backward.\nReturns (dx like x, dweight (C, KH, KW), dbias (C,) or None);"
        " dweight/dbias are deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("has_bias"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"));
  m.def("dilated_conv1d_fwd", &dilated_conv1d_fwd,
        "Dilated conv1d of x (B, Cin, L) (any strides) with weight (Cout, Cin, K), bias (Cout,) or"
        " None; output l sees x[l - left + k * dilation].\nReturns y (B, Cout, L).",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("dilation"), py::arg("left"));
  m.def("dilated_conv1d_bwd", &dilated_conv1d_bwd,
        "Dilated conv1d backward.\nReturns (dx (B, Cin, L), dweight (Cout, Cin, K), dbias (Cout,) or"
        " None); dweight/dbias are deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("has_bias"), py::arg("dilation"),
        py::arg("left"));
  m.def("wavenet_layer_fwd", &wavenet_layer_fwd,
        "Fused WaveNet layer: h = causal dilated conv(x; w_dil (2C, C, K)) + b_dil (+ cond),"
        " z = tanh(h_a) * sigmoid(h_b), out = x + w_res @ z + b_res, skip = w_skip @ z + b_skip.\n"
        "Returns (out (B, C, L), skip (B, S, L), h (B, 2C, L)).",
        py::arg("x"), py::arg("w_dil"), py::arg("b_dil"), py::arg("cond"), py::arg("w_res"),
        py::arg("b_res"), py::arg("w_skip"), py::arg("b_skip"), py::arg("dilation"));
  m.def("wavenet_layer_bwd", &wavenet_layer_bwd,
        "WaveNet layer backward.\nReturns (dx, dw_dil, db_dil or None, dh (= dcond), dw_res, db_res"
        " or None, dw_skip, db_skip or None); deterministic.",
        py::arg("dout"), py::arg("dskip"), py::arg("x"), py::arg("h"), py::arg("w_dil"),
        py::arg("w_res"), py::arg("w_skip"), py::arg("has_b_dil"), py::arg("has_b_res"),
        py::arg("has_b_skip"), py::arg("dilation"));
  m.def("attention_fwd", &attention_fwd,
        "Fused attention forward (FlashAttention-2).\nReturns (o (B, Hq, Lq, D) in q's dtype, lse "
        "(B, Hq, Lq) float32).",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::arg("is_causal"), py::arg("bottom_right"));
  m.def("attention_bwd", &attention_bwd,
        "Fused attention backward.\nReturns (dq, dk, dv in q's dtype, dscores (B, Hq, Lq, Lk) "
        "float32 or None).",
        py::arg("do"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"),
        py::arg("bias"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"),
        py::arg("is_causal"), py::arg("bottom_right"), py::arg("bias_grad"));
  dlk_scan::def_selective_scan(m, &selective_scan_fwd, &selective_scan_bwd);
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
