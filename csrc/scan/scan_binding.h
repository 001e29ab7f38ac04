// Declarations of the selective scan launchers (scan_binding.cpp), for the module definition in
// csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <tuple>

#include "common/binding.h"

namespace dlk_bind {

std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus, const OptTensor& initial_state, const OptTensor& seq_idx);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                   const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                   const at::Tensor& states, const OptTensor& dlast, const OptTensor& initial_state,
                   const OptTensor& seq_idx);

// out (batch, dim) in x's dtype; state (batch or pool, dim, N) is updated in place (never copied).
at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                  const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                  const OptTensor& D, const OptTensor& z, const OptTensor& dt_bias,
                                  bool dt_softplus, const OptTensor& state_batch_indices);

}  // namespace dlk_bind
