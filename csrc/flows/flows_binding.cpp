// The torch binding of the normalizing-flow kernels (affine_coupling.cu, act_norm.cu,
// inv_conv1x1.cu): checks, output allocation and the params struct of each launcher (conventions:
// common/binding.h). The Python-visible definitions with their docs are in csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "flows/flows_binding.h"

#include <cstdint>
#include <string>
#include <tuple>

#include "flows/act_norm.h"
#include "flows/affine_coupling.h"
#include "flows/bcs.h"
#include "flows/inv_conv1x1.h"

namespace dlk_bind {

// ---- normalizing flows ------------------------------------------------------------------------

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace dlk_bind
