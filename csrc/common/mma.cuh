// Warp-level matrix multiply-accumulate C += A·B of shape m16n8k16 on register fragments, the
// interface every dlkern kernel uses for tensor cores (csrc/emu/README.md: no raw mma in kernels).
//
// Fragments follow the PTX layouts of mma.m16n8k16 ("Matrix Fragments for mma.m16n8k16" in the
// PTX ISA); with g = lane / 4 and t = lane % 4, element i of a lane's fragment is
//   A (16x16, row-major) FragA::x[i], i < 8:  row g + 8 * ((i / 2) % 2),  col 2t + i % 2 + 8 * (i / 4)
//   B (16x8)             FragB::x[i], i < 4:  k   2t + i % 2 + 8 * (i / 2),  col g
//   C (16x8, fp32)       float c[i],  i < 4:  row g + 8 * (i / 2),        col 2t + i % 2
// so the fp32 C fragments of two neighbouring 16x8 tiles convert in registers into the A fragment
// of the next product (a_from_c), as FlashAttention keeps P in registers.
//
// Three implementations of mma_m16n8k16, one kernel source:
// * __half / __nv_bfloat16 on the GPU: one mma.sync PTX instruction (tensor cores, sm_80+).
// * float (GPU and emulation) and every type under DLK_EMULATION: mma_scalar, a warp-collective
//   fp32 product: each lane posts its fragments to shared memory, the warp synchronizes, and each
//   lane computes its four C elements with 16 fmaf each. fp16/bf16 products are exact in fp32 and
//   the tensor cores accumulate in fp32, so the emulation matches the instruction to rounding.
// Every lane of the warp must call these functions together (they hold __syncwarp), from blocks
// of at most kMmaMaxWarps warps along x.
#pragma once

#include <cstdint>

#include "common/dlk_cuda.cuh"

namespace dlk {

constexpr int kMmaMaxWarps = 4;

template <typename T>
struct alignas(16) FragA {
  T x[8];
};
template <typename T>
struct alignas(8) FragB {
  T x[4];
};

// ---- fragment loads from a row-major shared-memory tile with leading dimension ld (even) -------
// A = tile[0:16, 0:16] (rows of A are rows of the tile).
template <typename T>
__device__ __forceinline__ void load_a(FragA<T>& a, const T* tile, int ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    const Vec<T, 2> p =
        *reinterpret_cast<const Vec<T, 2>*>(tile + (g + 8 * ((i / 2) % 2)) * ld + 2 * t + 8 * (i / 4));
    a.x[i] = p.v[0];
    a.x[i + 1] = p.v[1];
  }
}

// B[k][n] = tile[n][k] (B is the transpose of the tile's first 8 rows: K in Q·Kᵀ).
template <typename T>
__device__ __forceinline__ void load_b(FragB<T>& b, const T* tile, int ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; i += 2) {
    const Vec<T, 2> p = *reinterpret_cast<const Vec<T, 2>*>(tile + g * ld + 2 * t + 8 * (i / 2));
    b.x[i] = p.v[0];
    b.x[i + 1] = p.v[1];
  }
}

// B[k][n] = tile[k][n] (B is the tile's first 16 rows, 8 columns: V in P·V).
template <typename T>
__device__ __forceinline__ void load_b_rows(FragB<T>& b, const T* tile, int ld) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 4; ++i) b.x[i] = tile[(2 * t + i % 2 + 8 * (i / 2)) * ld + g];
}

// The A fragment of the 16x16 matrix [lo | hi] whose halves are the C fragments of two 16x8
// tiles, rounded to T.
template <typename T>
__device__ __forceinline__ FragA<T> a_from_c(const float (&lo)[4], const float (&hi)[4]) {
  FragA<T> a;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a.x[i] = from_float<T>(lo[i % 2 + 2 * (i / 2)]);
    a.x[i + 4] = from_float<T>(hi[i % 2 + 2 * (i / 2)]);
  }
  return a;
}

// ---- the product ----------------------------------------------------------------------------
// c += a·b in fp32 by the warp's lanes together (see the header comment).
__device__ __forceinline__ void mma_scalar(float (&c)[4], const float (&a)[8], const float (&b)[4]) {
  // [warp][element][lane]: the posting stores of a warp hit 32 different banks.
  __shared__ float a_post[kMmaMaxWarps][8][32];
  __shared__ float b_post[kMmaMaxWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 8; ++i) a_post[warp][i][lane] = a[i];
#pragma unroll
  for (int i = 0; i < 4; ++i) b_post[warp][i][lane] = b[i];
  __syncwarp();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float acc = c[i];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      // The lane and element holding A[row][k] and B[k][col] (inverse of the layouts above).
      const int a_lane = (row % 8) * 4 + (k % 8) / 2, a_elem = k % 2 + 2 * (row / 8) + 4 * (k / 8);
      const int b_lane = col * 4 + (k % 8) / 2, b_elem = k % 2 + 2 * (k / 8);
      acc = fmaf(a_post[warp][a_elem][a_lane], b_post[warp][b_elem][b_lane], acc);
    }
    c[i] = acc;
  }
  __syncwarp();  // the posts are read before the next product overwrites them
}

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const FragA<T>& a, const FragB<T>& b) {
#ifndef DLK_EMULATION
  if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
    const uint32_t* ra = reinterpret_cast<const uint32_t*>(a.x);
    const uint32_t* rb = reinterpret_cast<const uint32_t*>(b.x);
    if constexpr (std::is_same_v<T, __half>) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
    }
  } else  // NOLINT: the scalar product below is the else branch on the GPU
#endif
  {
    float af[8], bf[4];
#pragma unroll
    for (int i = 0; i < 8; ++i) af[i] = to_float(a.x[i]);
#pragma unroll
    for (int i = 0; i < 4; ++i) bf[i] = to_float(b.x[i]);
    mma_scalar(c, af, bf);
  }
}

}  // namespace dlk
