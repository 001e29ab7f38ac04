// Host launchers of the fragment probes in fragments.cu (raw CPU pointers; dtype 0 fp32, 1 fp16,
// 2 bf16; one warp each; throw on failure).
#pragma once

namespace planted {
// One fragment load (probe: 0 load_a, 1 load_b, 2 load_b_rows, 3 load_a_x4, 4 load_b_x4,
// 5 load_b_rows_x4) from the (rows, ld) tile copied to shared memory; out (32, 8) fp32.
void fragment_load(int dtype, int probe, const void* tile, int rows, int ld, float* out);
// ldmatrix.x4 (16-bit dtypes) with lane l's row at offsets[l] of the (n,) shared copy of src;
// out (32, 4, 2) fp32.
void ldmatrix(int dtype, bool trans, const void* src, int n, const int* offsets, float* out);
// d = a·b + c through mma_m16n8k16 on per-lane fragments a (32, 8), b (32, 4), c, d (32, 4).
void mma_fragments(int dtype, const float* a, const float* b, const float* c, float* d);
// a_from_c on per-lane C fragments lo, hi (32, 4): out (32, 8).
void a_from_c(int dtype, const float* lo, const float* hi, float* out);
// cp.async of src (32, 4) in two groups (the second a zero fill), read back after
// cp_async_wait<wait_groups>: out (32, 8) (own chunk of group 0, then of group 1).
void async_copy(const float* src, int wait_groups, float* out);
}  // namespace planted
