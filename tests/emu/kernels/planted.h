// Host launchers of the test kernels in planted.cu (raw CPU pointers; throw on failure).
#pragma once

namespace planted {
void block_sum(const float* x, float* out, int blocks, bool missing_sync);  // x: (blocks, 256)
void warp_scan(const int* x, int* out, int n);  // inclusive scan within each warp of 32
void shuffle_outside_mask(const float* x, float* out);  // x, out: (32,)
void divergent_barrier(const float* x, float* out);     // x, out: (64,)
void shuffle_missing_lanes(const float* x, float* out); // x, out: (32,)
void split_barrier(const float* x, float* out);         // x, out: (64,)
void spin(const int* flag);                             // returns once *flag != 0
void off_by_one_store(float* out, int n);               // out: (n,), writes out[n] too
void coordinates(int* out, const unsigned grid[3], const unsigned block[3]);  // (threads, 12)
void reverse(const float* x, float* out, int blocks, int threads);  // dynamic shared memory
// s = a · bᵀ, o = s · v through common/mma.cuh (dtype 0 fp32, 1 fp16, 2 bf16): a, b (16, 16),
// v (16, 8) in that dtype; s (16, 16), o (16, 8) fp32.
void mma_chain(int dtype, const void* a, const void* b, const void* v, float* s, float* o);
void big_smem(int* out, int bytes, int optin_bytes);  // out: (1,) += sum of 0..bytes/4-1
}  // namespace planted
