// Declarations of the normalization launchers: LayerNorm / RMSNorm and weight normalization
// (norm_binding.cpp), BatchNorm / GroupNorm (channel_norm_binding.cpp), for the module definition
// in csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <string>
#include <tuple>

#include "common/binding.h"

namespace dlk_bind {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(
    const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& residual, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x,
                                                            const OptTensor& weight,
                                                            const OptTensor& residual,
                                                            double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(
    const at::Tensor& dy, const at::Tensor& x, const OptTensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, const OptTensor& dresidual, bool has_bias);

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                                                const OptTensor& weight, const at::Tensor& rstd,
                                                const OptTensor& dresidual);

std::tuple<at::Tensor, at::Tensor> weight_norm_fwd(const at::Tensor& v_in, const at::Tensor& g_in);

std::tuple<at::Tensor, at::Tensor> weight_norm_bwd(const at::Tensor& dw_in, const at::Tensor& v_in,
                                                   const at::Tensor& g_in,
                                                   const at::Tensor& norm_in);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd(
    const at::Tensor& x_in, const OptTensor& weight_in, const OptTensor& bias_in,
    const OptTensor& running_mean, const OptTensor& running_var, bool training, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_bwd(
    const at::Tensor& dy_in, const at::Tensor& x_in, const OptTensor& weight_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, bool training, bool has_bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd(
    const at::Tensor& x_in, int64_t num_groups, const OptTensor& weight_in,
    const OptTensor& bias_in, double eps, const std::string& activation);

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd(
    const at::Tensor& dy_in, const at::Tensor& x_in, int64_t num_groups,
    const OptTensor& weight_in, const OptTensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in, const std::string& activation);

}  // namespace dlk_bind
