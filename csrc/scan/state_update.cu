// selective_state_update kernel and launcher (math: state_update.h).
//
// Memory-bound: the state (batch, dim, N) is read and written once, everything else is small. A
// channel's N states are spread over `lanes` neighbouring lanes (a power of two, 4 for N <= 16),
// each holding 4 consecutive states per access (one 16-byte load of an fp32 state row when the
// state is unit-stride and aligned), so a warp reads 32 x 16 contiguous bytes per access; the
// sum over n of C h is a shuffle butterfly within the channel's lanes. Each thread reads and
// writes the same state elements, so the in-place update needs no barrier. A 2-D grid
// (channel blocks, batch): no division per element, one per thread for the channel's group.
#include "scan/state_update.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {

constexpr int kThreads = 128;
constexpr int kPer = 4;                 // consecutive states per thread per access
constexpr int kMaxGridY = 65535;
constexpr unsigned kFullMask = 0xffffffffu;


// kPer values from `p` (stride `stride`) as fp32; zeros from index `limit` on (vec: one access).
template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t stride, int64_t limit, bool vec, float (&v)[kPer]) {
  if (vec) {
    load<T, kPer>(p, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) v[j] = j < limit ? to_float(p[j * stride]) : 0.f;
}

// kPer values to `p` as one aligned access, built from 32-bit words: in this kernel nvcc splits a
// plain vector assignment (Vec<float, 4> or uint4) into four 32-bit stores.
__device__ __forceinline__ unsigned bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

template <typename S>
__device__ __forceinline__ void store4(S* p, const float (&v)[kPer]) {
  unsigned w[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) w[j] = bits(from_float<S>(v[j]));
#ifdef DLK_EMULATION
  if constexpr (sizeof(S) == 4) {
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
  }
#else   // __stwb: an ordinary (write-back) store that nvcc emits as one vector instruction
  if constexpr (sizeof(S) == 4) {
    __stwb(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
  } else {
    __stwb(reinterpret_cast<uint2*>(p), make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16)));
  }
#endif
}

// kVec: unit-stride, aligned state rows and N % kPer == 0, so every access is one vector (a
// template constant: with a runtime flag nvcc split the vector store into four 32-bit ones).
template <typename T, typename S, bool kVec>
__global__ void __launch_bounds__(kThreads)
selective_state_update_kernel(const SelectiveStateUpdateParams p, int log2_lanes) {
  constexpr bool vec = kVec;
  const int lanes = 1 << log2_lanes;
  const int lane = threadIdx.x & (lanes - 1);
  const int64_t d = int64_t(blockIdx.x) * (kThreads >> log2_lanes) + (threadIdx.x >> log2_lanes);
  const bool live = d < p.dim;   // dead threads still join the shuffles
  const int64_t g = live ? int(d) / (int(p.dim) / int(p.groups)) : 0;   // dim < 2^31: 32-bit division
  const T* X = static_cast<const T*>(p.x);
  const T* DT = static_cast<const T*>(p.dt);
  S* state = static_cast<S*>(p.state);
  for (int64_t b = blockIdx.y; b < p.batch; b += gridDim.y) {   // block-uniform trip count
    float x = 0.f, dt = 0.f, partial = 0.f;
    if (live) {
      x = to_float(X[b * p.x_stride[0] + d * p.x_stride[1]]);
      dt = to_float(DT[b * p.dt_stride[0] + d * p.dt_stride[1]]) + (p.dt_bias ? p.dt_bias[d] : 0.f);
      if (p.dt_softplus) dt = softplus_approx(dt);
      const float dtx = dt * x;
      const int64_t sb = p.state_index ? int64_t(p.state_index[b]) : b;
      S* h_row = state + sb * p.state_stride[0] + d * p.state_stride[1];
      const int64_t bc_row = (b * p.groups + g) * p.N;
      const T* B_row = static_cast<const T*>(p.B) + bc_row;
      const T* C_row = static_cast<const T*>(p.C) + bc_row;
      const float* A_row = p.A + d * p.N;
      for (int64_t n0 = int64_t(lane) * kPer; n0 < p.N; n0 += int64_t(lanes) * kPer) {
        float h[kPer], a[kPer], Bv[kPer], Cv[kPer];
        const int64_t limit = p.N - n0;   // states past N load as 0 and are not stored
        load4(h_row + n0 * p.state_stride[2], p.state_stride[2], limit, vec, h);
        load4(A_row + n0, 1, limit, vec, a);
        load4(B_row + n0, 1, limit, vec, Bv);
        load4(C_row + n0, 1, limit, vec, Cv);
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          h[j] = __expf(dt * a[j]) * h[j] + dtx * Bv[j];  // __expf: as the scan's exp(Δ·A)
          partial += Cv[j] * h[j];
        }
        if constexpr (kVec) {
          store4(h_row + n0, h);
        } else {
#pragma unroll
          for (int j = 0; j < kPer; ++j)
            if (j < limit) h_row[(n0 + j) * p.state_stride[2]] = from_float<S>(h[j]);
        }
      }
    }
    for (int offset = lanes >> 1; offset > 0; offset >>= 1)   // sum over the channel's lanes
      partial += __shfl_xor_sync(kFullMask, partial, offset);
    if (live && lane == 0) {
      float y = partial + (p.D ? p.D[d] * x : 0.f);
      if (p.z) {
        const float z = to_float(static_cast<const T*>(p.z)[b * p.z_stride[0] + d * p.z_stride[1]]);
        y *= z * sigmoid_approx(z);
      }
      static_cast<T*>(p.out)[b * p.dim + d] = from_float<T>(y);
    }
  }
}

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern selective_state_update: ") + what);
}

// Lanes per channel: enough for N / kPer accesses, at least 4 (a warp's access stays 16-byte
// granular), at most a warp.
int log2_lanes_for(int64_t N) {
  int log2 = 2;
  while (log2 < 5 && (int64_t(1) << log2) * kPer < N) ++log2;
  return log2;
}

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % uintptr_t(bytes) == 0; }

template <typename T, typename S>
void launch(const SelectiveStateUpdateParams& p, cudaStream_t stream) {
  const int64_t* ss = p.state_stride;
  // one vector access per kPer states: unit-stride aligned state rows, contiguous A/B/C rows
  const bool vec = p.N % kPer == 0 && ss[2] == 1 && ss[0] % kPer == 0 && ss[1] % kPer == 0 &&
                   aligned(p.state, kPer * sizeof(S)) && aligned(p.A, kPer * sizeof(float)) &&
                   aligned(p.B, kPer * sizeof(T)) && aligned(p.C, kPer * sizeof(T));
  const int log2_lanes = log2_lanes_for(p.N);
  const int64_t per_block = kThreads >> log2_lanes;
  const dim3 grid(unsigned((p.dim + per_block - 1) / per_block),
                  unsigned(p.batch < kMaxGridY ? p.batch : kMaxGridY));
  DLK_BOOL_SWITCH(vec, kVec, [&] {
    auto kern = selective_state_update_kernel<T, S, kVec>;
    DLK_LAUNCH(kern, grid, kThreads, 0, stream, p, log2_lanes);
    check_launch("selective_state_update_kernel");
  });
}

}  // namespace

void selective_state_update(const SelectiveStateUpdateParams& p, void* stream) {
  check(p.batch >= 0 && p.dim >= 0 && p.N >= 1, "sizes must be batch, dim >= 0 and N >= 1");
  check(p.N <= kStateUpdateMaxState, "N must be at most 256");
  check(p.groups >= 1 && (p.dim == 0 || p.dim % p.groups == 0), "groups must divide dim");
  check(p.dim < (int64_t(1) << 31), "dim must be below 2^31");
  if (p.batch == 0 || p.dim == 0) return;
  check(p.state && p.x && p.dt && p.A && p.B && p.C && p.out, "state, x, dt, A, B, C and out are required");
  check(p.state_dtype == p.dtype || p.state_dtype == DType::F32, "the state must be float32 or x's dtype");
  const auto s = static_cast<cudaStream_t>(stream);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.state_dtype == DType::F32) {
      launch<T, float>(p, s);
    } else {
      launch<T, T>(p, s);
    }
  });
}

}  // namespace dlk
