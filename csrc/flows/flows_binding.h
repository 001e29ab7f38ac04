// Declarations of the normalizing-flow launchers (flows_binding.cpp), for the module definition in
// csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <string>
#include <tuple>

#include "common/binding.h"

namespace dlk_bind {

std::tuple<at::Tensor, at::Tensor> affine_coupling_fwd(const at::Tensor& x_in, const at::Tensor& h_in,
                                                       bool reverse, const std::string& scale,
                                                       double clamp);

std::tuple<at::Tensor, at::Tensor> affine_coupling_bwd(const at::Tensor& dy_in, const at::Tensor& dlogdet_in,
                                                       const at::Tensor& x_in, const at::Tensor& h_in,
                                                       bool reverse, const std::string& scale,
                                                       double clamp);

at::Tensor act_norm_fwd(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& k_in);

std::tuple<at::Tensor, at::Tensor, at::Tensor> act_norm_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                            const at::Tensor& m_in);

at::Tensor inv_conv1x1_fwd(const at::Tensor& x_in, const at::Tensor& w_in);

std::tuple<at::Tensor, at::Tensor> inv_conv1x1_bwd(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                   const at::Tensor& w_in);

}  // namespace dlk_bind
