// Multi-tensor optimizer kernels and their launchers (update rules and tables: multi_tensor.h).
//
// One block per chunk of kOptimChunk elements of one tensor; every tensor of the launch is found
// through the device tables, so a step of any number of parameters is one launch per dtype group.
// Each thread takes groups of V consecutive elements (V = 16 bytes of the widest type: one 128-bit
// access per state, 64-bit for fp16/bf16 params beside fp32 states) when every pointer of its
// tensor is 16-byte aligned, and single elements for the chunk's tail (or unaligned tensors).
// Flags (amsgrad, maximize, ...) are runtime values: they are uniform over the grid, so the
// branches cost nothing next to the memory traffic, and only dtypes are template arguments.
// Nothing is autotuned: the kernels update state in place, and a timing rerun would apply the
// update twice.
#include "optim/multi_tensor.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kMaxThreads = 256;

// Elements per aligned access for storage types A and B (16 bytes of the wider one).
template <typename A, typename B>
constexpr int kPairVec = 16 / int(sizeof(A) > sizeof(B) ? sizeof(A) : sizeof(B));

struct Chunk {
  int64_t t, begin, end;  // tensor index, first element, one past the last
};

__device__ __forceinline__ Chunk this_chunk(const TensorTable& tab) {
  const int64_t c = blockIdx.x;
  const int64_t t = tab.chunk_tensor[c];
  const int64_t begin = tab.chunk_start[c];
  const int64_t size = tab.sizes[t];
  return {t, begin, begin + kOptimChunk < size ? begin + kOptimChunk : size};
}

template <typename T>
__device__ __forceinline__ T* tensor(const TensorTable& tab, int list, int64_t t) {
  return reinterpret_cast<T*>(tab.addresses[list * tab.num_tensors + t]);
}

__device__ __forceinline__ float tensor_scalar(const TensorTable& tab, int k, int64_t t) {
  return tab.scalars[k * tab.num_tensors + t];
}

// Whether every list's pointer of tensor t (absent ones are 0) is 16-byte aligned.
__device__ __forceinline__ bool all_aligned(const TensorTable& tab, int num_lists, int64_t t) {
  int64_t bits = 0;
  for (int l = 0; l < num_lists; ++l) bits |= tab.addresses[l * tab.num_tensors + t];
  return bits % 16 == 0;
}

// body(i, width) for every element group of the chunk: groups of V (width = V) from its start
// when vec, then single elements (width = 1) up to its end. Chunks start at multiples of V.
template <int V, typename Body>
__device__ __forceinline__ void for_each_group(const Chunk& c, bool vec, Body&& body) {
  const int64_t vec_end = vec ? c.begin + (c.end - c.begin) / V * V : c.begin;
  for (int64_t i = c.begin + int64_t(threadIdx.x) * V; i < vec_end; i += int64_t(blockDim.x) * V) {
    body(i, std::integral_constant<int, V>{});
  }
  for (int64_t i = vec_end + threadIdx.x; i < c.end; i += blockDim.x) {
    body(i, std::integral_constant<int, 1>{});
  }
}

// ---- kernels ------------------------------------------------------------------------------------
// P: params and grads, S: states (P, or float with master weights).
template <typename P, typename S>
__global__ void __launch_bounds__(kMaxThreads, 1)
multi_tensor_adam_kernel(const AdamParams a) {
  const TensorTable& tab = a.table;
  const Chunk c = this_chunk(tab);
  P* p = tensor<P>(tab, kAdamParam, c.t);
  const P* g = tensor<const P>(tab, kAdamGrad, c.t);
  S* m = tensor<S>(tab, kAdamExpAvg, c.t);
  S* v = tensor<S>(tab, kAdamExpAvgSq, c.t);
  S* vmax = tensor<S>(tab, kAdamMaxExpAvgSq, c.t);  // null unless amsgrad
  float* master = tensor<float>(tab, kAdamMaster, c.t);  // null unless has_master
  const float step_size = tensor_scalar(tab, kAdamStepSize, c.t);
  const float bc2_sqrt = tensor_scalar(tab, kAdamBc2Sqrt, c.t);
  const bool has_wd = a.weight_decay != 0.f;
  for_each_group<kPairVec<P, S>>(c, all_aligned(tab, kAdamLists, c.t), [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float pv[W], gv[W], mv[W], vv[W], vmv[W];
    if (a.has_master) {
      load<float, W>(master + i, pv);
    } else {
      load<P, W>(p + i, pv);
    }
    load<P, W>(g + i, gv);
    load<S, W>(m + i, mv);
    load<S, W>(v + i, vv);
    if (a.amsgrad) load<S, W>(vmax + i, vmv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float gk = a.maximize ? -gv[k] : gv[k];
      if (a.decoupled) {
        pv[k] *= a.decay_factor;
      } else if (has_wd) {
        gk += a.weight_decay * pv[k];
      }
      mv[k] += (1.f - a.beta1) * (gk - mv[k]);  // exp_avg.lerp_(grad, 1 - beta1)
      vv[k] = vv[k] * a.beta2 + (1.f - a.beta2) * gk * gk;
      float second = vv[k];
      if (a.amsgrad) second = vmv[k] = fmaxf(vmv[k], vv[k]);
      pv[k] -= step_size * (mv[k] / (sqrtf(second) / bc2_sqrt + a.eps));
    }
    if (a.has_master) store<float, W>(master + i, pv);
    store<P, W>(p + i, pv);
    store<S, W>(m + i, mv);
    store<S, W>(v + i, vv);
    if (a.amsgrad) store<S, W>(vmax + i, vmv);
  });
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, 1)
multi_tensor_sgd_kernel(const SgdParams a) {
  const TensorTable& tab = a.table;
  const Chunk c = this_chunk(tab);
  T* p = tensor<T>(tab, kSgdParam, c.t);
  const T* g = tensor<const T>(tab, kSgdGrad, c.t);
  T* buf = tensor<T>(tab, kSgdBuf, c.t);  // null without momentum
  const bool has_wd = a.weight_decay != 0.f, has_momentum = a.momentum != 0.f;
  for_each_group<kVec<T>>(c, all_aligned(tab, kSgdLists, c.t), [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float pv[W], dv[W], bv[W] = {};  // bv is read only when it was loaded
    load<T, W>(p + i, pv);
    load<T, W>(g + i, dv);
    if (has_momentum && !a.first) load<T, W>(buf + i, bv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float d = a.maximize ? -dv[k] : dv[k];
      if (has_wd) d += a.weight_decay * pv[k];
      if (has_momentum) {  // torch: the buffer starts as a copy of the first d (no dampening)
        bv[k] = a.first ? d : bv[k] * a.momentum + (1.f - a.dampening) * d;
        d = a.nesterov ? d + a.momentum * bv[k] : bv[k];
      }
      pv[k] -= a.lr * d;
    }
    if (has_momentum) store<T, W>(buf + i, bv);
    store<T, W>(p + i, pv);
  });
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, 1)
multi_tensor_adagrad_kernel(const AdagradParams a) {
  const TensorTable& tab = a.table;
  const Chunk c = this_chunk(tab);
  T* p = tensor<T>(tab, kAdagradParam, c.t);
  const T* g = tensor<const T>(tab, kAdagradGrad, c.t);
  T* sum = tensor<T>(tab, kAdagradSum, c.t);
  const float clr = tensor_scalar(tab, kAdagradClr, c.t);
  const bool has_wd = a.weight_decay != 0.f;
  for_each_group<kVec<T>>(c, all_aligned(tab, kAdagradLists, c.t), [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float pv[W], gv[W], sv[W];
    load<T, W>(p + i, pv);
    load<T, W>(g + i, gv);
    load<T, W>(sum + i, sv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float gk = a.maximize ? -gv[k] : gv[k];
      if (has_wd) gk += a.weight_decay * pv[k];
      sv[k] += gk * gk;
      pv[k] -= clr * (gk / (sqrtf(sv[k]) + a.eps));
    }
    store<T, W>(sum + i, sv);
    store<T, W>(p + i, pv);
  });
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, 1)
multi_tensor_rmsprop_kernel(const RmspropParams a) {
  const TensorTable& tab = a.table;
  const Chunk c = this_chunk(tab);
  T* p = tensor<T>(tab, kRmsParam, c.t);
  const T* g = tensor<const T>(tab, kRmsGrad, c.t);
  T* sq = tensor<T>(tab, kRmsSquareAvg, c.t);
  T* gavg = tensor<T>(tab, kRmsGradAvg, c.t);  // null unless centered
  T* buf = tensor<T>(tab, kRmsBuf, c.t);       // null without momentum
  const bool has_wd = a.weight_decay != 0.f, has_momentum = a.momentum > 0.f;
  for_each_group<kVec<T>>(c, all_aligned(tab, kRmsLists, c.t), [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float pv[W], gv[W], sv[W], av[W], bv[W];
    load<T, W>(p + i, pv);
    load<T, W>(g + i, gv);
    load<T, W>(sq + i, sv);
    if (a.centered) load<T, W>(gavg + i, av);
    if (has_momentum) load<T, W>(buf + i, bv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float gk = a.maximize ? -gv[k] : gv[k];
      if (has_wd) gk += a.weight_decay * pv[k];
      sv[k] = sv[k] * a.alpha + (1.f - a.alpha) * gk * gk;
      float avg;
      if (a.centered) {
        av[k] += (1.f - a.alpha) * (gk - av[k]);  // grad_avg.lerp_(grad, 1 - alpha)
        avg = sqrtf(sv[k] - av[k] * av[k]) + a.eps;
      } else {
        avg = sqrtf(sv[k]) + a.eps;
      }
      if (has_momentum) {
        bv[k] = bv[k] * a.momentum + gk / avg;
        pv[k] -= a.lr * bv[k];
      } else {
        pv[k] -= a.lr * (gk / avg);
      }
    }
    store<T, W>(sq + i, sv);
    if (a.centered) store<T, W>(gavg + i, av);
    if (has_momentum) store<T, W>(buf + i, bv);
    store<T, W>(p + i, pv);
  });
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads, 1)
multi_tensor_adabound_kernel(const AdaBoundParams a) {
  const TensorTable& tab = a.table;
  const Chunk c = this_chunk(tab);
  T* p = tensor<T>(tab, kBoundParam, c.t);
  const T* g = tensor<const T>(tab, kBoundGrad, c.t);
  T* m = tensor<T>(tab, kBoundExpAvg, c.t);
  T* v = tensor<T>(tab, kBoundExpAvgSq, c.t);
  T* vmax = tensor<T>(tab, kBoundMaxExpAvgSq, c.t);  // null unless amsbound
  const float step_size = tensor_scalar(tab, kBoundStepSize, c.t);
  const float lower = tensor_scalar(tab, kBoundLower, c.t);
  const float upper = tensor_scalar(tab, kBoundUpper, c.t);
  const bool has_wd = a.weight_decay != 0.f;
  for_each_group<kVec<T>>(c, all_aligned(tab, kBoundLists, c.t), [&](int64_t i, auto width) {
    constexpr int W = decltype(width)::value;
    float pv[W], gv[W], mv[W], vv[W], vmv[W];
    load<T, W>(p + i, pv);
    load<T, W>(g + i, gv);
    load<T, W>(m + i, mv);
    load<T, W>(v + i, vv);
    if (a.amsbound) load<T, W>(vmax + i, vmv);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float gk = gv[k];
      if (has_wd) gk += a.weight_decay * pv[k];
      mv[k] = mv[k] * a.beta1 + (1.f - a.beta1) * gk;
      vv[k] = vv[k] * a.beta2 + (1.f - a.beta2) * gk * gk;
      float second = vv[k];
      if (a.amsbound) second = vmv[k] = fmaxf(vmv[k], vv[k]);
      // Adam's step size per element, clipped into [lower, upper] (the bounds close in on final_lr).
      const float rate = fminf(fmaxf(step_size / (sqrtf(second) + a.eps), lower), upper);
      pv[k] -= rate * mv[k];
    }
    store<T, W>(m + i, mv);
    store<T, W>(v + i, vv);
    if (a.amsbound) store<T, W>(vmax + i, vmv);
    store<T, W>(p + i, pv);
  });
}

// ---- host side --------------------------------------------------------------------------------
void check(bool ok, const char* op, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern ") + op + ": " + what);
}

void check_table(const TensorTable& t, const char* op) {
  check(t.num_tensors >= 0 && t.num_chunks >= 0 && t.max_size >= 0, op, "table sizes must be >= 0");
  check(t.num_chunks == 0 || (t.addresses && t.sizes && t.chunk_tensor && t.chunk_start), op,
        "the tensor table is required");
  check(t.num_chunks <= int64_t(0x7fffffff), op, "too many chunks for one launch");
}

// About 4 groups of V per thread in the largest chunk, 32 to kMaxThreads threads: a launch of
// small tensors only takes the threads it can use.
int block_threads(int64_t max_size, int V) {
  const int64_t groups = (std::min(max_size, kOptimChunk) + V - 1) / V;
  const int64_t t = ((groups + 3) / 4 + 31) / 32 * 32;
  return int(std::clamp<int64_t>(t, 32, kMaxThreads));
}

// One block per chunk.
template <int V, typename Kernel, typename Params>
void launch(Kernel kernel, const Params& p, void* stream, const char* name) {
  DLK_LAUNCH(kernel, unsigned(p.table.num_chunks), block_threads(p.table.max_size, V), 0,
             static_cast<cudaStream_t>(stream), p);
  check_launch(name);
}

// The launch of an optimizer whose params, grads and states share one dtype, a.dtype;
// kernel_of(T{}) is its kernel for storage type T.
template <typename Params, typename KernelOf>
void launch_one_dtype(const Params& a, void* stream, const char* name, KernelOf kernel_of) {
  check_table(a.table, name);
  if (a.table.num_chunks == 0) return;
  dispatch_dtype<void>(a.dtype, [&](auto tag) {
    launch<kVec<decltype(tag)>>(kernel_of(tag), a, stream, name);
  });
}

}  // namespace

void multi_tensor_adam(const AdamParams& a, void* stream) {
  check_table(a.table, "multi_tensor_adam");
  if (a.table.num_chunks == 0) return;
  check(a.state_dtype == a.param_dtype || a.state_dtype == DType::F32, "multi_tensor_adam",
        "states must have the params' dtype or float32");
  check(!a.has_master || a.state_dtype == DType::F32, "multi_tensor_adam",
        "with master weights the states must be float32");
  dispatch_dtype<void>(a.param_dtype, [&](auto tag) {
    using P = decltype(tag);
    if (a.state_dtype == a.param_dtype) {
      launch<kPairVec<P, P>>(multi_tensor_adam_kernel<P, P>, a, stream, "multi_tensor_adam");
    } else {
      launch<kPairVec<P, float>>(multi_tensor_adam_kernel<P, float>, a, stream, "multi_tensor_adam");
    }
  });
}

void multi_tensor_sgd(const SgdParams& a, void* stream) {
  launch_one_dtype(a, stream, "multi_tensor_sgd",
                   [](auto tag) { return multi_tensor_sgd_kernel<decltype(tag)>; });
}

void multi_tensor_adagrad(const AdagradParams& a, void* stream) {
  launch_one_dtype(a, stream, "multi_tensor_adagrad",
                   [](auto tag) { return multi_tensor_adagrad_kernel<decltype(tag)>; });
}

void multi_tensor_rmsprop(const RmspropParams& a, void* stream) {
  launch_one_dtype(a, stream, "multi_tensor_rmsprop",
                   [](auto tag) { return multi_tensor_rmsprop_kernel<decltype(tag)>; });
}

void multi_tensor_adabound(const AdaBoundParams& a, void* stream) {
  launch_one_dtype(a, stream, "multi_tensor_adabound",
                   [](auto tag) { return multi_tensor_adabound_kernel<decltype(tag)>; });
}

}  // namespace dlk
