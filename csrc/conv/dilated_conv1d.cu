// Dilated conv1d kernels and launchers (math: dilated_conv1d.h).
//
// Direct convolution on CUDA cores: one output element per thread (grid-stride, l fastest so a
// warp reads neighbouring x and writes neighbouring y; the weight row is a warp-wide broadcast).
// dx is the same gather with the transposed weight. dweight/dbias: one block per (co, ci, k) item
// (items past Cout*Cin*K are the biases), a fixed-order block reduction over (b, l)
// (deterministic). The Triton backend holds the tensor-core (implicit GEMM) version.
#include "conv/dilated_conv1d.h"

#include "conv/conv_common.cuh"

namespace dlk {
namespace {

using conv::kThreads;

struct Strides3 {
  int64_t b, c, l;
};

Strides3 strides3(const int64_t (&s)[3]) { return {s[0], s[1], s[2]}; }

// out[b, o, l] = sum_{i < I, k < K} w(o, i, k) * in[b, i, l + shift - k*dil*sign]; the forward
// (w = weight[o, i, k], shift = -left, sign = -1) and dx (w = weight[i, o, k], shift = left,
// sign = +1) differ only in how the weight is indexed and the direction of the taps.
template <typename T, bool TRANSPOSED>
__global__ void __launch_bounds__(kThreads) dilated_conv1d_kernel(
    // pointers
    const T* __restrict__ in, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ out,
    // sizes, strides
    int64_t B, int64_t I, int64_t O, int64_t L, int K, int dil, int left, Strides3 sin,
    Strides3 sout) {
  const int64_t total = B * O * L;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = idx % L, o = (idx / L) % O, b = idx / (L * O);
    float acc = bias != nullptr ? to_float(bias[o]) : 0.f;
    for (int k = 0; k < K; ++k) {
      const int64_t src = TRANSPOSED ? l + left - int64_t(k) * dil : l - left + int64_t(k) * dil;
      if (src < 0 || src >= L) continue;
      const T* inp = in + b * sin.b + src * sin.l;
      for (int64_t i = 0; i < I; ++i) {
        const T wv = TRANSPOSED ? weight[(i * O + o) * K + k] : weight[(o * I + i) * K + k];
        acc += to_float(wv) * to_float(inp[i * sin.c]);
      }
    }
    out[b * sout.b + o * sout.c + l * sout.l] = from_float<T>(acc);
  }
}

// One block per (co, ci, k) item, grid-stride; items >= Cout*Cin*K sum dy alone (dbias).
// Requires blockDim.x % 32 == 0 (block_sum).
template <typename T>
__global__ void __launch_bounds__(kThreads) dilated_conv1d_dweight_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ dweight,
    float* __restrict__ dbias,
    // sizes, strides
    int64_t B, int64_t Cin, int64_t Cout, int64_t L, int K, int dil, int left, Strides3 sdy,
    Strides3 sx, int64_t items) {
  const int64_t weights = Cout * Cin * K;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const bool is_bias = item >= weights;
    const int64_t co = is_bias ? item - weights : item / (Cin * K);
    const int64_t ci = (item / K) % Cin;
    const int64_t shift = int64_t(item % K) * dil - left;
    float acc = 0.f;
    for (int64_t n = threadIdx.x; n < B * L; n += blockDim.x) {
      const int64_t b = n / L, l = n % L;
      const float g = to_float(dy[b * sdy.b + co * sdy.c + l * sdy.l]);
      if (is_bias) {
        acc += g;
      } else if (l + shift >= 0 && l + shift < L) {
        acc += g * to_float(x[b * sx.b + ci * sx.c + (l + shift) * sx.l]);
      }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
      if (is_bias) {
        dbias[co] = acc;
      } else {
        dweight[item] = acc;
      }
    }
  }
}

// ---- host side --------------------------------------------------------------------------------
constexpr const char* kOp = "dilated_conv1d";

void check_sizes(int64_t B, int64_t Cin, int64_t Cout, int64_t L, int K, int dil, int left,
                 int num_sms) {
  conv::check(B >= 0 && Cin >= 0 && Cout >= 0 && L >= 0, kOp, "sizes must be >= 0");
  conv::check(K >= 1 && dil >= 1 && left >= 0 && int64_t(left) <= int64_t(K - 1) * dil, kOp,
              "need K >= 1, dilation >= 1 and 0 <= left <= (K - 1) * dilation");
  conv::check(num_sms >= 1, kOp, "num_sms must be >= 1");
}

template <typename T>
void fwd_launch(const DilatedConv1dFwdParams& p, cudaStream_t stream) {
  auto kern = dilated_conv1d_kernel<T, false>;
  DLK_LAUNCH(kern, conv::elementwise_grid(kern, p.B * p.Cout * p.L, p.num_sms), kThreads, 0, stream,
             static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
             static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.B, p.Cin, p.Cout, p.L, p.K,
             p.dilation, p.left, strides3(p.x_stride), strides3(p.y_stride));
  check_launch("dilated_conv1d_kernel");
}

template <typename T>
void bwd_launch(const DilatedConv1dBwdParams& p, cudaStream_t stream) {
  const T* dy = static_cast<const T*>(p.dy);
  if (p.dx != nullptr) {
    auto dx_kern = dilated_conv1d_kernel<T, true>;
    DLK_LAUNCH(dx_kern, conv::elementwise_grid(dx_kern, p.B * p.Cin * p.L, p.num_sms), kThreads,
               0, stream, dy, static_cast<const T*>(p.weight), static_cast<const T*>(nullptr),
               static_cast<T*>(p.dx), p.B, p.Cout, p.Cin, p.L, p.K, p.dilation, p.left,
               strides3(p.dy_stride), strides3(p.dx_stride));
    check_launch("dilated_conv1d_kernel (dx)");
  }
  auto kern = dilated_conv1d_dweight_kernel<T>;
  const int threads = int(std::clamp<int64_t>((p.B * p.L + 31) / 32 * 32, 32, kThreads));
  const int64_t items = p.Cout * p.Cin * p.K + (p.dbias != nullptr ? p.Cout : 0);
  if (items == 0) return;
  const int64_t fill = int64_t(p.num_sms) * max_blocks_per_sm(kern, threads);
  DLK_LAUNCH(kern, unsigned(std::min(items, fill)), threads, 0, stream, dy,
             static_cast<const T*>(p.x), p.dweight, p.dbias, p.B, p.Cin, p.Cout, p.L, p.K,
             p.dilation, p.left, strides3(p.dy_stride), strides3(p.x_stride), items);
  check_launch("dilated_conv1d_dweight_kernel");
}

}  // namespace

void dilated_conv1d_fwd(const DilatedConv1dFwdParams& p, void* stream) {
  check_sizes(p.B, p.Cin, p.Cout, p.L, p.K, p.dilation, p.left, p.num_sms);
  if (p.B * p.Cout * p.L == 0) return;
  conv::check(p.x && p.weight && p.y, kOp, "x, weight and y are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

void dilated_conv1d_bwd(const DilatedConv1dBwdParams& p, void* stream) {
  check_sizes(p.B, p.Cin, p.Cout, p.L, p.K, p.dilation, p.left, p.num_sms);
  conv::check(p.dy && p.x && p.weight && p.dweight, kOp, "dy, x, weight and dweight are required");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace dlk
