// The torch binding of the LayerNorm / RMSNorm (row_norm.cu) and weight-normalization
// (weight_norm.cu) kernels: checks, output allocation and the params struct of each launcher
// (conventions: common/binding.h). The Python-visible definitions with their docs are in
// csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "norm/norm_binding.h"

#include <ATen/ops/zeros.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "norm/row_norm.h"
#include "norm/weight_norm.h"

namespace dlk_bind {

namespace {

// weight, bias: (cols,) on x's device, floating point of any dtype. The kernels read the
// parameters in x's dtype, so fp32 parameters with fp16/bf16 x (mixed precision) are rounded to
// it here: one rounding of each parameter, within the output's own rounding. dweight/dbias are
// summed in fp32 whatever the dtypes, and returned in the parameters' own dtypes.
at::Tensor check_vector(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(1), name, " must have shape (", x.size(1),
              ",), got ", t.sizes());
  return t.to(x.scalar_type()).contiguous();
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
    return {dx, weight.defined() ? at::zeros({cols}, weight_in->options()) : at::Tensor(),
            has_bias ? at::zeros({cols}, x.options().dtype(at::kFloat)) : at::Tensor()};
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

  // fp32 partial sums of dweight/dbias, one row per block; the launcher sums them in a fixed
  // order and writes dweight in the weight's dtype (fp32, cast here, for a dtype the kernels do
  // not store) and dbias in fp32 (the op casts it to bias's dtype).
  const int64_t num_partials = dlk::row_norm_bwd_num_partials(p);
  const at::TensorOptions f32 = x.options().dtype(at::kFloat);
  at::Tensor dw_partial = p.has_weight ? new_buffer({num_partials, cols}, f32) : at::Tensor();
  at::Tensor db_partial = p.has_bias ? new_buffer({num_partials, cols}, f32) : at::Tensor();
  const at::ScalarType dw_type = p.has_weight ? weight_in->scalar_type() : at::kFloat;
  const bool dw_direct =
      dw_type == at::kFloat || dw_type == at::kHalf || dw_type == at::kBFloat16;
  at::Tensor dweight = p.has_weight ? new_buffer({cols}, f32.dtype(dw_direct ? dw_type : at::kFloat))
                                    : at::Tensor();
  at::Tensor dbias = p.has_bias ? new_buffer({cols}, f32) : at::Tensor();
  p.num_partials = num_partials;
  p.dweight_partial = ptr_or_null<float>(dw_partial);
  p.dbias_partial = ptr_or_null<float>(db_partial);
  p.dweight = ptr_or_null(dweight);
  p.dbias = ptr_or_null<float>(dbias);
  p.dweight_dtype = dweight.defined() ? kernel_dtype(dweight) : dlk::DType::F32;
  at::Tensor coef = new_buffer({rows, 2}, f32);  // scratch of the uncached (long-row) kernel
  p.coef = coef.data_ptr<float>();
  dlk::row_norm_bwd(p, ctx.stream());
  if (p.has_weight && !dw_direct) dweight = dweight.to(dw_type);
  return {dx, dweight, dbias};
}

}  // namespace

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

// ---- weight normalization ---------------------------------------------------------------------

namespace {

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

}  // namespace

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

}  // namespace dlk_bind
