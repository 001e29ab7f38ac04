// Small portable helpers shared by the dlkern CUDA kernels.
//
// Everything a kernel file needs from the CUDA runtime goes through this header (launch, launch
// check, occupancy), so a CPU emulation build can replace these few definitions and compile the
// same kernel sources with a host compiler: it defines DLK_EMULATION, provides its own
// cuda_runtime.h / cuda_fp16.h / cuda_bf16.h (whose runtime calls check_launch and
// max_blocks_per_sm below use as they are), and
// defines DLK_LAUNCH and DLK_DYNAMIC_SHARED before this header is included (csrc/emu/README.md).
// Kernels themselves use only threadIdx/blockIdx/blockDim/gridDim, static __shared__ arrays,
// __syncthreads, full-mask __shfl_xor_sync, __half/__nv_bfloat16 conversions,
// expf/sqrtf/rsqrtf/fmaf and templates. No torch here.
//
// Math precision: the build has no --use_fast_math (dlkern/toolchain.py), so expf, sqrtf, `/`
// are the C library's accurate functions on the GPU as in the emulation. A kernel that wants an
// approximate function names it (dlk::exp2_approx below, __expf, __fdividef), with a comment
// saying why; the emulation provides each name (computed accurately: csrc/emu/README.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dtype.h"

// kernel<<<grid, block, smem, stream>>>(args...). A template kernel contains commas, so bind it
// first: `auto kern = my_kernel<T, ITEMS, RMS>; DLK_LAUNCH(kern, grid, block, 0, stream, ...);`
#ifndef DLK_LAUNCH
#define DLK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

// Dynamic shared memory (the launch's smem bytes) as a T*: `DLK_DYNAMIC_SHARED(float, buf);`.
// One byte array under one name, so kernels of different T may share a translation unit (extern
// __shared__ arrays of one name but different types do not compile). The emulation build
// defines its own (`extern __shared__` cannot work in host C++).
#ifndef DLK_DYNAMIC_SHARED
#define DLK_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char dlk_dynamic_smem_[]; \
  T* const name = reinterpret_cast<T*>(dlk_dynamic_smem_)
#endif

// Runtime flag -> compile-time constant NAME inside the lambda body (mamba / flash-attn style):
//   DLK_BOOL_SWITCH(p.is_rms, RMS, [&] { launch<T, RMS>(p); });
#define DLK_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                  \
    if (COND) {                          \
      constexpr bool NAME = true;        \
      return __VA_ARGS__();              \
    } else {                             \
      constexpr bool NAME = false;       \
      return __VA_ARGS__();              \
    }                                    \
  }()

namespace dlk {

// Values of T in one 16-byte (vectorized) access.
template <typename T>
constexpr int kVec = 16 / int(sizeof(T));

// f(T{}) for the storage type named by dtype: the runtime dtype becomes a template argument.
template <typename R, typename F>
R dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
  }
  throw std::invalid_argument("dlkern: unknown dtype");
}

// f(std::integral_constant<int, V>) with V = kVec<T> when vec, else V = 1.
template <typename T, typename F>
void dispatch_vec(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, kVec<T>>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// Throws (with the kernel's name) if the launch just made on this thread failed, e.g. a bad
// configuration or too many registers for the block size. Does not synchronize.
inline void check_launch(const char* kernel_name) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dlkern: launch of ") + kernel_name +
                             " failed: " + cudaGetErrorString(err));
  }
}

// How many blocks of `threads` threads of `kernel` fit on one SM at once (at least 1).
template <typename Kernel>
inline int max_blocks_per_sm(Kernel kernel, int threads) {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it so the next launch check does not report it
    blocks = 1;              // and assume one block per SM
  }
  return blocks > 0 ? blocks : 1;
}

// ---- approximate math, named where a kernel uses it ---------------------------------------------
// 2^x by one MUFU.EX2 (ex2.approx.ftz: max error 2 ulp, subnormals flushed to 0, 2^-inf = 0):
// what exp2f compiled to under --use_fast_math. The accurate exp2f adds a range check and two
// scalings for subnormal results, ~3 instructions per value in a softmax loop.
__device__ __forceinline__ float exp2_approx(float x) {
#ifdef DLK_EMULATION
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// The per-element gates (SiLU, the scan's z gate, WaveNet's sigmoid) and the scan's softplus:
// __expf / __fdividef, a few ulp (what --use_fast_math made of them); log1pf stays accurate.
__device__ __forceinline__ float sigmoid_approx(float x) {
  return __fdividef(1.f, 1.f + __expf(-x));
}
__device__ __forceinline__ float softplus_approx(float x) {
  return x <= 20.f ? log1pf(__expf(x)) : x;
}

// ---- Welford statistics ------------------------------------------------------------------------
struct Welford {
  float n, mean, m2;  // count, mean, sum of squared deviations
};

// Chan et al. merge of two partial statistics (either may be empty).
__device__ __forceinline__ Welford welford_merge(const Welford& a, const Welford& b) {
  if (b.n == 0.f) return a;
  if (a.n == 0.f) return b;
  const float n = a.n + b.n;
  const float d = b.mean - a.mean;
  const float fb = b.n / n;
  return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb};
}

// ---- conversions: all arithmetic is fp32; storage is float, __half or __nv_bfloat16 ----------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- 16-byte chunks as fp32 (4 fp32 or 8 fp16/bf16 values, one 128-bit access) --------------
// Why not Vec<T, V> and to_float/from_float per value: on a 16-bit type nvcc
// extracts each upper half with a PRMT before converting it and packs each converted value back
// with another PRMT, about 2 extra instructions per value in a streaming kernel. Here:
//  * bf16 -> fp32 is the value's bits in the upper half of a 32-bit word: one shift (lower half)
//    or one mask (upper half) per value;
//  * fp32 -> fp16/bf16 converts a pair with one cvt.rn.{f16x2,bf16x2}.f32 (sm_80+), the same
//    round-to-nearest-even as __float2half_rn / __float2bfloat16_rn;
//  * the chunk is a uint4, so a load or store stays one LDG.128 / STG.128.
// The emulation build computes the same bits with the scalar conversions.
template <typename T>
__device__ __forceinline__ uint4 load_chunk_bits(const T* p) {
  return *reinterpret_cast<const uint4*>(p);
}
// A plain store, not __stwb / __stcg: on sm_90 nvcc emits those as STG.E.128.STRONG.SM (strong,
// ordered like a volatile store), where this is a weak STG.E.128 in the row-norm kernels.
template <typename T>
__device__ __forceinline__ void store_chunk_bits(T* p, const uint4& c) {
  *reinterpret_cast<uint4*>(p) = c;
}

// The two values of a 32-bit word of 16-bit T (lower half first) as fp32.
template <typename T>
__device__ __forceinline__ void unpack_pair(unsigned w, float& lo, float& hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    lo = __uint_as_float(w << 16);
    hi = __uint_as_float(w & 0xffff0000u);
  } else {
    lo = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
    hi = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
}

// lo and hi rounded to 16-bit T (nearest even) in one 32-bit word, lo in the lower half.
template <typename T>
__device__ __forceinline__ unsigned pack_pair(float lo, float hi) {
#ifdef DLK_EMULATION
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           (unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
  } else {
    return unsigned(__half_as_ushort(__float2half_rn(lo))) |
           (unsigned(__half_as_ushort(__float2half_rn(hi))) << 16);
  }
#else
  unsigned w;  // cvt.rn.*x2.f32 d, a, b: a goes to the upper half, b to the lower
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
  }
  return w;
#endif
}

template <typename T>
__device__ __forceinline__ void unpack_chunk(const uint4& c, float (&v)[kVec<T>]) {
  const unsigned w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (std::is_same_v<T, float>) {
      v[j] = __uint_as_float(w[j]);
    } else {
      unpack_pair<T>(w[j], v[2 * j], v[2 * j + 1]);
    }
  }
}

template <typename T>
__device__ __forceinline__ uint4 pack_chunk(const float (&v)[kVec<T>]) {
  unsigned w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if constexpr (std::is_same_v<T, float>) {
      w[j] = __float_as_uint(v[j]);
    } else {
      w[j] = pack_pair<T>(v[2 * j], v[2 * j + 1]);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// V elements of T as one aligned unit: a 16-byte Vec is a single 128-bit load or store.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// V consecutive values as fp32 (V > 1: one aligned 16-byte access; the caller checks alignment).
template <typename T, int V>
__device__ __forceinline__ void load(const T* p, float (&v)[V]) {
  if constexpr (V == 1) {
    v[0] = to_float(*p);
  } else {
    const Vec<T, V> c = *reinterpret_cast<const Vec<T, V>*>(p);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = to_float(c.v[i]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const float (&v)[V]) {
  if constexpr (V == 1) {
    *p = from_float<T>(v[0]);
  } else {
    Vec<T, V> c;
#pragma unroll
    for (int i = 0; i < V; ++i) c.v[i] = from_float<T>(v[i]);
    *reinterpret_cast<Vec<T, V>*>(p) = c;
  }
}

// store<T, V> for an output the calling thread never reads back. In some kernels (the
// channel-norm apply, the affine coupling) nvcc splits a 16-byte store, plain Vec or uint4, into
// four 32-bit STG.E; __stwb / __stcg keep it whole but strong (STG.E.128.STRONG.SM), and inline
// PTX with a "memory" clobber keeps it whole but stops nvcc moving any load across it (the Adam
// kernel swelled). So: st.global.v4.b32 without a clobber, which is only sound where nothing in
// the thread reads the stored bytes afterwards (outputs written once).
template <typename T, int V>
__device__ __forceinline__ void store_output(T* p, const float (&v)[V]) {
#ifndef DLK_EMULATION
  if constexpr (V == kVec<T>) {
    const uint4 c = pack_chunk<T>(v);
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(c.x), "r"(c.y),
                 "r"(c.z), "r"(c.w));
    return;
  }
#endif
  store<T, V>(p, v);
}

// ---- reductions -----------------------------------------------------------------------------
// Butterfly sum: every lane ends with the same, bitwise identical total (each step adds the two
// halves; fp32 addition is commutative).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of `a` (and of `b`) over the whole block, returned to every thread, bitwise identical in
// all of them. Requires blockDim.x % 32 == 0 and every thread of the block to call it (it holds
// two __syncthreads). The trailing barrier lets the caller call it again right away.
__device__ __forceinline__ void block_sum2(float& a, float& b) {
  __shared__ float partial[2][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    partial[0][warp] = a;
    partial[1][warp] = b;
  }
  __syncthreads();
  a = lane < num_warps ? partial[0][lane] : 0.f;
  b = lane < num_warps ? partial[1][lane] : 0.f;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();
}

__device__ __forceinline__ float block_sum(float a) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  a = warp_sum(a);
  if (lane == 0) partial[warp] = a;
  __syncthreads();
  a = lane < num_warps ? partial[lane] : 0.f;
  a = warp_sum(a);
  __syncthreads();
  return a;
}

}  // namespace dlk
