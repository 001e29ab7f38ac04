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
#include <cstring>

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

// ---- ldmatrix: warp-collective 8x8 matrix loads (16-bit types) ---------------------------------
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 (PTX ISA "Warp-level matrix load instruction:
// ldmatrix"): lane l supplies the address of row l % 8 of matrix l / 8 (8 contiguous 16-bit
// values, 16-byte aligned, in shared memory). Register r of lane l receives the two values of
// matrix r at row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half first); with kTrans the
// matrix is read column-major: column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1. One instruction
// replaces 4 (A) or 8 (B pairs) 32-bit loads, or 16 16-bit loads plus packing (B of V).
// Under DLK_EMULATION: each lane posts its row address, the warp meets at __syncwarp, and each
// lane reads its values through the posted addresses (all lanes must call it together, in blocks
// of at most kMmaMaxWarps warps along x, like mma_m16n8k16).
template <bool kTrans, typename T>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const T* row) {
  static_assert(sizeof(T) == 2, "ldmatrix loads 16-bit elements");
#ifdef DLK_EMULATION
  __shared__ const T* ldsm_post[kMmaMaxWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) __trap();  // misaligned row: undefined on the GPU
  ldsm_post[warp][lane] = row;
  __syncwarp();
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    uint16_t v[2];
    for (int e = 0; e < 2; ++e) {
      // The (row, column) of the matrix this lane receives, as written above.
      const int mr = kTrans ? 2 * (lane % 4) + e : lane / 4, mc = kTrans ? lane / 4 : 2 * (lane % 4) + e;
      std::memcpy(&v[e], ldsm_post[warp][8 * m + mr] + mc, 2);
    }
    r[m] = uint32_t(v[0]) | (uint32_t(v[1]) << 16);
  }
  __syncwarp();  // the posts are read before the next load overwrites them
#else
  const uint32_t addr = uint32_t(__cvta_generic_to_shared(row));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
#endif
}

// The fragment loads of the tiles an attention or GEMM main loop streams, one ldmatrix.x4 each
// for 16-bit T (the rows of every matrix start 16-byte aligned: tile and ld multiples of 8
// elements), the 32-bit loads above for fp32. All lanes call them together.
//
// A = tile[0:16, 0:16]: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15) give a0a1, a2a3, a4a5, a6a7.
template <typename T>
__device__ __forceinline__ void load_a_x4(FragA<T>& a, const T* tile, int ld) {
  if constexpr (sizeof(T) == 2) {
    const int lane = threadIdx.x & 31, m = lane / 8;
    uint32_t r[4];
    ldmatrix_x4<false>(r, tile + (lane % 8 + 8 * (m % 2)) * ld + 8 * (m / 2));
    std::memcpy(a.x, r, 16);
  } else {
    load_a(a, tile, ld);
  }
}

// b[j][k][n] = tile[8j + n][k], j < 2 (two n-tiles of B = tileᵀ; K in Q·Kᵀ): matrices
// (rows 0-7, cols 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15) give b[0] b0b1, b[0] b2b3, b[1] ...
template <typename T>
__device__ __forceinline__ void load_b_x4(FragB<T> (&b)[2], const T* tile, int ld) {
  if constexpr (sizeof(T) == 2) {
    const int lane = threadIdx.x & 31, m = lane / 8;
    uint32_t r[4];
    ldmatrix_x4<false>(r, tile + (lane % 8 + 8 * (m / 2)) * ld + 8 * (m % 2));
    std::memcpy(b[0].x, r, 8);
    std::memcpy(b[1].x, r + 2, 8);
  } else {
    load_b(b[0], tile, ld);
    load_b(b[1], tile + 8 * ld, ld);
  }
}

// b[j][k][n] = tile[k][8j + n], j < 2 (two n-tiles of B = the tile's rows; V in P·V), through the
// transposing load: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
template <typename T>
__device__ __forceinline__ void load_b_rows_x4(FragB<T> (&b)[2], const T* tile, int ld) {
  if constexpr (sizeof(T) == 2) {
    const int lane = threadIdx.x & 31, m = lane / 8;
    uint32_t r[4];
    ldmatrix_x4<true>(r, tile + (lane % 8 + 8 * (m % 2)) * ld + 8 * (m / 2));
    std::memcpy(b[0].x, r, 8);
    std::memcpy(b[1].x, r + 2, 8);
  } else {
    load_b_rows(b[0], tile, ld);
    load_b_rows(b[1], tile + 8, ld);
  }
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
