// Depthwise conv2d kernels and launchers (math: depthwise_conv2d.h).
//
// Register-blocked forward, channels_last with a square 3x3/5x5/7x7 filter (ConvNeXt, MobileNet,
// EfficientNet); dx at unit stride and dilation is the same kernel over dy with the filter turned
// by 180 degrees. A thread owns kVecC channels (one 64/128-bit access) x kRun consecutive output
// columns x kRows output rows. At unit stride and dilation (ConvNeXt) it loads each input row's
// strip of kRun + K - 1 pixels once, converts it once, and uses each value for up to K x kRows
// taps of its outputs; otherwise (MobileNet's stride 2) it loads per tap, still vectorized over
// channels. The block's filter taps sit in shared memory as fp32 [tap][channel vector], one
// LDS.128 per tap. dweight/dbias under the same conditions (x and dy): each thread keeps one
// filter row's taps for its 4 channels in registers over a chunk of output rows, the chunks' fp32
// partial sums go to scratch, and a second kernel adds them in a fixed order (deterministic).
//
// Element-wise forward and dx (every other layout and filter): one output element per thread
// (grid-stride), the linear index walking the unit-stride dimension fastest (ow for NCHW, c for
// channels_last) so a warp's loads and stores are coalesced; neighbouring windows overlap in L1.
// Square 3x3, 5x5 and 7x7 filters are compile-time sizes (unrolled taps); every other size up to
// 31x31 takes the runtime-loop instance. Their dweight and dbias: one block per (channel, tap)
// (tap KH*KW = the bias), a fixed-order block reduction over the output pixels (deterministic).
#include "conv/depthwise_conv2d.h"

#include <cstdlib>
#include <limits>

#include "conv/conv_common.cuh"
#include "conv/depthwise_blocked.cuh"

namespace dlk {
namespace {

using conv::kThreads;
using namespace depthwise;  // the blocked kernels, Strides4 and the tile constants (depthwise_blocked.cuh)

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

// The register-blocked kernel's conditions: channels_last input and output, a square 3/5/7
// filter, whole channel vectors, every vector access aligned (pointers and pixel strides), and
// items and image coordinates within int.
template <typename T>
bool blocked_fits(const DepthwiseConv2dGeometry& g, const void* in, const int64_t (&s_in)[4],
                  const void* out, const int64_t (&s_out)[4]) {
  const int64_t align = int64_t(sizeof(T)) * kVecC;
  auto aligned = [&](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % align == 0; };
  auto whole = [&](const int64_t(&s)[4]) {
    return s[1] == 1 && s[0] % kVecC == 0 && s[2] % kVecC == 0 && s[3] % kVecC == 0;
  };
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool fits_int = g.N * g.OH * conv::cdiv(g.OW, kRun) <= kIntMax / 2 &&
                        g.H + std::abs(g.pad[0]) <= kIntMax / 2 && g.W + std::abs(g.pad[1]) <= kIntMax / 2 &&
                        g.OH * g.stride[0] <= kIntMax / 2 && g.OW * g.stride[1] <= kIntMax / 2;
  return g.KH == g.KW && (g.KH == 3 || g.KH == 5 || g.KH == 7) && g.C % kVecC == 0 && fits_int &&
         whole(s_in) && whole(s_out) && aligned(in) && aligned(out);
}

bool unit_geometry(const DepthwiseConv2dGeometry& g) {
  return g.stride[0] == 1 && g.stride[1] == 1 && g.dilation[0] == 1 && g.dilation[1] == 1;
}

// out = the depthwise conv of `in` over geometry g (FLIP: with the filter turned by 180 degrees).
template <typename T, bool FLIP>
void launch_blocked(const DepthwiseConv2dGeometry& g, const T* in, const T* weight, const T* bias, T* out,
                    const int64_t (&s_in)[4], const int64_t (&s_out)[4], int num_sms, cudaStream_t stream) {
  const bool unit = unit_geometry(g);
  const int vecs = int(g.C / kVecC);
  const int tile_vecs = std::min(vecs, kTileVecs);
  const dim3 block(tile_vecs, kBlockedThreads / tile_vecs);
  const unsigned tiles = unsigned(conv::cdiv(vecs, tile_vecs));
  const int64_t items = g.N * conv::cdiv(g.OH, unit ? kRows<true> : kRows<false>) * conv::cdiv(g.OW, kRun);
  dispatch_filter(g, true, [&](auto ktag, auto) {
    constexpr int K = decltype(ktag)::value;
    if constexpr (K > 0) {
      DLK_BOOL_SWITCH(unit, UNIT, [&] {
        if constexpr (UNIT || !FLIP) {
          auto kern = depthwise_conv2d_fwd_cl_kernel<T, K, UNIT, FLIP>;
          const int64_t fill = int64_t(num_sms) * max_blocks_per_sm(kern, int(block.x * block.y));
          const int64_t blocks = std::max<int64_t>(1, std::min(conv::cdiv(items, block.y),
                                                               conv::cdiv(fill, tiles)));
          DLK_LAUNCH(kern, dim3(unsigned(blocks), tiles), block, 0, stream, in, weight, bias, out, g,
                     strides4(s_in), strides4(s_out));
          check_launch("depthwise_conv2d_fwd_cl_kernel");
        }
      });
    }
  });
}

template <typename T>
bool fwd_launch_blocked(const DepthwiseConv2dFwdParams& p, cudaStream_t stream) {
  if (!blocked_fits<T>(p.g, p.x, p.x_stride, p.y, p.y_stride)) return false;
  launch_blocked<T, false>(p.g, static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
                           static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.x_stride, p.y_stride,
                           p.num_sms, stream);
  return true;
}

// dx at unit stride and dilation is a forward conv of dy with the filter turned by 180 degrees:
// dx[ih, iw] = sum w[kh, kw] dy[ih + ph - kh, iw + pw - kw] = sum w[K-1-a, K-1-b] dy[ih - (K-1-ph) + a, ...],
// so the (H, W) output over the (OH, OW) input with padding K - 1 - pad (negative when pad > K - 1:
// the window then starts inside dy).
template <typename T>
bool dx_launch_blocked(const DepthwiseConv2dBwdParams& p, cudaStream_t stream) {
  if (!unit_geometry(p.g)) return false;
  DepthwiseConv2dGeometry g = p.g;
  g.H = p.g.OH, g.W = p.g.OW, g.OH = p.g.H, g.OW = p.g.W;
  g.pad[0] = p.g.KH - 1 - p.g.pad[0], g.pad[1] = p.g.KW - 1 - p.g.pad[1];
  if (!blocked_fits<T>(g, p.dy, p.dy_stride, p.dx, p.dx_stride)) return false;
  launch_blocked<T, true>(g, static_cast<const T*>(p.dy), static_cast<const T*>(p.weight), nullptr,
                          static_cast<T*>(p.dx), p.dy_stride, p.dx_stride, p.num_sms, stream);
  return true;
}

// The blocked dweight's split: chunks of output rows, about two blocks per SM over all channel
// tiles (each chunk's partials are (K*K + 1) x C floats of scratch).
struct DweightPlan {
  int tile_vecs = 0, chunks = 0, rows_per_chunk = 0;
  unsigned tiles = 0;
};

template <typename T>
DweightPlan dweight_plan(const DepthwiseConv2dBwdParams& p) {
  DweightPlan plan;
  if (!blocked_fits<T>(p.g, p.x, p.x_stride, p.dy, p.dy_stride) || p.g.N * p.g.OH == 0) return plan;
  const int vecs = int(p.g.C / kVecC);
  plan.tile_vecs = std::min(vecs, kTileVecs);
  plan.tiles = unsigned(conv::cdiv(vecs, plan.tile_vecs));
  const int rows = int(p.g.N * p.g.OH);
  const int want = int(std::clamp<int64_t>(conv::cdiv(2 * int64_t(p.num_sms), plan.tiles), 1, rows));
  plan.rows_per_chunk = int(conv::cdiv(rows, want));
  plan.chunks = int(conv::cdiv(rows, plan.rows_per_chunk));
  return plan;
}

template <typename T>
bool dweight_launch_blocked(const DepthwiseConv2dBwdParams& p, cudaStream_t stream) {
  const DweightPlan plan = dweight_plan<T>(p);
  if (plan.chunks == 0) return false;
  conv::check(p.dweight_scratch != nullptr, kOp,
              "dweight_scratch is required (depthwise_conv2d_dweight_scratch floats)");
  const auto& g = p.g;
  const bool unit = unit_geometry(g);
  dispatch_filter(g, true, [&](auto ktag, auto) {
    constexpr int K = decltype(ktag)::value;
    if constexpr (K > 0) {
      DLK_BOOL_SWITCH(unit, UNIT, [&] {
        auto kern = depthwise_conv2d_dweight_cl_kernel<T, K, UNIT>;
        DLK_LAUNCH(kern, dim3(unsigned(plan.chunks), plan.tiles), dim3(plan.tile_vecs, K), 0, stream,
                   static_cast<const T*>(p.dy), static_cast<const T*>(p.x), p.dweight_scratch, g,
                   strides4(p.dy_stride), strides4(p.x_stride), plan.rows_per_chunk);
        check_launch("depthwise_conv2d_dweight_cl_kernel");
      });
    }
  });
  const int taps = g.KH * g.KW;
  auto sum = depthwise_conv2d_dweight_sum_kernel;
  const int64_t fill = int64_t(p.num_sms) * max_blocks_per_sm(sum, 32 * kSumGroups);
  const int64_t sum_blocks = std::max<int64_t>(1, std::min(conv::cdiv(g.C * (taps + 1), 32), fill));
  DLK_LAUNCH(sum, unsigned(sum_blocks), dim3(32, kSumGroups), 0, stream, p.dweight_scratch, p.dweight,
             p.dbias, g.C, taps, plan.chunks);
  check_launch("depthwise_conv2d_dweight_sum_kernel");
  return true;
}

template <typename T>
void fwd_launch(const DepthwiseConv2dFwdParams& p, cudaStream_t stream) {
  if (fwd_launch_blocked<T>(p, stream)) return;
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
  if (!dx_launch_blocked<T>(p, stream)) {
    dispatch_filter(p.g, channels_last(p.x_stride, p.g.C), [&](auto ktag, auto ltag) {
      auto kern = depthwise_conv2d_dx_kernel<T, decltype(ktag)::value, decltype(ltag)::value>;
      const int64_t total = p.g.N * p.g.C * p.g.H * p.g.W;
      DLK_LAUNCH(kern, conv::elementwise_grid(kern, total, p.num_sms), kThreads, 0, stream, dy,
                 static_cast<const T*>(p.weight), static_cast<T*>(p.dx), p.g,
                 strides4(p.dy_stride), strides4(p.dx_stride));
      check_launch("depthwise_conv2d_dx_kernel");
    });
  }
  if (dweight_launch_blocked<T>(p, stream)) return;
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

int64_t depthwise_conv2d_dweight_scratch(const DepthwiseConv2dBwdParams& p) {
  check_geometry(p.g, p.num_sms);
  return dispatch_dtype<int64_t>(p.dtype, [&](auto tag) {
    const DweightPlan plan = dweight_plan<decltype(tag)>(p);
    return int64_t(plan.chunks) * (int64_t(p.g.KH) * p.g.KW + 1) * p.g.C;
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
