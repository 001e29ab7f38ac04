// Causal depthwise conv1d kernels and launchers (math: causal_conv1d.h).
//
// Forward and dx: one output element per thread (grid-stride); the linear index walks the
// contiguous dimension fastest (l for channel-first x, d for channel-last x) so a warp reads
// neighbouring memory; the W taps of neighbouring threads overlap and hit L1. Under SiLU the
// backward recomputes z where it needs dz (W + 1 times per element: W <= 8 taps, cheap next to a
// second pass over memory). dweight/dbias: one block per channel, a fixed-order block reduction
// over (b, l) (deterministic).
#include "conv/causal_conv1d.h"

#include "conv/conv_common.cuh"

namespace dlk {
namespace {

using conv::kThreads;

// The optional inputs seen from one (b, d) row (EXT kernels): initial states (B, D, W - 1) and
// seq_idx (B, L), each nullptr when absent (a uniform branch per tap).
template <typename T>
struct RowExtras {
  const T* init;        // init + b*sib + d*sid, or nullptr
  int64_t sil;
  const int32_t* seq;   // seq + b*ssb, or nullptr
  int64_t ssl;
};

template <typename T>
struct Extras {
  const T* init;
  const int32_t* seq;
  int64_t sib, sid, sil, ssb, ssl;
  __device__ __forceinline__ RowExtras<T> row(int64_t b, int64_t d) const {
    return {init != nullptr ? init + b * sib + d * sid : nullptr, sil,
            seq != nullptr ? seq + b * ssb : nullptr, ssl};
  }
};

// seq_idx at l (0 without seq_idx).
template <typename T>
__device__ __forceinline__ int32_t seq_at(const RowExtras<T>& e, int64_t l) {
  return e.seq != nullptr ? e.seq[l * e.ssl] : 0;
}

// x at src seen from a position of sequence seq_l: initial states before 0 (or 0), 0 past L and,
// under seq_idx, 0 in another sequence.
template <typename T, int W>
__device__ __forceinline__ float tap(const T* xrow, int64_t sl, int64_t src, int64_t L,
                                     int32_t seq_l, const RowExtras<T>& e) {
  if (src < 0) return e.init != nullptr ? to_float(e.init[(src + W - 1) * e.sil]) : 0.f;
  if (src >= L || (e.seq != nullptr && e.seq[src * e.ssl] != seq_l)) return 0.f;
  return to_float(xrow[src * sl]);
}

// z at position l of one (b, d) row: xrow = x + b*sb + d*sd, w = weight + d*W.
template <typename T, int W, bool EXT>
__device__ __forceinline__ float conv_at(const T* xrow, int64_t sl, const T* w, float bias,
                                         int64_t l, int64_t L, const RowExtras<T>& e) {
  float acc = bias;
  if constexpr (EXT) {
    const int32_t seq_l = seq_at(e, l);
#pragma unroll
    for (int k = 0; k < W; ++k) acc += to_float(w[k]) * tap<T, W>(xrow, sl, l - (W - 1) + k, L, seq_l, e);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const int64_t src = l - (W - 1) + k;
      if (src >= 0 && src < L) acc += to_float(w[k]) * to_float(xrow[src * sl]);
    }
  }
  return acc;
}

// dL/dz at position l (0 outside [0, L); l < 0 only reaches here in EXT kernels).
template <typename T, int W, bool SILU, bool EXT>
__device__ __forceinline__ float dz_at(const T* dyrow, int64_t sdyl, const T* xrow, int64_t sxl,
                                       const T* w, float bias, int64_t l, int64_t L,
                                       const RowExtras<T>& e) {
  if (l >= L || (EXT && l < 0)) return 0.f;
  float g = to_float(dyrow[l * sdyl]);
  if (SILU) g *= conv::silu_grad(conv_at<T, W, EXT>(xrow, sxl, w, bias, l, L, e));
  return g;
}

// Linear index -> (b, d, l), the contiguous dimension fastest.
template <bool CL>
__device__ __forceinline__ void unflatten(int64_t i, int64_t D, int64_t L, int64_t& b, int64_t& d,
                                          int64_t& l) {
  if (CL) {
    d = i % D;
    l = (i / D) % L;
    b = i / (D * L);
  } else {
    l = i % L;
    d = (i / L) % D;
    b = i / (D * L);
  }
}

template <typename T>
__device__ __forceinline__ float bias_at(const T* bias, int64_t d) {
  return bias != nullptr ? to_float(bias[d]) : 0.f;
}

template <typename T, int W, bool SILU, bool CL, bool EXT>
__global__ void __launch_bounds__(kThreads) causal_conv1d_fwd_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ y, Extras<T> ext,
    // sizes, strides
    int64_t B, int64_t D, int64_t L, int64_t sxb, int64_t sxd, int64_t sxl, int64_t syb,
    int64_t syd, int64_t syl) {
  const int64_t n = B * D * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, d, l;
    unflatten<CL>(i, D, L, b, d, l);
    float z = conv_at<T, W, EXT>(x + b * sxb + d * sxd, sxl, weight + d * W, bias_at(bias, d), l,
                                 L, EXT ? ext.row(b, d) : RowExtras<T>{});
    if (SILU) z = conv::silu(z);
    y[b * syb + d * syd + l * syl] = from_float<T>(z);
  }
}

template <typename T, int W, bool SILU, bool CL, bool EXT>
__global__ void __launch_bounds__(kThreads) causal_conv1d_dx_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
    const T* __restrict__ bias, T* __restrict__ dx, Extras<T> ext,
    // sizes, strides
    int64_t B, int64_t D, int64_t L, int64_t sdyb, int64_t sdyd, int64_t sdyl, int64_t sxb,
    int64_t sxd, int64_t sxl, int64_t sdxb, int64_t sdxd, int64_t sdxl) {
  const int64_t n = B * D * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t b, d, l;
    unflatten<CL>(i, D, L, b, d, l);
    const T* w = weight + d * W;
    const T* dyrow = dy + b * sdyb + d * sdyd;
    const T* xrow = x + b * sxb + d * sxd;
    const float bv = bias_at(bias, d);
    const RowExtras<T> e = EXT ? ext.row(b, d) : RowExtras<T>{};
    const int32_t seq_l = EXT ? seq_at(e, l) : 0;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < W; ++j) {  // dz at l + j meets tap W - 1 - j (unless another sequence's)
      if (EXT && e.seq != nullptr && l + j < L && e.seq[(l + j) * e.ssl] != seq_l) continue;
      acc += to_float(w[W - 1 - j]) *
             dz_at<T, W, SILU, EXT>(dyrow, sdyl, xrow, sxl, w, bv, l + j, L, e);
    }
    dx[b * sdxb + d * sdxd + l * sdxl] = from_float<T>(acc);
  }
}

// dinitial_states[b, d, i] (contiguous): dx's formula at position i - (W - 1) < 0.
template <typename T, int W, bool SILU>
__global__ void __launch_bounds__(kThreads) causal_conv1d_dinit_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
    const T* __restrict__ bias, T* __restrict__ dinit, Extras<T> ext,
    // sizes, strides
    int64_t B, int64_t D, int64_t L, int64_t sdyb, int64_t sdyd, int64_t sdyl, int64_t sxb,
    int64_t sxd, int64_t sxl) {
  if constexpr (W > 1) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * D * (W - 1);
         i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t k = i % (W - 1), d = (i / (W - 1)) % D, b = i / ((W - 1) * D);
      const T* w = weight + d * W;
      const float bv = bias_at(bias, d);
      const RowExtras<T> e = ext.row(b, d);
      float acc = 0.f;
#pragma unroll
      for (int j = 1; j < W; ++j) {
        acc += to_float(w[W - 1 - j]) * dz_at<T, W, SILU, true>(dy + b * sdyb + d * sdyd, sdyl,
                                                                x + b * sxb + d * sxd, sxl, w, bv,
                                                                k - (W - 1) + j, L, e);
      }
      dinit[i] = from_float<T>(acc);
    }
  }
}

// One block per channel (grid-stride over D); requires blockDim.x % 32 == 0 (block_sum).
template <typename T, int W, bool SILU, bool EXT>
__global__ void __launch_bounds__(kThreads) causal_conv1d_dweight_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ weight,
    const T* __restrict__ bias, float* __restrict__ dweight, float* __restrict__ dbias,
    Extras<T> ext,
    // sizes, strides
    int64_t B, int64_t D, int64_t L, int64_t sdyb, int64_t sdyd, int64_t sdyl, int64_t sxb,
    int64_t sxd, int64_t sxl) {
  for (int64_t d = blockIdx.x; d < D; d += gridDim.x) {
    const T* w = weight + d * W;
    const float bv = bias_at(bias, d);
    float acc[W];
#pragma unroll
    for (int k = 0; k < W; ++k) acc[k] = 0.f;
    float accb = 0.f;
    for (int64_t i = threadIdx.x; i < B * L; i += blockDim.x) {
      const int64_t b = i / L, l = i % L;
      const T* xrow = x + b * sxb + d * sxd;
      const RowExtras<T> e = EXT ? ext.row(b, d) : RowExtras<T>{};
      const float g =
          dz_at<T, W, SILU, EXT>(dy + b * sdyb + d * sdyd, sdyl, xrow, sxl, w, bv, l, L, e);
      accb += g;
      if constexpr (EXT) {
        const int32_t seq_l = seq_at(e, l);
#pragma unroll
        for (int k = 0; k < W; ++k) acc[k] += g * tap<T, W>(xrow, sxl, l - (W - 1) + k, L, seq_l, e);
      } else {
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const int64_t src = l - (W - 1) + k;
          if (src >= 0) acc[k] += g * to_float(xrow[src * sxl]);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float s = block_sum(acc[k]);
      if (threadIdx.x == 0) dweight[d * W + k] = s;
    }
    accb = block_sum(accb);
    if (threadIdx.x == 0 && dbias != nullptr) dbias[d] = accb;
  }
}

// One token against a (B, D, W - 1) state: the state shifts by one in registers.
template <typename T, int W, bool SILU>
__global__ void __launch_bounds__(kThreads) causal_conv1d_update_kernel(
    // pointers
    const T* __restrict__ x, T* __restrict__ state, const T* __restrict__ weight,
    const T* __restrict__ bias, T* __restrict__ y,
    // sizes, strides
    int64_t B, int64_t D, int64_t sxb, int64_t sxd, int64_t ssb, int64_t ssd, int64_t ssw,
    int64_t syb, int64_t syd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / D, d = i % D;
    const T* w = weight + d * W;
    T* s = state + b * ssb + d * ssd;
    T prev = x[b * sxb + d * sxd];
    float acc = bias_at(bias, d) + to_float(w[W - 1]) * to_float(prev);
#pragma unroll
    for (int k = W - 2; k >= 0; --k) {  // the new state is (s[1], ..., s[W-2], x)
      const T cur = s[k * ssw];
      acc += to_float(w[k]) * to_float(cur);
      s[k * ssw] = prev;
      prev = cur;
    }
    if (SILU) acc = conv::silu(acc);
    y[b * syb + d * syd] = from_float<T>(acc);
  }
}

// L tokens, a state of S slots, circular buffer and state pool (the math: causal_conv1d.h). One
// thread per (b, d): every output is computed from the old state before the state is written.
template <typename T, int W, bool SILU>
__global__ void __launch_bounds__(kThreads) causal_conv1d_update_multi_kernel(
    // pointers
    const T* __restrict__ x, T* __restrict__ state, const T* __restrict__ weight,
    const T* __restrict__ bias, const int32_t* __restrict__ lens,
    const int32_t* __restrict__ rows, T* __restrict__ y,
    // sizes, strides
    int64_t B, int64_t D, int64_t L, int64_t S, int64_t sxb, int64_t sxd, int64_t sxl,
    int64_t ssb, int64_t ssd, int64_t ssw, int64_t syb, int64_t syd, int64_t syl, int64_t slens,
    int64_t srows) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / D, d = i % D;
    const int64_t row = rows != nullptr ? int64_t(rows[b * srows]) : b;
    const T* xr = x + b * sxb + d * sxd;
    T* yr = y + b * syb + d * syd;
    if (row < 0) {  // padding slot
      for (int64_t t = 0; t < L; ++t) yr[t * syl] = from_float<T>(0.f);
      continue;
    }
    T* s = state + row * ssb + d * ssd;
    const int64_t base = lens != nullptr ? int64_t(lens[b * slens]) : 0;
    const T* w = weight + d * W;
    const float bv = bias_at(bias, d);
    for (int64_t t = 0; t < L; ++t) {
      float acc = bv;
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const int64_t p = t - (W - 1) + k;  // p >= -(W - 1) >= -S
        const T v = p >= 0 ? xr[p * sxl] : s[((base + p + S) % S) * ssw];
        acc += to_float(w[k]) * to_float(v);
      }
      if (SILU) acc = conv::silu(acc);
      yr[t * syl] = from_float<T>(acc);
    }
    if (lens != nullptr) {
      for (int64_t t = L > S ? L - S : 0; t < L; ++t) s[((base + t) % S) * ssw] = xr[t * sxl];
    } else {
      // ascending j: slot j + L is read before any write reaches it
      for (int64_t j = 0; j < S; ++j) s[j * ssw] = j + L < S ? s[(j + L) * ssw] : xr[(j + L - S) * sxl];
    }
  }
}

// ---- host side --------------------------------------------------------------------------------
constexpr const char* kOp = "causal_conv1d";

// Channel-last: d is the unit-stride dimension and l is not.
bool channel_last(const int64_t (&s)[3]) { return s[1] == 1 && s[2] != 1; }

template <typename F>
void dispatch_width_silu(int width, bool silu, F&& f) {
  conv::dispatch_int<kCausalConvMaxWidth>(width, [&](auto wtag) {
    DLK_BOOL_SWITCH(silu, SILU, [&] { f(wtag, std::bool_constant<SILU>{}); });
  });
}

template <typename T>
Extras<T> extras(const void* init, const int32_t* seq, const int64_t (&si)[3],
                 const int64_t (&ss)[2]) {
  return {static_cast<const T*>(init), seq, si[0], si[1], si[2], ss[0], ss[1]};
}

template <typename T>
void fwd_launch(const CausalConv1dFwdParams& p, cudaStream_t stream) {
  const Extras<T> ext = extras<T>(p.initial_states, p.seq_idx, p.init_stride, p.seq_stride);
  dispatch_width_silu(p.width, p.silu, [&](auto wtag, auto stag) {
    constexpr int W = decltype(wtag)::value;
    constexpr bool SILU = decltype(stag)::value;
    DLK_BOOL_SWITCH(p.initial_states != nullptr || p.seq_idx != nullptr, EXT, [&] {
      DLK_BOOL_SWITCH(channel_last(p.x_stride), CL, [&] {
        auto kern = causal_conv1d_fwd_kernel<T, W, SILU, CL, EXT>;
        DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.D * p.L, p.num_sms), kThreads, 0,
                   stream, static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
                   static_cast<const T*>(p.bias), static_cast<T*>(p.y), ext, p.B, p.D, p.L,
                   p.x_stride[0], p.x_stride[1], p.x_stride[2], p.y_stride[0], p.y_stride[1],
                   p.y_stride[2]);
        check_launch("causal_conv1d_fwd_kernel");
      });
    });
  });
}

template <typename T>
void bwd_launch(const CausalConv1dBwdParams& p, cudaStream_t stream) {
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t* sdy = p.dy_stride;
  const int64_t* sx = p.x_stride;
  const Extras<T> ext = extras<T>(p.initial_states, p.seq_idx, p.init_stride, p.seq_stride);
  dispatch_width_silu(p.width, p.silu, [&](auto wtag, auto stag) {
    constexpr int W = decltype(wtag)::value;
    constexpr bool SILU = decltype(stag)::value;
    DLK_BOOL_SWITCH(p.initial_states != nullptr || p.seq_idx != nullptr, EXT, [&] {
      DLK_BOOL_SWITCH(channel_last(p.x_stride), CL, [&] {
        auto kern = causal_conv1d_dx_kernel<T, W, SILU, CL, EXT>;
        DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.D * p.L, p.num_sms), kThreads, 0,
                   stream, dy, x, w, bias, static_cast<T*>(p.dx), ext, p.B, p.D, p.L, sdy[0],
                   sdy[1], sdy[2], sx[0], sx[1], sx[2], p.dx_stride[0], p.dx_stride[1],
                   p.dx_stride[2]);
        check_launch("causal_conv1d_dx_kernel");
      });
      auto kern = causal_conv1d_dweight_kernel<T, W, SILU, EXT>;
      const int64_t fill = int64_t(p.num_sms) * max_blocks_per_sm(kern, kThreads);
      DLK_LAUNCH(kern, unsigned(std::min(p.D, fill)), kThreads, 0, stream, dy, x, w, bias,
                 p.dweight, p.dbias, ext, p.B, p.D, p.L, sdy[0], sdy[1], sdy[2], sx[0], sx[1],
                 sx[2]);
      check_launch("causal_conv1d_dweight_kernel");
    });
    if (p.initial_states != nullptr && W > 1) {
      auto kern = causal_conv1d_dinit_kernel<T, W, SILU>;
      DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.D * (W - 1), p.num_sms), kThreads, 0,
                 stream, dy, x, w, bias, static_cast<T*>(p.dinitial_states), ext, p.B, p.D, p.L,
                 sdy[0], sdy[1], sdy[2], sx[0], sx[1], sx[2]);
      check_launch("causal_conv1d_dinit_kernel");
    }
  });
}

template <typename T>
void update_launch(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  const bool one_token = p.L == 1 && p.S == p.width - 1 && p.cache_seqlens == nullptr &&
                         p.state_indices == nullptr;
  dispatch_width_silu(p.width, p.silu, [&](auto wtag, auto stag) {
    constexpr int W = decltype(wtag)::value;
    constexpr bool SILU = decltype(stag)::value;
    if (one_token) {
      auto kern = causal_conv1d_update_kernel<T, W, SILU>;
      DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.D, p.num_sms), kThreads, 0, stream,
                 static_cast<const T*>(p.x), static_cast<T*>(p.state),
                 static_cast<const T*>(p.weight), static_cast<const T*>(p.bias),
                 static_cast<T*>(p.y), p.B, p.D, p.x_stride[0], p.x_stride[1], p.state_stride[0],
                 p.state_stride[1], p.state_stride[2], p.y_stride[0], p.y_stride[1]);
      check_launch("causal_conv1d_update_kernel");
      return;
    }
    auto kern = causal_conv1d_update_multi_kernel<T, W, SILU>;
    DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.D, p.num_sms), kThreads, 0, stream,
               static_cast<const T*>(p.x), static_cast<T*>(p.state),
               static_cast<const T*>(p.weight), static_cast<const T*>(p.bias), p.cache_seqlens,
               p.state_indices, static_cast<T*>(p.y), p.B, p.D, p.L, p.S, p.x_stride[0],
               p.x_stride[1], p.x_stride[2], p.state_stride[0], p.state_stride[1],
               p.state_stride[2], p.y_stride[0], p.y_stride[1], p.y_stride[2], p.lens_stride,
               p.indices_stride);
    check_launch("causal_conv1d_update_multi_kernel");
  });
}

void check_common(int64_t B, int64_t D, int width, int num_sms) {
  conv::check(B >= 0 && D >= 0, kOp, "sizes must be >= 0");
  conv::check(width >= 1 && width <= kCausalConvMaxWidth, kOp, "width must be in [1, 8]");
  conv::check(num_sms >= 1, kOp, "num_sms must be >= 1");
}

}  // namespace

void causal_conv1d_fwd(const CausalConv1dFwdParams& p, void* stream) {
  check_common(p.B, p.D, p.width, p.num_sms);
  if (p.B * p.D * p.L == 0) return;
  conv::check(p.x && p.weight && p.y, kOp, "x, weight and y are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void causal_conv1d_bwd(const CausalConv1dBwdParams& p, void* stream) {
  check_common(p.B, p.D, p.width, p.num_sms);
  if (p.D == 0) return;
  conv::check(p.dy && p.x && p.weight && p.dx && p.dweight, kOp,
              "dy, x, weight, dx and dweight are required");
  conv::check(!p.initial_states || p.dinitial_states, kOp,
              "dinitial_states is required with initial_states");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void causal_conv1d_update(const CausalConv1dUpdateParams& p, void* stream) {
  check_common(p.B, p.D, p.width, p.num_sms);
  conv::check(p.L >= 0 && p.S >= p.width - 1, kOp, "the state needs S >= W - 1 slots");
  conv::check(!p.cache_seqlens || p.S >= 1, kOp, "a circular buffer needs S >= 1");
  if (p.B * p.D * p.L == 0) return;
  conv::check(p.x && p.weight && p.y && (p.state || p.width == 1), kOp,
              "x, state, weight and y are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    update_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
