// Declarations of the multi-tensor optimizer launchers (optim_binding.cpp), for the module
// definition in csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <optional>
#include <vector>

#include "common/binding.h"

namespace dlk_bind {

using TensorList = std::vector<at::Tensor>;
using OptTensorList = std::optional<TensorList>;

void multi_tensor_adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                       const TensorList& exp_avg_sqs, const OptTensorList& max_exp_avg_sqs,
                       const OptTensorList& master_params, const std::vector<double>& step_sizes,
                       const std::vector<double>& bc2_sqrts, double beta1, double beta2, double eps,
                       double weight_decay, double lr, bool decoupled, bool amsgrad,
                       bool maximize);

void multi_tensor_sgd(const TensorList& params, const TensorList& grads,
                      const OptTensorList& momentum_buffers, double lr, double momentum,
                      double dampening, double weight_decay, bool nesterov, bool maximize,
                      bool first);

void multi_tensor_adagrad(const TensorList& params, const TensorList& grads,
                          const TensorList& state_sums, const std::vector<double>& clrs, double eps,
                          double weight_decay, bool maximize);

void multi_tensor_rmsprop(const TensorList& params, const TensorList& grads,
                          const TensorList& square_avgs, const OptTensorList& grad_avgs,
                          const OptTensorList& momentum_buffers, double lr, double alpha,
                          double eps, double weight_decay, double momentum, bool centered,
                          bool maximize);

void multi_tensor_adabound(const TensorList& params, const TensorList& grads,
                           const TensorList& exp_avgs, const TensorList& exp_avg_sqs,
                           const OptTensorList& max_exp_avg_sqs,
                           const std::vector<double>& step_sizes, const std::vector<double>& lowers,
                           const std::vector<double>& uppers, double beta1, double beta2, double eps,
                           double weight_decay, bool amsbound);

}  // namespace dlk_bind
