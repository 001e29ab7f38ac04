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
}  // namespace planted
