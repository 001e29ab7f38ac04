// The torch binding of the multi-tensor optimizer kernels (multi_tensor.cu): checks, output
// allocation and the params struct of each launcher (conventions: common/binding.h). The Python-
// visible definitions with their docs are in csrc/module.cpp.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/Functions.h>: per-op headers only
#include "optim/optim_binding.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "optim/multi_tensor.h"

namespace dlk_bind {

// ---- multi-tensor optimizers ------------------------------------------------------------------

namespace {

// Lists of tensors, one launch each: the tables of pointers, sizes and chunks are packed on the
// host into one int64 buffer (pinned) and copied to the device with one asynchronous copy.

using NamedList = std::pair<const char*, const TensorList*>;    // nullptr: the list is absent
using NamedScalars = std::pair<const char*, const std::vector<double>*>;

// The tables of one launch and the tensor that holds them (kept alive until the launch is queued;
// the caching allocators keep its memory until the stream has used it).
struct PackedTable {
  at::Tensor storage;
  dlk::TensorTable table;
};

// Every list has params' length, every tensor is contiguous on params' device with its param's
// size, and each list has one dtype. Returns the lists' dtypes (F32 for absent ones).
std::vector<dlk::DType> check_lists(const std::vector<NamedList>& lists) {
  const TensorList& params = *lists.front().second;
  std::vector<dlk::DType> dtypes;
  for (const auto& [name, list] : lists) {
    if (list == nullptr) {
      dtypes.push_back(dlk::DType::F32);
      continue;
    }
    TORCH_CHECK(list->size() == params.size(), name, " must hold ", params.size(),
                " tensors (one per param), got ", list->size());
    for (size_t i = 0; i < list->size(); ++i) {
      const at::Tensor& t = (*list)[i];
      TORCH_CHECK(t.defined(), name, "[", i, "] must be a tensor, got None");
      TORCH_CHECK(on_kernel_device(t), name, "[", i, "] must be ", kDeviceKind, ", got a tensor on ",
                  t.device());
      TORCH_CHECK(t.device() == params[0].device(), name, "[", i, "] must be on ",
                  params[0].device(), ", got ", t.device());
      TORCH_CHECK(t.scalar_type() == (*list)[0].scalar_type(), name, "[", i, "] must have ", name,
                  "[0]'s dtype ", (*list)[0].scalar_type(), ", got ", t.scalar_type());
      TORCH_CHECK(t.is_contiguous(), name, "[", i, "] must be contiguous");
      TORCH_CHECK(t.numel() == params[i].numel(), name, "[", i, "] must have ", params[i].numel(),
                  " elements like its param, got ", t.numel());
    }
    const at::ScalarType st = (*list)[0].scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
                " must be float32, float16 or bfloat16, got ", st);
    dtypes.push_back(st == at::kFloat ? dlk::DType::F32
                                      : st == at::kHalf ? dlk::DType::F16 : dlk::DType::BF16);
  }
  return dtypes;
}

// lists in the kernel's row order (params first), per-tensor scalars in the kernel's order.
PackedTable pack_table(const std::vector<NamedList>& lists, const std::vector<NamedScalars>& scalars) {
  const TensorList& params = *lists.front().second;
  const int64_t T = int64_t(params.size()), L = int64_t(lists.size()), K = int64_t(scalars.size());
  for (const auto& [name, values] : scalars) {
    TORCH_CHECK(int64_t(values->size()) == T, name, " must hold ", T, " values (one per param), got ",
                values->size());
  }
  int64_t C = 0, max_size = 0;
  for (const at::Tensor& p : params) {
    C += (p.numel() + dlk::kOptimChunk - 1) / dlk::kOptimChunk;
    max_size = std::max(max_size, p.numel());
  }
  // int64 layout: addresses (L, T) | sizes (T) | chunk_tensor (C) | chunk_start (C) | fp32 (K, T)
  const int64_t float_offset = L * T + T + 2 * C;
  const bool to_device = !params[0].is_cpu();
  at::Tensor host = at::empty({float_offset + (K * T + 1) / 2},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(to_device));
  int64_t* h = host.data_ptr<int64_t>();
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t t = 0; t < T; ++t) {
      h[l * T + t] = lists[l].second == nullptr
                         ? 0
                         : reinterpret_cast<int64_t>((*lists[l].second)[t].data_ptr());
    }
  }
  int64_t* sizes = h + L * T;
  int64_t* chunk_tensor = sizes + T;
  int64_t* chunk_start = chunk_tensor + C;
  for (int64_t t = 0, c = 0; t < T; ++t) {
    sizes[t] = params[t].numel();
    for (int64_t start = 0; start < sizes[t]; start += dlk::kOptimChunk, ++c) {
      chunk_tensor[c] = t;
      chunk_start[c] = start;
    }
  }
  float* f = reinterpret_cast<float*>(h + float_offset);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t t = 0; t < T; ++t) f[k * T + t] = static_cast<float>((*scalars[k].second)[t]);
  }
  PackedTable packed{to_device ? host.to(params[0].device(), /*non_blocking=*/true) : host, {}};
  const int64_t* d = packed.storage.data_ptr<int64_t>();
  packed.table = {d, d + L * T, d + L * T + T, d + L * T + T + C,
                  reinterpret_cast<const float*>(d + float_offset), T, C, max_size};
  return packed;
}

// A list that must be given exactly when `needed` (e.g. max_exp_avg_sqs when amsgrad).
const TensorList* optional_list(const OptTensorList& list, bool needed, const char* name,
                                const char* when) {
  TORCH_CHECK(!needed || list.has_value(), name, " must be a list of tensors when ", when,
              ", got None");
  return needed ? &*list : nullptr;
}

void check_same_dtype(const std::vector<dlk::DType>& dtypes, const std::vector<NamedList>& lists,
                      size_t first, size_t other) {
  if (lists[other].second == nullptr) return;
  TORCH_CHECK(dtypes[other] == dtypes[first], lists[other].first, " must have ",
              lists[first].first, "' dtype ", (*lists[first].second)[0].scalar_type(), ", got ",
              (*lists[other].second)[0].scalar_type());
}

// The dtype of lists that all share the params' dtype (SGD, Adagrad, RMSprop, AdaBound).
dlk::DType one_dtype(const std::vector<NamedList>& lists) {
  const std::vector<dlk::DType> dtypes = check_lists(lists);
  for (size_t l = 1; l < lists.size(); ++l) check_same_dtype(dtypes, lists, 0, l);
  return dtypes[0];
}

}  // namespace

void multi_tensor_adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                       const TensorList& exp_avg_sqs, const OptTensorList& max_exp_avg_sqs,
                       const OptTensorList& master_params, const std::vector<double>& step_sizes,
                       const std::vector<double>& bc2_sqrts, double beta1, double beta2, double eps,
                       double weight_decay, double lr, bool decoupled, bool amsgrad,
                       bool maximize) {
  if (params.empty()) return;
  const bool has_master = master_params.has_value();
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"exp_avgs", &exp_avgs},
      {"exp_avg_sqs", &exp_avg_sqs},
      {"max_exp_avg_sqs", optional_list(max_exp_avg_sqs, amsgrad, "max_exp_avg_sqs", "amsgrad")},
      {"master_params", has_master ? &*master_params : nullptr}};
  const std::vector<dlk::DType> dtypes = check_lists(lists);
  check_same_dtype(dtypes, lists, dlk::kAdamParam, dlk::kAdamGrad);
  check_same_dtype(dtypes, lists, dlk::kAdamExpAvg, dlk::kAdamExpAvgSq);
  check_same_dtype(dtypes, lists, dlk::kAdamExpAvg, dlk::kAdamMaxExpAvgSq);
  TORCH_CHECK(dtypes[dlk::kAdamExpAvg] == dtypes[dlk::kAdamParam] ||
                  dtypes[dlk::kAdamExpAvg] == dlk::DType::F32,
              "exp_avgs must have the params' dtype or float32, got ", exp_avgs[0].scalar_type());
  TORCH_CHECK(!has_master || (dtypes[dlk::kAdamMaster] == dlk::DType::F32 &&
                              dtypes[dlk::kAdamExpAvg] == dlk::DType::F32),
              "master_params and the states must be float32 with master weights");
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {{"step_sizes", &step_sizes}, {"bc2_sqrts", &bc2_sqrts}});
  dlk::AdamParams p{};
  p.table = packed.table;
  p.beta1 = float(beta1);
  p.beta2 = float(beta2);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.decay_factor = float(1.0 - lr * weight_decay);
  p.param_dtype = dtypes[dlk::kAdamParam];
  p.state_dtype = dtypes[dlk::kAdamExpAvg];
  p.decoupled = decoupled;
  p.amsgrad = amsgrad;
  p.maximize = maximize;
  p.has_master = has_master;
  dlk::multi_tensor_adam(p, ctx.stream());
}

void multi_tensor_sgd(const TensorList& params, const TensorList& grads,
                      const OptTensorList& momentum_buffers, double lr, double momentum,
                      double dampening, double weight_decay, bool nesterov, bool maximize,
                      bool first) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads},
      {"momentum_buffers",
       optional_list(momentum_buffers, momentum != 0, "momentum_buffers", "momentum != 0")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {});
  dlk::SgdParams p{};
  p.table = packed.table;
  p.lr = float(lr);
  p.momentum = float(momentum);
  p.dampening = float(dampening);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.nesterov = nesterov;
  p.maximize = maximize;
  p.first = first;
  dlk::multi_tensor_sgd(p, ctx.stream());
}

void multi_tensor_adagrad(const TensorList& params, const TensorList& grads,
                          const TensorList& state_sums, const std::vector<double>& clrs, double eps,
                          double weight_decay, bool maximize) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"state_sums", &state_sums}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {{"clrs", &clrs}});
  dlk::AdagradParams p{};
  p.table = packed.table;
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.maximize = maximize;
  dlk::multi_tensor_adagrad(p, ctx.stream());
}

void multi_tensor_rmsprop(const TensorList& params, const TensorList& grads,
                          const TensorList& square_avgs, const OptTensorList& grad_avgs,
                          const OptTensorList& momentum_buffers, double lr, double alpha,
                          double eps, double weight_decay, double momentum, bool centered,
                          bool maximize) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"square_avgs", &square_avgs},
      {"grad_avgs", optional_list(grad_avgs, centered, "grad_avgs", "centered")},
      {"momentum_buffers",
       optional_list(momentum_buffers, momentum > 0, "momentum_buffers", "momentum > 0")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(lists, {});
  dlk::RmspropParams p{};
  p.table = packed.table;
  p.lr = float(lr);
  p.alpha = float(alpha);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.momentum = float(momentum);
  p.dtype = dtype;
  p.centered = centered;
  p.maximize = maximize;
  dlk::multi_tensor_rmsprop(p, ctx.stream());
}

void multi_tensor_adabound(const TensorList& params, const TensorList& grads,
                           const TensorList& exp_avgs, const TensorList& exp_avg_sqs,
                           const OptTensorList& max_exp_avg_sqs,
                           const std::vector<double>& step_sizes, const std::vector<double>& lowers,
                           const std::vector<double>& uppers, double beta1, double beta2, double eps,
                           double weight_decay, bool amsbound) {
  if (params.empty()) return;
  const std::vector<NamedList> lists = {
      {"params", &params}, {"grads", &grads}, {"exp_avgs", &exp_avgs},
      {"exp_avg_sqs", &exp_avg_sqs},
      {"max_exp_avg_sqs", optional_list(max_exp_avg_sqs, amsbound, "max_exp_avg_sqs", "amsbound")}};
  const dlk::DType dtype = one_dtype(lists);
  LaunchContext ctx(params[0]);
  const PackedTable packed = pack_table(
      lists, {{"step_sizes", &step_sizes}, {"lowers", &lowers}, {"uppers", &uppers}});
  dlk::AdaBoundParams p{};
  p.table = packed.table;
  p.beta1 = float(beta1);
  p.beta2 = float(beta2);
  p.eps = float(eps);
  p.weight_decay = float(weight_decay);
  p.dtype = dtype;
  p.amsbound = amsbound;
  dlk::multi_tensor_adabound(p, ctx.stream());
}

}  // namespace dlk_bind
