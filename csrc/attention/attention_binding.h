// Declarations of the fused attention launchers (attention_binding.cpp), for the module definition
// in csrc/module.cpp (its m.def docstrings document them).
#pragma once

#include <cstdint>
#include <tuple>

#include "common/binding.h"

namespace dlk_bind {

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const OptTensor& bias,
                                                 const at::Tensor& scale, double dropout_p,
                                                 int64_t seed, bool is_causal, bool bottom_right);

std::tuple<at::Tensor, at::Tensor, at::Tensor, OptTensor> attention_bwd(
    const at::Tensor& do_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& o_in, const at::Tensor& lse_in, const OptTensor& bias,
    const at::Tensor& scale, double dropout_p, int64_t seed, bool is_causal, bool bottom_right,
    bool bias_grad);

std::tuple<at::Tensor, at::Tensor> attention_varlen_fwd(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& scale,
    bool is_causal);

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_varlen_bwd(
    const at::Tensor& do_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& o_in, const at::Tensor& lse_in, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const at::Tensor& scale,
    bool is_causal);

at::Tensor attention_paged_fwd(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& block_table, const at::Tensor& cache_seqlens,
                               const at::Tensor& scale, bool is_causal, int64_t num_splits);

}  // namespace dlk_bind
