// Multi-tensor optimizer steps (apex-style): one launch updates every tensor of a same-dtype
// group, whatever their number and sizes. The interface between the torch binding and the
// kernels in multi_tensor.cu. Plain C++; the CUDA twins of the Triton kernels in
// kernels/optim.py (same update rules, fp32 arithmetic).
//
// The binding packs a TensorTable on the device: for each tensor list (params, grads, states) a
// row of data pointers as int64, each tensor's size, the chunk table (chunk c covers elements
// [chunk_start[c], chunk_start[c] + kOptimChunk) of tensor chunk_tensor[c]) and per-tensor fp32
// hyper-parameters that depend on the tensor's own step count (computed on the host in float64,
// as torch does). One block updates one chunk.
//
// Update rules (g = -grad when maximize; "wd" adds weight_decay * p to g unless decoupled):
//   Adam:     m += (1-b1)(g-m); v = b2 v + (1-b2) g^2; [vmax = max(vmax, v)];
//             p = p*(1 - lr wd) if decoupled; p -= step_size * m / (sqrt(v|vmax)/bc2_sqrt + eps)
//   SGD:      buf = first ? d : momentum buf + (1-dampening) d; d = nesterov ? d + momentum buf : buf;
//             p -= lr d   (d = g + wd p; no buffer when momentum == 0)
//   Adagrad:  sum += g^2; p -= clr g / (sqrt(sum) + eps)
//   RMSprop:  sq = alpha sq + (1-alpha) g^2; [ga += (1-alpha)(g-ga); avg = sqrt(sq - ga^2) + eps]
//             else avg = sqrt(sq) + eps; [buf = momentum buf + g/avg; p -= lr buf] else p -= lr g/avg
//   AdaBound: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; [vmax = max(vmax, v), used as v];
//             p -= clamp(step_size / (sqrt(v) + eps), lower, upper) * m
// Master weights (Adam): with a master list (fp32), p is read from the master, the master gets
// the fp32 result and p its rounding to the param dtype, in the same pass.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

// Elements per chunk (one block). Small enough that 10M parameters give several blocks per SM.
constexpr int64_t kOptimChunk = 16384;

// Device-side tables of one launch (all pointers are device memory).
struct TensorTable {
  const int64_t* addresses;     // (num_lists, num_tensors) data pointers, list-major; 0 = absent
  const int64_t* sizes;         // (num_tensors,) elements
  const int64_t* chunk_tensor;  // (num_chunks,) tensor index
  const int64_t* chunk_start;   // (num_chunks,) first element, a multiple of kOptimChunk
  const float* scalars;         // (num_scalars, num_tensors) per-tensor hyper-parameters
  int64_t num_tensors;
  int64_t num_chunks;
  int64_t max_size;             // the largest tensor's size (sizes the block)
};

// Row order of TensorTable::addresses / ::scalars for each optimizer.
enum AdamList { kAdamParam, kAdamGrad, kAdamExpAvg, kAdamExpAvgSq, kAdamMaxExpAvgSq, kAdamMaster, kAdamLists };
enum AdamScalar { kAdamStepSize, kAdamBc2Sqrt, kAdamScalars };
enum SgdList { kSgdParam, kSgdGrad, kSgdBuf, kSgdLists };
enum AdagradList { kAdagradParam, kAdagradGrad, kAdagradSum, kAdagradLists };
enum AdagradScalar { kAdagradClr, kAdagradScalars };
enum RmspropList { kRmsParam, kRmsGrad, kRmsSquareAvg, kRmsGradAvg, kRmsBuf, kRmsLists };
enum AdaBoundList { kBoundParam, kBoundGrad, kBoundExpAvg, kBoundExpAvgSq, kBoundMaxExpAvgSq, kBoundLists };
enum AdaBoundScalar { kBoundStepSize, kBoundLower, kBoundUpper, kBoundScalars };

struct AdamParams {
  TensorTable table;
  float beta1, beta2, eps, weight_decay;
  float decay_factor;    // 1 - lr * weight_decay (decoupled)
  DType param_dtype;     // params and grads
  DType state_dtype;     // exp_avg(_sq), max_exp_avg_sq and the master: param_dtype or F32
  bool decoupled, amsgrad, maximize, has_master;
};

struct SgdParams {
  TensorTable table;
  float lr, momentum, dampening, weight_decay;
  DType dtype;           // params, grads and buffers
  bool nesterov, maximize, first;  // first: the buffers are set to d (torch's first step)
};

struct AdagradParams {
  TensorTable table;
  float eps, weight_decay;
  DType dtype;           // params, grads and sums
  bool maximize;
};

struct RmspropParams {
  TensorTable table;
  float lr, alpha, eps, weight_decay, momentum;
  DType dtype;           // params, grads and states
  bool centered, maximize;
};

struct AdaBoundParams {
  TensorTable table;
  float beta1, beta2, eps, weight_decay;
  DType dtype;           // params, grads and states
  bool amsbound;
};

// One launch on `stream` (a cudaStream_t); nothing when there are no chunks. Throw on invalid
// parameters or a failed launch. Never synchronize.
void multi_tensor_adam(const AdamParams& params, void* stream);
void multi_tensor_sgd(const SgdParams& params, void* stream);
void multi_tensor_adagrad(const AdagradParams& params, void* stream);
void multi_tensor_rmsprop(const RmspropParams& params, void* stream);
void multi_tensor_adabound(const AdaBoundParams& params, void* stream);

}  // namespace dlk
