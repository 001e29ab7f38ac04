// Small kernels for tests/emu: correct ones and ones with planted bugs that the CPU emulation must
// catch. Host launchers take raw pointers (the pybind11 module in bindings.cpp passes tensor data
// pointers) and throw std::runtime_error on a failed launch, as the dlkern launchers do.
#include <cstdint>

#include "common/dlk_cuda.cuh"
#include "common/mma.cuh"
#include "planted.h"

namespace planted {
namespace {

constexpr int kThreads = 256;

// Tree sum of x[blockIdx.x * 256 + t] in shared memory -> out[blockIdx.x]. With MISSING_SYNC the
// __syncthreads between filling the buffer and the first tree step is left out (the classic bug).
template <bool MISSING_SYNC>
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float buf[kThreads];
  const int t = threadIdx.x;
  buf[t] = x[blockIdx.x * kThreads + t];
  if (!MISSING_SYNC) __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Inclusive prefix sum of each warp's 32 ints with __shfl_up_sync (Kogge-Stone).
__global__ void warp_scan_kernel(const int* x, int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  int v = i < n ? x[i] : 0;
  for (int d = 1; d < 32; d <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += up;
  }
  if (i < n) out[i] = v;
}

// Lanes 0-15 shuffle with a mask of lanes 0-15 but read lane + 16, outside the mask.
__global__ void shuffle_outside_mask_kernel(const float* x, float* out) {
  const int lane = threadIdx.x & 31;
  float v = x[threadIdx.x];
  if (lane < 16) v = __shfl_sync(0x0000ffffu, v, lane + 16);
  out[threadIdx.x] = v;
}

// __syncthreads inside a branch only half of the block takes.
__global__ void divergent_barrier_kernel(const float* x, float* out) {
  __shared__ float buf[64];
  const int t = threadIdx.x;
  buf[t] = x[t];
  if (t < 32) __syncthreads();
  out[t] = buf[63 - t];
}

// Lanes 16-31 skip a full-mask shuffle and exit: lanes 0-15 wait for them forever.
__global__ void shuffle_missing_lanes_kernel(const float* x, float* out) {
  const int lane = threadIdx.x & 31;
  float v = x[threadIdx.x];
  if (lane < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Both halves of the block reach "a" __syncthreads, but not the same one.
__global__ void split_barrier_kernel(const float* x, float* out) {
  __shared__ float buf[64];
  const int t = threadIdx.x;
  buf[t] = x[t];
  if (t < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = buf[63 - t];
}

// Thread 0 spins until *flag becomes non-zero, without ever synchronizing.
__global__ void spin_kernel(const volatile int* flag) {
  while (*flag == 0) {
  }
}

// Writes n + 1 elements: an off-by-one out-of-bounds store.
__global__ void off_by_one_store_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = float(i);
}

// Records each thread's threadIdx / blockIdx / blockDim / gridDim into 12 ints at its global
// linear index.
__global__ void coordinates_kernel(int* out) {
  const int64_t block = blockIdx.x + int64_t(gridDim.x) * (blockIdx.y + int64_t(gridDim.y) * blockIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* o = out + 12 * (block * threads + t);
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                          blockDim.x, blockDim.y, blockDim.z, gridDim.x, gridDim.y, gridDim.z};
  for (int k = 0; k < 12; ++k) o[k] = int(v[k]);
}

// Dynamic shared memory: reverse each block's chunk of x through a shared buffer.
__global__ void reverse_kernel(const float* x, float* out) {
  DLK_DYNAMIC_SHARED(float, buf);
  const int t = threadIdx.x, n = blockDim.x;
  buf[t] = x[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = buf[n - 1 - t];
}

// The tensor-core wrapper (common/mma.cuh) on one warp: s = a · bᵀ (a (16, 16), b (16, 16):
// two 16x8 tiles through load_a / load_b), then o = s · v (s rounded to T through a_from_c, v
// (16, 8) through load_b_rows); s and o (16, 16) and (16, 8) fp32, row-major.
template <typename T>
__global__ void mma_chain_kernel(const T* a, const T* b, const T* v, float* s, float* o) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  dlk::FragA<T> fa;
  dlk::load_a(fa, a, 16);
  float c[2][4] = {}, d[4] = {};
  for (int n = 0; n < 2; ++n) {
    dlk::FragB<T> fb;
    dlk::load_b(fb, b + n * 8 * 16, 16);
    dlk::mma_m16n8k16(c[n], fa, fb);
    for (int i = 0; i < 4; ++i) s[(g + 8 * (i / 2)) * 16 + n * 8 + 2 * t + i % 2] = c[n][i];
  }
  dlk::FragB<T> fv;
  dlk::load_b_rows(fv, v, 8);
  dlk::mma_m16n8k16(d, dlk::a_from_c<T>(c[0], c[1]), fv);
  for (int i = 0; i < 4; ++i) o[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

// Fills and reads back `bytes` of dynamic shared memory (more than 48 KiB needs the opt-in).
__global__ void big_smem_kernel(int* out, int n) {
  DLK_DYNAMIC_SHARED(int, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;
  __syncthreads();
  int sum = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += buf[n - 1 - i];
  atomicAdd(out, sum);
}

}  // namespace

template <typename T>
void mma_chain_launch(const void* a, const void* b, const void* v, float* s, float* o) {
  auto kern = mma_chain_kernel<T>;
  DLK_LAUNCH(kern, 1, 32, 0, nullptr, static_cast<const T*>(a), static_cast<const T*>(b),
             static_cast<const T*>(v), s, o);
  dlk::check_launch("mma_chain_kernel");
}

void mma_chain(int dtype, const void* a, const void* b, const void* v, float* s, float* o) {
  if (dtype == 0) return mma_chain_launch<float>(a, b, v, s, o);
  if (dtype == 1) return mma_chain_launch<__half>(a, b, v, s, o);
  return mma_chain_launch<__nv_bfloat16>(a, b, v, s, o);
}

void big_smem(int* out, int bytes, int optin_bytes) {
  if (optin_bytes > 0 &&
      cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           optin_bytes) != cudaSuccess) {
    dlk::check_launch("cudaFuncSetAttribute");
  }
  DLK_LAUNCH(big_smem_kernel, 1, 128, size_t(bytes), nullptr, out, bytes / 4);
  dlk::check_launch("big_smem_kernel");
}

void block_sum(const float* x, float* out, int blocks, bool missing_sync) {
  auto kern = missing_sync ? block_sum_kernel<true> : block_sum_kernel<false>;
  DLK_LAUNCH(kern, blocks, kThreads, 0, nullptr, x, out);
  dlk::check_launch("block_sum_kernel");
}

void warp_scan(const int* x, int* out, int n) {
  DLK_LAUNCH(warp_scan_kernel, (n + 127) / 128, 128, 0, nullptr, x, out, n);
  dlk::check_launch("warp_scan_kernel");
}

void shuffle_outside_mask(const float* x, float* out) {
  DLK_LAUNCH(shuffle_outside_mask_kernel, 1, 32, 0, nullptr, x, out);
  dlk::check_launch("shuffle_outside_mask_kernel");
}

void divergent_barrier(const float* x, float* out) {
  DLK_LAUNCH(divergent_barrier_kernel, 1, 64, 0, nullptr, x, out);
  dlk::check_launch("divergent_barrier_kernel");
}

void shuffle_missing_lanes(const float* x, float* out) {
  DLK_LAUNCH(shuffle_missing_lanes_kernel, 1, 32, 0, nullptr, x, out);
  dlk::check_launch("shuffle_missing_lanes_kernel");
}

void split_barrier(const float* x, float* out) {
  DLK_LAUNCH(split_barrier_kernel, 1, 64, 0, nullptr, x, out);
  dlk::check_launch("split_barrier_kernel");
}

void spin(const int* flag) {
  DLK_LAUNCH(spin_kernel, 1, 1, 0, nullptr, flag);
  dlk::check_launch("spin_kernel");
}

void off_by_one_store(float* out, int n) {
  DLK_LAUNCH(off_by_one_store_kernel, (n + 1 + 63) / 64, 64, 0, nullptr, out, n);
  dlk::check_launch("off_by_one_store_kernel");
}

void coordinates(int* out, const unsigned grid[3], const unsigned block[3]) {
  DLK_LAUNCH(coordinates_kernel, dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), 0,
             nullptr, out);
  dlk::check_launch("coordinates_kernel");
}

void reverse(const float* x, float* out, int blocks, int threads) {
  DLK_LAUNCH(reverse_kernel, blocks, threads, threads * sizeof(float), nullptr, x, out);
  dlk::check_launch("reverse_kernel");
}

}  // namespace planted
