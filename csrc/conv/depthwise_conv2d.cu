// Depthwise conv2d kernels and launchers (math: depthwise_conv2d.h).
//
// Forward and dx: one output element per thread (grid-stride), the linear index walking the
// unit-stride dimension fastest (ow for NCHW, c for channels_last) so a warp's loads and stores are
// coalesced; neighbouring windows overlap in L1. Square 3x3, 5x5 and 7x7 filters are compile-time
// sizes (unrolled taps); every other size up to 31x31 takes the runtime-loop instance. dweight and
// dbias: one block per (channel, tap) (tap KH*KW = the bias), a fixed-order block reduction over
// the output pixels (deterministic).
#include "conv/depthwise_conv2d.h"

#include "conv/conv_common.cuh"

namespace dlk {
namespace {

using conv::kThreads;

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides4(const int64_t (&s)[4]) { return {s[0], s[1], s[2], s[3]}; }

// Linear index -> (n, c, h, w) of an (N, C, H, W) grid; CL walks c fastest.
template <bool CL>
__device__ __forceinline__ void unflatten(int64_t i, int64_t C, int64_t H, int64_t W, int64_t& n,
                                          int64_t& c, int64_t& h, int64_t& w) {
  if (CL) {
    c = i % C;
    i /= C;
    w = i % W;
    i /= W;
    h = i % H;
    n = i / H;
  } else {
    w = i % W;
    i /= W;
    h = i % H;
    i /= H;
    c = i % C;
    n = i / C;
  }
}

// K > 0: a K x K filter known at compile time; K == 0: g.KH x g.KW at run time.
template <typename T, int K, bool CL>
__global__ void __launch_bounds__(kThreads) depthwise_conv2d_fwd_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ y,
    // geometry, strides
    DepthwiseConv2dGeometry g, Strides4 sx, Strides4 sy) {
  const int KH = K > 0 ? K : g.KH, KW = K > 0 ? K : g.KW;
  const int64_t total = g.N * g.C * g.OH * g.OW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, oh, ow;
    unflatten<CL>(i, g.C, g.OH, g.OW, n, c, oh, ow);
    const T* xc = x + n * sx.n + c * sx.c;
    const T* wc = weight + c * KH * KW;
    float acc = bias != nullptr ? to_float(bias[c]) : 0.f;
    const int64_t h0 = oh * g.stride[0] - g.pad[0], w0 = ow * g.stride[1] - g.pad[1];
#pragma unroll(K > 0 ? K : 1)
    for (int kh = 0; kh < KH; ++kh) {
      const int64_t ih = h0 + int64_t(kh) * g.dilation[0];
      if (ih < 0 || ih >= g.H) continue;
#pragma unroll(K > 0 ? K : 1)
      for (int kw = 0; kw < KW; ++kw) {
        const int64_t iw = w0 + int64_t(kw) * g.dilation[1];
        if (iw >= 0 && iw < g.W) acc += to_float(wc[kh * KW + kw]) * to_float(xc[ih * sx.h + iw * sx.w]);
      }
    }
    y[n * sy.n + c * sy.c + oh * sy.h + ow * sy.w] = from_float<T>(acc);
  }
}

template <typename T, int K, bool CL>
__global__ void __launch_bounds__(kThreads) depthwise_conv2d_dx_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ weight, T* __restrict__ dx,
    // geometry, strides
    DepthwiseConv2dGeometry g, Strides4 sdy, Strides4 sdx) {
  const int KH = K > 0 ? K : g.KH, KW = K > 0 ? K : g.KW;
  const int64_t total = g.N * g.C * g.H * g.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    unflatten<CL>(i, g.C, g.H, g.W, n, c, ih, iw);
    const T* dyc = dy + n * sdy.n + c * sdy.c;
    const T* wc = weight + c * KH * KW;
    float acc = 0.f;
#pragma unroll(K > 0 ? K : 1)
    for (int kh = 0; kh < KH; ++kh) {
      // image coordinates fit in int (32-bit division is much cheaper than 64-bit)
      const int th = int(ih) + g.pad[0] - kh * g.dilation[0];  // = oh * stride
      if (th < 0 || th % g.stride[0] != 0 || th / g.stride[0] >= g.OH) continue;
      const int64_t oh = th / g.stride[0];
#pragma unroll(K > 0 ? K : 1)
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = int(iw) + g.pad[1] - kw * g.dilation[1];
        if (tw < 0 || tw % g.stride[1] != 0 || tw / g.stride[1] >= g.OW) continue;
        acc += to_float(wc[kh * KW + kw]) * to_float(dyc[oh * sdy.h + int64_t(tw / g.stride[1]) * sdy.w]);
      }
    }
    dx[n * sdx.n + c * sdx.c + ih * sdx.h + iw * sdx.w] = from_float<T>(acc);
  }
}

// One block per (channel, tap), grid-stride; tap == KH*KW sums dy alone (dbias).
// Requires blockDim.x % 32 == 0 (block_sum).
template <typename T>
__global__ void __launch_bounds__(kThreads) depthwise_conv2d_dweight_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ dweight,
    float* __restrict__ dbias,
    // geometry, strides
    DepthwiseConv2dGeometry g, Strides4 sdy, Strides4 sx) {
  const int taps = g.KH * g.KW;
  const int64_t pixels = g.N * g.OH * g.OW;
  for (int64_t item = blockIdx.x; item < g.C * (taps + 1); item += gridDim.x) {
    const int64_t c = item / (taps + 1);
    const int tap = int(item % (taps + 1));
    const bool is_bias = tap == taps;
    const int64_t dh = is_bias ? 0 : int64_t(tap / g.KW) * g.dilation[0] - g.pad[0];
    const int64_t dw = is_bias ? 0 : int64_t(tap % g.KW) * g.dilation[1] - g.pad[1];
    float acc = 0.f;
    for (int64_t p = threadIdx.x; p < pixels; p += blockDim.x) {
      const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH, n = p / (g.OW * g.OH);
      const float gv = to_float(dy[n * sdy.n + c * sdy.c + oh * sdy.h + ow * sdy.w]);
      if (is_bias) {
        acc += gv;
        continue;
      }
      const int64_t ih = oh * g.stride[0] + dh, iw = ow * g.stride[1] + dw;
      if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
        acc += gv * to_float(x[n * sx.n + c * sx.c + ih * sx.h + iw * sx.w]);
      }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
      if (!is_bias) {
        dweight[c * taps + tap] = acc;
      } else if (dbias != nullptr) {
        dbias[c] = acc;
      }
    }
  }
}

// ---- host side --------------------------------------------------------------------------------
constexpr const char* kOp = "depthwise_conv2d";

// Channels-last: unit channel stride (the layout rule of the binding's outputs as well).
bool channels_last(const int64_t (&s)[4], int64_t C) { return s[1] == 1 && C > 1; }

// f(integral_constant<int, K>, bool_constant<CL>) with K in {3, 5, 7} for square filters, else 0.
template <typename F>
void dispatch_filter(const DepthwiseConv2dGeometry& g, bool cl, F&& f) {
  DLK_BOOL_SWITCH(cl, CL, [&] {
    const std::bool_constant<CL> layout{};
    if (g.KH == g.KW && g.KH == 3) return f(std::integral_constant<int, 3>{}, layout);
    if (g.KH == g.KW && g.KH == 5) return f(std::integral_constant<int, 5>{}, layout);
    if (g.KH == g.KW && g.KH == 7) return f(std::integral_constant<int, 7>{}, layout);
    return f(std::integral_constant<int, 0>{}, layout);
  });
}

template <typename T>
void fwd_launch(const DepthwiseConv2dFwdParams& p, cudaStream_t stream) {
  dispatch_filter(p.g, channels_last(p.x_stride, p.g.C), [&](auto ktag, auto ltag) {
    auto kern = depthwise_conv2d_fwd_kernel<T, decltype(ktag)::value, decltype(ltag)::value>;
    const int64_t total = p.g.N * p.g.C * p.g.OH * p.g.OW;
    DLK_LAUNCH(kern, conv::elementwise_grid(kern, total, p.num_sms), kThreads, 0, stream,
               static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
               static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.g, strides4(p.x_stride),
               strides4(p.y_stride));
    check_launch("depthwise_conv2d_fwd_kernel");
  });
}

template <typename T>
void bwd_launch(const DepthwiseConv2dBwdParams& p, cudaStream_t stream) {
  const T* dy = static_cast<const T*>(p.dy);
  dispatch_filter(p.g, channels_last(p.x_stride, p.g.C), [&](auto ktag, auto ltag) {
    auto kern = depthwise_conv2d_dx_kernel<T, decltype(ktag)::value, decltype(ltag)::value>;
    const int64_t total = p.g.N * p.g.C * p.g.H * p.g.W;
    DLK_LAUNCH(kern, conv::elementwise_grid(kern, total, p.num_sms), kThreads, 0, stream, dy,
               static_cast<const T*>(p.weight), static_cast<T*>(p.dx), p.g,
               strides4(p.dy_stride), strides4(p.dx_stride));
    check_launch("depthwise_conv2d_dx_kernel");
  });
  auto kern = depthwise_conv2d_dweight_kernel<T>;
  // Fewer threads for few pixels: block_sum needs whole warps.
  const int64_t pixels = p.g.N * p.g.OH * p.g.OW;
  const int threads = int(std::clamp<int64_t>((pixels + 31) / 32 * 32, 32, kThreads));
  const int64_t items = p.g.C * (int64_t(p.g.KH) * p.g.KW + 1);
  const int64_t fill = int64_t(p.num_sms) * max_blocks_per_sm(kern, threads);
  DLK_LAUNCH(kern, unsigned(std::min(items, fill)), threads, 0, stream, dy,
             static_cast<const T*>(p.x), p.dweight, p.dbias, p.g, strides4(p.dy_stride),
             strides4(p.x_stride));
  check_launch("depthwise_conv2d_dweight_kernel");
}

void check_geometry(const DepthwiseConv2dGeometry& g, int num_sms) {
  conv::check(g.N >= 0 && g.C >= 0 && g.H >= 0 && g.W >= 0 && g.OH >= 0 && g.OW >= 0, kOp,
              "sizes must be >= 0");
  conv::check(g.KH >= 1 && g.KW >= 1 && g.KH <= 31 && g.KW <= 31, kOp,
              "the filter must be 1x1 to 31x31");
  conv::check(g.stride[0] >= 1 && g.stride[1] >= 1 && g.dilation[0] >= 1 && g.dilation[1] >= 1 &&
                  g.pad[0] >= 0 && g.pad[1] >= 0,
              kOp, "stride and dilation must be >= 1, padding >= 0");
  conv::check(num_sms >= 1, kOp, "num_sms must be >= 1");
}

}  // namespace

void depthwise_conv2d_fwd(const DepthwiseConv2dFwdParams& p, void* stream) {
  check_geometry(p.g, p.num_sms);
  if (p.g.N * p.g.C * p.g.OH * p.g.OW == 0) return;
  conv::check(p.x && p.weight && p.y, kOp, "x, weight and y are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void depthwise_conv2d_bwd(const DepthwiseConv2dBwdParams& p, void* stream) {
  check_geometry(p.g, p.num_sms);
  if (p.g.C == 0) return;
  conv::check(p.dy && p.x && p.weight && p.dx && p.dweight, kOp,
              "dy, x, weight, dx and dweight are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
