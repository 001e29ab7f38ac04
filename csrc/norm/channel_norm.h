// BatchNorm / GroupNorm (InstanceNorm = GroupNorm with G = C) over an (N, C, S) view of the input,
// S = the flattened spatial dims, any strides: the interface between the torch binding and the
// kernels in channel_norm_fwd.cu / channel_norm_bwd.cu. Plain C++: no CUDA and no torch headers.
//
// Statistics unit u of element (n, c, s): BatchNorm: u = c (over N*S elements); GroupNorm with G
// groups of cg = C/G channels: u = n*G + c/cg (over cg*S elements). All math in fp32.
// Forward:  xhat = (x - mean[u]) * rstd[u],  y = act(xhat * w[c] + b[c]),  act in
//   none/silu/gelu/relu (GELU: the exact erf form). With compute_stats: mean = mean(x),
//   rstd = 1/sqrt(var(x) + eps), var_unbiased = var * R/(R-1) (R elements per unit); else
//   mean/rstd are given (BatchNorm eval).
// Backward: g = dy * act'(p), p = xhat*w + b (g = dy without activation);
//   dweight[c] = sum g*xhat, dbias[c] = sum g (over n, s);
//   dx = rstd * (w*g - xhat*c1[u] - c2[u]) with c1 = mean_u(w*g*xhat), c2 = mean_u(w*g) when
//   has_c (batch statistics: BatchNorm training, GroupNorm); else dx = rstd * w * dy.
// Reductions are deterministic: fixed-order partial sums per split, merged in a fixed order; no
// atomics. Nothing is mutated (running statistics are the caller's business).
//
// Limits (checked): N*C, N*S and the element count of a statistics unit below 2^31 (offsets are
// int64, so the tensor itself may be larger); GroupNorm needs C % groups == 0.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

enum class ChannelNormKind { Batch, Group };
enum class Activation { None = 0, Silu = 1, Gelu = 2, Relu = 3 };  // Group only

// Element (n, c, s) of a tensor lies at n * stride.n + c * stride.c + s * stride.s (in elements;
// any value >= 0, e.g. 0 for an expanded dim).
struct NcsStrides {
  int64_t n, c, s;
};

struct ChannelNormFwdParams {
  // pointers
  const void* x;          // (N, C, S)
  const float* weight;    // (C,) fp32 contiguous, or nullptr
  const float* bias;      // (C,) fp32 contiguous, or nullptr
  void* y;                // (N, C, S)
  float* mean;            // (U,): written when compute_stats, else read
  float* rstd;            // (U,): written when compute_stats, else read
  float* var_unbiased;    // (U,) or nullptr; written when compute_stats
  float* workspace;       // channel_norm_fwd_workspace() floats (none needed: nullptr)
  // sizes and strides (elements)
  int64_t N, C, S;
  NcsStrides x_stride, y_stride;
  int64_t groups;  // Group: G, C % G == 0 (U = N*G); Batch: unused (U = C)
  // meta
  ChannelNormKind kind;
  Activation activation;
  bool compute_stats;
  float eps;
  DType dtype;    // of x and y
  int num_sms;    // streaming multiprocessors of the device (sizes the grids)
};

struct ChannelNormBwdParams {
  // pointers
  const void* dy;         // (N, C, S), own strides (may be 0: an expanded gradient)
  const void* x;          // (N, C, S)
  const float* weight;    // (C,) fp32 contiguous, or nullptr
  const float* bias;      // (C,) fp32 contiguous, or nullptr: only read to recompute act'
  const float* mean;      // (U,)
  const float* rstd;      // (U,)
  void* dx;               // (N, C, S)
  float* dweight;         // (C,) fp32, or nullptr when not wanted
  float* dbias;           // (C,) fp32, or nullptr when not wanted
  float* workspace;       // channel_norm_bwd_workspace() floats (none needed: nullptr)
  // sizes and strides (elements)
  int64_t N, C, S;
  NcsStrides dy_stride, x_stride, dx_stride;
  int64_t groups;
  // meta
  ChannelNormKind kind;
  Activation activation;
  bool has_c;     // batch statistics (c1, c2 terms): BatchNorm training; GroupNorm always
  DType dtype;    // of dy, x and dx
  int num_sms;
};

// Launch on `stream` (a cudaStream_t). Nothing is launched when N*C*S == 0. Throw
// std::invalid_argument / std::runtime_error on invalid parameters or a failed launch. Never
// synchronize.
void channel_norm_fwd(const ChannelNormFwdParams& params, void* stream);
void channel_norm_bwd(const ChannelNormBwdParams& params, void* stream);

// fp32 scratch floats the launch needs (split partials, per-unit coefficients); 0 when none. Every
// field except `workspace` must be filled in: the kernel choice (layout, vector width, splits)
// depends on them, pointers included.
int64_t channel_norm_fwd_workspace(const ChannelNormFwdParams& params);
int64_t channel_norm_bwd_workspace(const ChannelNormBwdParams& params);

}  // namespace dlk
