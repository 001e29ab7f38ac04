// The torch binding of the convolution kernels (causal_conv1d.cu, depthwise_conv2d.cu,
// dilated_conv1d.cu, wavenet.cu): checks, output allocation and the params struct of each launcher
// (conventions: common/binding.h). The Python-visible definitions with their docs are in
// csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "conv/conv_binding.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "conv/causal_conv1d.h"
#include "conv/depthwise_conv2d.h"
#include "conv/dilated_conv1d.h"
#include "conv/wavenet.h"

namespace dlk_bind {

// ---- convolutions -----------------------------------------------------------------------------

namespace {

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

}  // namespace

namespace {

// seq_idx, cache_seqlens, conv_state_indices: int32 of `sizes` on x's device, any strides; or None.
const int32_t* int32_or_null(const OptTensor& t, const char* name, const at::Tensor& x,
                             at::IntArrayRef sizes) {
  if (!present(t)) return nullptr;
  TORCH_CHECK(t->device() == x.device(), name, " must be on x's device ", x.device(), ", got ",
              t->device());
  TORCH_CHECK(t->scalar_type() == at::kInt, name, " must be int32, got ", t->scalar_type());
  TORCH_CHECK(t->sizes() == sizes, name, " must have shape ", sizes, ", got ", t->sizes());
  return t->data_ptr<int32_t>();
}

// initial_states (B, D, W - 1) like x, any strides; or undefined.
at::Tensor initial_states_or_undefined(const OptTensor& t, const at::Tensor& x, int64_t width) {
  if (!present(t)) return at::Tensor();
  check_conv_operand(*t, "initial_states", x, {x.size(0), x.size(1), width - 1});
  return *t;
}

template <size_t N>
void strides_or_zero(const OptTensor& t, int64_t (&s)[N]) {
  for (size_t i = 0; i < N; ++i) s[i] = present(t) ? t->stride(int64_t(i)) : 0;
}

}  // namespace

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                             const OptTensor& bias_in, bool silu, const OptTensor& seq_idx,
                             const OptTensor& initial_states_in) {
  check_conv_x(x, "x", 3, "(B, D, L)");
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  const at::Tensor init = initial_states_or_undefined(initial_states_in, x, weight.size(1));
  LaunchContext ctx(x);
  at::Tensor y = new_buffer_same_layout(x);  // (B, D, L)
  dlk::CausalConv1dFwdParams p{};
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.initial_states = ptr_or_null<const void>(init);
  p.seq_idx = int32_or_null(seq_idx, "seq_idx", x, {x.size(0), x.size(2)});
  p.y = y.data_ptr();
  p.B = x.size(0);
  p.D = x.size(1);
  p.L = x.size(2);
  p.width = int(weight.size(1));
  copy_strides(x, p.x_stride);
  copy_strides(y, p.y_stride);
  strides_or_zero(initial_states_in, p.init_stride);
  strides_or_zero(seq_idx, p.seq_stride);
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_fwd(p, ctx.stream());
  return y;
}

// (dx like x, dweight (D, W) in weight's dtype, dbias (D,) in bias's dtype or None,
//  dinitial_states (B, D, W - 1) or None)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in,
    const OptTensor& bias_in, bool silu, const OptTensor& seq_idx,
    const OptTensor& initial_states_in) {
  check_conv_x(x, "x", 3, "(B, D, L)");
  check_conv_operand(dy, "dy", x, x.sizes());
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  const at::Tensor init = initial_states_or_undefined(initial_states_in, x, weight.size(1));
  const int64_t D = x.size(1);
  LaunchContext ctx(x);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = new_buffer_same_layout(x);                            // (B, D, L)
  at::Tensor dweight = new_buffer({D, weight.size(1)}, f32);           // (D, W)
  at::Tensor dbias = bias.defined() ? new_buffer({D}, f32) : at::Tensor();  // (D,)
  at::Tensor dinit = init.defined() ? new_buffer(init.sizes(), x.options()) : at::Tensor();
  dlk::CausalConv1dBwdParams p{};
  p.dy = dy.data_ptr();
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.initial_states = ptr_or_null<const void>(init);
  p.seq_idx = int32_or_null(seq_idx, "seq_idx", x, {x.size(0), x.size(2)});
  p.dx = dx.data_ptr();
  p.dweight = dweight.data_ptr<float>();
  p.dbias = ptr_or_null<float>(dbias);
  p.dinitial_states = ptr_or_null<void>(dinit);
  p.B = x.size(0);
  p.D = D;
  p.L = x.size(2);
  p.width = int(weight.size(1));
  copy_strides(dy, p.dy_stride);
  copy_strides(x, p.x_stride);
  copy_strides(dx, p.dx_stride);
  strides_or_zero(initial_states_in, p.init_stride);
  strides_or_zero(seq_idx, p.seq_stride);
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_bwd(p, ctx.stream());
  return {dx, dweight.to(weight.scalar_type()),
          bias.defined() ? dbias.to(bias.scalar_type()) : at::Tensor(), dinit};
}

// y (B, D, L) (x (B, D) -> y (B, D)); conv_state (B_pool, D, S) is updated in place (never copied).
at::Tensor causal_conv1d_update(const at::Tensor& x_in, const at::Tensor& conv_state,
                                const at::Tensor& weight_in, const OptTensor& bias_in, bool silu,
                                const OptTensor& cache_seqlens,
                                const OptTensor& conv_state_indices) {
  TORCH_CHECK(x_in.defined() && (x_in.dim() == 2 || x_in.dim() == 3),
              "x must have shape (B, D) or (B, D, L)");
  const at::Tensor x = x_in.dim() == 2 ? x_in.unsqueeze(2) : x_in;
  check_conv_x(x, "x", 3, "(B, D, L)");
  const at::Tensor weight = causal_conv1d_weight(weight_in, x, x.size(1));
  const at::Tensor bias = conv_bias(bias_in, x, x.size(1));
  const int64_t B = x.size(0), D = x.size(1);
  TORCH_CHECK(conv_state.defined() && conv_state.dim() == 3 && conv_state.size(1) == D &&
                  conv_state.size(2) >= weight.size(1) - 1 &&
                  (present(conv_state_indices) || conv_state.size(0) == B),
              "conv_state must have shape (B (or any pool size with conv_state_indices), D, S >= W"
              " - 1), got ", conv_state.defined() ? conv_state.sizes() : at::IntArrayRef{});
  check_like_x(conv_state, "conv_state", x);
  LaunchContext ctx(x);
  at::Tensor y = new_buffer(x.sizes(), x.options());  // (B, D, L)
  dlk::CausalConv1dUpdateParams p{};
  p.x = x.data_ptr();
  p.state = conv_state.data_ptr();
  p.weight = weight.data_ptr();
  p.bias = ptr_or_null<const void>(bias);
  p.cache_seqlens = int32_or_null(cache_seqlens, "cache_seqlens", x, {B});
  p.state_indices = int32_or_null(conv_state_indices, "conv_state_indices", x, {B});
  p.y = y.data_ptr();
  p.B = B;
  p.D = D;
  p.L = x.size(2);
  p.S = conv_state.size(2);
  p.width = int(weight.size(1));
  copy_strides(x, p.x_stride);
  copy_strides(conv_state, p.state_stride);
  copy_strides(y, p.y_stride);
  p.lens_stride = present(cache_seqlens) ? cache_seqlens->stride(0) : 0;
  p.indices_stride = present(conv_state_indices) ? conv_state_indices->stride(0) : 0;
  p.silu = silu;
  p.dtype = kernel_dtype(x);
  p.num_sms = ctx.num_sms();
  dlk::causal_conv1d_update(p, ctx.stream());
  return x_in.dim() == 2 ? y.squeeze(2) : y;
}

namespace {

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

}  // namespace

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
  const int64_t scratch_floats = dlk::depthwise_conv2d_dweight_scratch(p);
  at::Tensor scratch = scratch_floats > 0 ? new_buffer({scratch_floats}, f32) : at::Tensor();
  p.dweight_scratch = ptr_or_null<float>(scratch);
  dlk::depthwise_conv2d_bwd(p, ctx.stream());
  return {dx, dweight.to(weight.scalar_type()), has_bias ? dbias.to(x.scalar_type()) : at::Tensor()};
}

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace dlk_bind
