// Declarations of the convolution launchers (conv_binding.cpp), for the module definition in
// csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/binding.h"

namespace dlk_bind {

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                             const OptTensor& bias_in, bool silu, const OptTensor& seq_idx,
                             const OptTensor& initial_states_in);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in,
    const OptTensor& bias_in, bool silu, const OptTensor& seq_idx,
    const OptTensor& initial_states_in);

at::Tensor causal_conv1d_update(const at::Tensor& x_in, const at::Tensor& conv_state,
                                const at::Tensor& weight_in, const OptTensor& bias_in, bool silu,
                                const OptTensor& cache_seqlens,
                                const OptTensor& conv_state_indices);

at::Tensor depthwise_conv2d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                                const OptTensor& bias_in, const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& padding,
                                const std::vector<int64_t>& dilation,
                                const std::vector<int64_t>& out_hw);

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in, bool has_bias,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation);

at::Tensor dilated_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight_in,
                              const OptTensor& bias_in, int64_t dilation, int64_t left);

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv1d_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight_in, bool has_bias,
    int64_t dilation, int64_t left);

std::tuple<at::Tensor, at::Tensor, at::Tensor> wavenet_layer_fwd(
    const at::Tensor& x, const at::Tensor& w_dil_in, const OptTensor& b_dil_in,
    const OptTensor& cond, const at::Tensor& w_res_in, const OptTensor& b_res_in,
    const at::Tensor& w_skip_in, const OptTensor& b_skip_in, int64_t dilation);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
wavenet_layer_bwd(const at::Tensor& dout, const at::Tensor& dskip, const at::Tensor& x,
                  const at::Tensor& h, const at::Tensor& w_dil_in, const at::Tensor& w_res_in,
                  const at::Tensor& w_skip_in, bool has_b_dil, bool has_b_res, bool has_b_skip,
                  int64_t dilation);

}  // namespace dlk_bind
