// The torch binding of the BatchNorm / GroupNorm / InstanceNorm kernels (channel_norm_fwd.cu,
// channel_norm_bwd.cu): checks, output allocation and the params struct of each launcher
// (conventions: common/binding.h). The Python-visible definitions with their docs are in
// csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "norm/norm_binding.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/rsqrt.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <tuple>

#include "norm/channel_norm.h"

namespace dlk_bind {

// ---- BatchNorm / GroupNorm / InstanceNorm -----------------------------------------------------

namespace {

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

}  // namespace

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
    rstd = at::rsqrt(channel_param_f32(running_var, "running_var", x_in).add(eps));
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

}  // namespace dlk_bind
