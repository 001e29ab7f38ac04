// dlkern._C (and dlkern._C_emu, the CPU emulation build of the same kernels): the Python module.
// The launchers are defined beside their kernels, one binding file per op family
// (csrc/<family>/*_binding.cpp; conventions: common/binding.h); this file only binds them, and is
// the one translation unit that includes <torch/extension.h> (pybind11 and its tensor casters).
#include <torch/extension.h>

#include "attention/attention_binding.h"
#include "conv/conv_binding.h"
#include "flows/flows_binding.h"
#include "norm/norm_binding.h"
#include "optim/optim_binding.h"
#include "scan/scan_binding.h"
#include "scan/scan_pydef.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace dlk_bind;
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
        " or None, SiLU fused when silu; seq_idx (B, L) int32 (packed sequences) and"
        " initial_states (B, D, W - 1) or None.\nReturns y (B, D, L) in x's layout.",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("silu"),
        py::arg("seq_idx") = py::none(), py::arg("initial_states") = py::none());
  m.def("causal_conv1d_bwd", &causal_conv1d_bwd,
        "Causal depthwise conv1d backward.\nReturns (dx like x, dweight (D, W), dbias (D,) or None,"
        " dinitial_states (B, D, W - 1) or None); dweight/dbias are deterministic.",
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("silu"),
        py::arg("seq_idx") = py::none(), py::arg("initial_states") = py::none());
  m.def("causal_conv1d_update", &causal_conv1d_update,
        "Decode steps: x (B, D) or (B, D, L), conv_state (B_pool, D, S >= W - 1) updated in place;"
        " cache_seqlens (B,) int32 makes it a circular buffer, conv_state_indices (B,) int32 picks"
        " the state rows (negative: padding, y = 0).\nReturns y shaped like x.",
        py::arg("x"), py::arg("conv_state"), py::arg("weight"), py::arg("bias"), py::arg("silu"),
        py::arg("cache_seqlens") = py::none(), py::arg("conv_state_indices") = py::none());
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
  m.def("attention_varlen_fwd", &attention_varlen_fwd,
        "Fused attention forward over packed sequences (cu_seqlens, causal bottom-right per sequence)."
        "\nReturns (o (total_q, Hq, D) in q's dtype, lse (Hq, total_q) float32).",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"),
        py::arg("max_seqlen_q"), py::arg("max_seqlen_k"), py::arg("scale"), py::arg("is_causal"));
  m.def("attention_varlen_bwd", &attention_varlen_bwd,
        "Fused attention backward over packed sequences.\nReturns (dq, dk, dv) in q's dtype.",
        py::arg("do"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"),
        py::arg("cu_seqlens_q"), py::arg("cu_seqlens_k"), py::arg("max_seqlen_q"), py::arg("max_seqlen_k"),
        py::arg("scale"), py::arg("is_causal"));
  m.def("attention_paged_fwd", &attention_paged_fwd,
        "Decode attention over a paged KV cache (forward only).\nReturns o (B, Lq, Hq, D) in q's dtype.",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("block_table"), py::arg("cache_seqlens"),
        py::arg("scale"), py::arg("is_causal"), py::arg("num_splits"));
  dlk_scan::def_selective_scan(m, &selective_scan_fwd, &selective_scan_bwd);
  m.def("selective_state_update", &selective_state_update,
        "One decoding step of the selective scan (csrc/scan/state_update.h). state (batch, dim, N), fp32"
        " or x's dtype, is updated in place; B, C: (batch, G, N); state_batch_indices: (batch,) int32 rows of"
        " state (a pool), or None.\nReturns out (batch, dim) in x's dtype.",
        py::arg("state"), py::arg("x"), py::arg("dt"), py::arg("A"), py::arg("B"), py::arg("C"),
        py::arg("D"), py::arg("z"), py::arg("dt_bias"), py::arg("dt_softplus"),
        py::arg("state_batch_indices") = py::none());
  m.def("set_debug_nan_fill", &set_debug_nan_fill,
        "When enabled, every output and partial buffer is filled with NaN before its kernel runs.",
        py::arg("enabled"));
}
