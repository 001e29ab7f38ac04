// LayerNorm / RMSNorm forward and backward kernels and their launchers (math: row_norm.h).
//
// One block per row, grid-stride over rows, all math in fp32. Two kernel families:
//  * cached (CHUNKS = 1, 2, 4, 8): the row lives in registers. A chunk is 16 bytes (4 fp32 or
//    8 fp16/bf16 values, one 128-bit access); thread t holds chunks t, t + blockDim, ... (CHUNKS
//    of them), so every warp access is coalesced. Needs cols and every row stride to be multiples
//    of the chunk width and 16-byte-aligned pointers.
//  * uncached: any cols, any alignment; scalar accesses looping over global memory. The forward
//    reads the row twice (Welford statistics, then normalize); the backward reads x and dy twice:
//    a row-wise pass for each row's coefficients (kept in a rows x 2 scratch), then a column-wise
//    pass over the block's rows that keeps each column's dweight/dbias in its thread's registers
//    and stores them once (no atomics, no read-modify-write, deterministic).
// The cached kernels hold rows of up to 32768 (fp16/bf16) or 16384 (fp32) values in the forward
// and up to 8192 in the backward; longer or misaligned rows take the uncached kernels.
// The backward's dweight/dbias partials: block b owns rows b, b + gridDim, ... and writes
// partial[b, :]; row_norm_sum_partials_kernel sums them over blocks and casts dweight.
#include "norm/row_norm.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dlk_cuda.cuh"

namespace dlk {
namespace {


// Largest block of each cached variant, by fp32 values cached per thread: its __launch_bounds__,
// which gives each thread 65536 / threads registers for the row cache. The forward caches the row
// s; the backward xhat, g and the dweight/dbias sums (4 registers per value), hence its smaller
// limit on values. The explicit minimum of 1 block per SM stops ptxas from spilling to reach a
// higher occupancy (it did, for a few instantiations, without it).
constexpr int kFwdMaxValues = 64;
constexpr int kBwdMaxValues = 16;
constexpr int fwd_max_threads(int values) { return values <= 32 ? 1024 : 512; }
constexpr int bwd_max_threads(int values) { return values <= 8 ? 1024 : 512; }
constexpr int kUncachedMaxThreads = 1024;
constexpr int kFwdPreferredThreads = 256;  // tuning knobs: take the fewest chunks per thread
constexpr int kBwdPreferredThreads = 512;  // whose block is at most this large
constexpr int64_t kMaxCols = int64_t(1) << 30;  // column indices stay in int

template <typename Chunk, typename T>
__device__ __forceinline__ Chunk load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk*>(p);
}
template <typename Chunk, typename T>
__device__ __forceinline__ void store_chunk(T* p, const Chunk& c) {
  *reinterpret_cast<Chunk*>(p) = c;
}

// ---- Welford statistics (Welford / welford_merge: common/dlk_cuda.cuh) ---------------------

// One push per element on the long-row path: __fdividef (MUFU.RCP + FMUL, 2 ulp; w.n is a count far
// below 2^126) instead of an IEEE division, which costs ~7 more instructions per element there.
__device__ __forceinline__ void welford_push(Welford& w, float v) {
  w.n += 1.f;
  const float d = v - w.mean;
  w.mean += __fdividef(d, w.n);
  w.m2 += d * (v - w.mean);
}


// Statistics of the whole block, identical in every thread: the per-warp results are merged by
// every thread in the same order (a butterfly merge is not bitwise symmetric).
__device__ __forceinline__ Welford block_welford(Welford w) {
  __shared__ float partial[3][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Welford other = {__shfl_xor_sync(0xffffffffu, w.n, offset),
                           __shfl_xor_sync(0xffffffffu, w.mean, offset),
                           __shfl_xor_sync(0xffffffffu, w.m2, offset)};
    w = welford_merge(w, other);
  }
  if (lane == 0) {
    partial[0][warp] = w.n;
    partial[1][warp] = w.mean;
    partial[2][warp] = w.m2;
  }
  __syncthreads();
  Welford total = {0.f, 0.f, 0.f};
  for (int i = 0; i < num_warps; ++i) {
    total = welford_merge(total, Welford{partial[0][i], partial[1][i], partial[2][i]});
  }
  __syncthreads();
  return total;
}

// ---- forward ----------------------------------------------------------------------------------
// Both forward kernels share this signature (so one launch site serves both). weight/bias are
// nullptr when absent; residual/residual_out are only touched when RESIDUAL.

// Per element (bf16, residual LayerNorm): two unpacks, an add, half a pack and an unpack for s,
// three flops of statistics, two for y, the parameters' unpacks and half a pack; the row and
// chunk addresses are formed once per row (32-bit chunk offsets from per-row base pointers).
template <typename T, int CHUNKS, bool RMS, bool RESIDUAL, bool HAS_W, bool HAS_B>
__global__ void __launch_bounds__(fwd_max_threads(CHUNKS * kVec<T>), 1)
row_norm_fwd_cached_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ residual,     // (rows, cols)
    const T* __restrict__ weight, const T* __restrict__ bias,    // (cols,) or nullptr
    T* __restrict__ y, T* __restrict__ residual_out,             // (rows, cols)
    float* __restrict__ mean_out, float* __restrict__ rstd_out,  // (rows,)
    // sizes and row strides (elements)
    int64_t rows, int cols, int64_t x_stride, int64_t r_stride, int64_t y_stride,
    int64_t ro_stride,
    // meta
    float eps, float inv_cols) {
  constexpr int V = kVec<T>;  // cols % V == 0 here

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * x_stride;
    const T* rr = RESIDUAL ? residual + row * r_stride : nullptr;
    T* ror = RESIDUAL ? residual_out + row * ro_stride : nullptr;
    float v[CHUNKS][V];  // s in fp32; 0 past the end of the row
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;  // the chunk's first column
      if (c < cols) {
        unpack_chunk<T>(load_chunk_bits(xr + c), v[k]);
        if (RESIDUAL) {  // s = round(x + residual): the value residual_out holds and the norm sees
          float r[V];
          unpack_chunk<T>(load_chunk_bits(rr + c), r);
#pragma unroll
          for (int i = 0; i < V; ++i) v[k][i] += r[i];
          const uint4 sc = pack_chunk<T>(v[k]);
          store_chunk_bits(ror + c, sc);
          unpack_chunk<T>(sc, v[k]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) v[k][i] = 0.f;
      }
    }

    float mean = 0.f;
    if (!RMS) {
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < CHUNKS; ++k) {
#pragma unroll
        for (int i = 0; i < V; ++i) sum += v[k][i];
      }
      mean = block_sum(sum) * inv_cols;
    }
    float sq = 0.f;  // second pass over registers: sum of (s - mean)^2 (RMS: of s^2)
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (RMS || c < cols) {  // LayerNorm: (s - mean) is not 0 past the end of the row
#pragma unroll
        for (int i = 0; i < V; ++i) {
          if (!RMS) v[k][i] -= mean;  // v holds s - mean from here on
          sq += v[k][i] * v[k][i];
        }
      }
    }
    const float rstd = rsqrtf(block_sum(sq) * inv_cols + eps);
    if (threadIdx.x == 0) {
      if (!RMS) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }

    T* yr = y + row * y_stride;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (c < cols) {
        float w[V], b[V];
        if (HAS_W) unpack_chunk<T>(load_chunk_bits(weight + c), w);
        if (HAS_B) unpack_chunk<T>(load_chunk_bits(bias + c), b);
        float h[V];
#pragma unroll
        for (int i = 0; i < V; ++i) {
          h[i] = v[k][i] * rstd;  // (s - mean) * rstd, as the uncached kernel rounds it
          if (HAS_W) h[i] *= w[i];
          if (HAS_B) h[i] += b[i];
        }
        store_chunk_bits(yr + c, pack_chunk<T>(h));
      }
    }
  }
}

// residual_out is written in the first pass and read back in the second (by the same thread), so
// it is not __restrict__ here.
template <typename T, bool RMS, bool RESIDUAL>
__global__ void __launch_bounds__(kUncachedMaxThreads, 1)
row_norm_fwd_uncached_kernel(
    // pointers
    const T* __restrict__ x, const T* __restrict__ residual,     // (rows, cols)
    const T* __restrict__ weight, const T* __restrict__ bias,    // (cols,) or nullptr
    T* __restrict__ y, T* residual_out,                          // (rows, cols)
    float* __restrict__ mean_out, float* __restrict__ rstd_out,  // (rows,)
    // sizes and row strides (elements)
    int64_t rows, int cols, int64_t x_stride, int64_t r_stride, int64_t y_stride,
    int64_t ro_stride,
    // meta
    float eps, float inv_cols) {
  const bool has_weight = weight != nullptr;
  const bool has_bias = bias != nullptr;

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * x_stride;
    const T* rr = RESIDUAL ? residual + row * r_stride : nullptr;
    T* ror = RESIDUAL ? residual_out + row * ro_stride : nullptr;
    auto load_s = [&](int c) {  // first pass: s, rounded to T, stored to residual_out
      float s = to_float(xr[c]);
      if (RESIDUAL) {
        const T st = from_float<T>(s + to_float(rr[c]));
        ror[c] = st;
        s = to_float(st);
      }
      return s;
    };

    float mean = 0.f;
    float rstd;
    if (RMS) {
      float sq = 0.f;
#pragma unroll 4
      for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float s = load_s(c);
        sq += s * s;
      }
      rstd = rsqrtf(block_sum(sq) * inv_cols + eps);
    } else {
      Welford w = {0.f, 0.f, 0.f};
#pragma unroll 4
      for (int c = threadIdx.x; c < cols; c += blockDim.x) welford_push(w, load_s(c));
      w = block_welford(w);
      mean = w.mean;
      rstd = rsqrtf(w.m2 * inv_cols + eps);
    }
    if (threadIdx.x == 0) {
      if (!RMS) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }

    const T* src = RESIDUAL ? ror : xr;  // second pass: re-read s
    T* yr = y + row * y_stride;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      float h = (to_float(src[c]) - mean) * rstd;
      if (has_weight) h *= to_float(weight[c]);
      if (has_bias) h += to_float(bias[c]);
      yr[c] = from_float<T>(h);
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------
// Shared signature. dresidual is nullptr when absent; weight/dw_partial are used only when HAS_W,
// db_partial only when HAS_B; mean_in only for LayerNorm.

template <typename T, int CHUNKS, bool RMS, bool HAS_W, bool HAS_B>
__global__ void __launch_bounds__(bwd_max_threads(CHUNKS * kVec<T>), 1)
row_norm_bwd_cached_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x,                      // (rows, cols)
    const T* __restrict__ weight,                                           // (cols,)
    const float* __restrict__ mean_in, const float* __restrict__ rstd_in,  // (rows,)
    const T* __restrict__ dresidual,                                        // (rows, cols)
    T* __restrict__ dx,                                                     // (rows, cols)
    float* __restrict__ dw_partial, float* __restrict__ db_partial,       // (gridDim, cols)
    float* __restrict__ /*coef*/,                                           // unused here
    // sizes and row strides (elements)
    int64_t rows, int cols, int64_t dy_stride, int64_t x_stride, int64_t dr_stride,
    int64_t dx_stride,
    // meta
    float inv_cols) {
  constexpr int V = kVec<T>;
  using Chunk = Vec<T, V>;
  const int num_chunks = cols / V;  // cols % V == 0 here
  const bool has_dresidual = dresidual != nullptr;

  float dw[CHUNKS][V];  // this block's sums over its rows of dy * xhat and of dy
  float db[CHUNKS][V];
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      dw[k][i] = 0.f;
      db[k][i] = 0.f;
    }
  }

  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float mean = RMS ? 0.f : mean_in[row];
    const float rstd = rstd_in[row];
    float xhat[CHUNKS][V];  // 0 past the end of the row
    float g[CHUNKS][V];     // dy * w
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c < num_chunks) {
        const Chunk xc = load_chunk<Chunk>(x + row * x_stride + c * V);
        const Chunk dyc = load_chunk<Chunk>(dy + row * dy_stride + c * V);
        const Chunk wc = HAS_W ? load_chunk<Chunk>(weight + c * V) : Chunk{};
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const float xh = (to_float(xc.v[i]) - mean) * rstd;
          const float d = to_float(dyc.v[i]);
          if (HAS_W) dw[k][i] += d * xh;
          if (HAS_B) db[k][i] += d;
          xhat[k][i] = xh;
          g[k][i] = HAS_W ? d * to_float(wc.v[i]) : d;
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          xhat[k][i] = 0.f;
          g[k][i] = 0.f;
        }
      }
    }

    float sum_gx = 0.f, sum_g = 0.f;
#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        sum_gx += g[k][i] * xhat[k][i];
        sum_g += g[k][i];
      }
    }
    if (RMS) {
      sum_gx = block_sum(sum_gx);
    } else {
      block_sum2(sum_gx, sum_g);
    }
    const float c1 = sum_gx * inv_cols;            // mean(g * xhat)
    const float c2 = RMS ? 0.f : sum_g * inv_cols;  // mean(g)

#pragma unroll
    for (int k = 0; k < CHUNKS; ++k) {
      const int c = threadIdx.x + k * blockDim.x;
      if (c < num_chunks) {
        const Chunk drc =
            has_dresidual ? load_chunk<Chunk>(dresidual + row * dr_stride + c * V) : Chunk{};
        Chunk dxc;
#pragma unroll
        for (int i = 0; i < V; ++i) {
          float d = rstd * (g[k][i] - xhat[k][i] * c1 - c2);
          if (has_dresidual) d += to_float(drc.v[i]);
          dxc.v[i] = from_float<T>(d);
        }
        store_chunk(dx + row * dx_stride + c * V, dxc);
      }
    }
  }

  const int64_t prow = int64_t(blockIdx.x) * cols;  // written even by a block without rows
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < num_chunks) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        if (HAS_W) dw_partial[prow + c * V + i] = dw[k][i];
        if (HAS_B) db_partial[prow + c * V + i] = db[k][i];
      }
    }
  }
}

template <typename T, bool RMS, bool HAS_W, bool HAS_B>
__global__ void __launch_bounds__(kUncachedMaxThreads, 1)
row_norm_bwd_uncached_kernel(
    // pointers
    const T* __restrict__ dy, const T* __restrict__ x,                      // (rows, cols)
    const T* __restrict__ weight,                                           // (cols,)
    const float* __restrict__ mean_in, const float* __restrict__ rstd_in,  // (rows,)
    const T* __restrict__ dresidual,                                        // (rows, cols)
    T* __restrict__ dx,                                                     // (rows, cols)
    float* __restrict__ dw_partial, float* __restrict__ db_partial,       // (gridDim, cols)
    float* __restrict__ coef,                                               // (rows, 2) scratch
    // sizes and row strides (elements)
    int64_t rows, int cols, int64_t dy_stride, int64_t x_stride, int64_t dr_stride,
    int64_t dx_stride,
    // meta
    float inv_cols) {
  const bool has_dresidual = dresidual != nullptr;
  // Pass 1: each of this block's rows once, for its two reduction coefficients (parked in coef).
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float mean = RMS ? 0.f : mean_in[row];
    const float rstd = rstd_in[row];
    const T* xr = x + row * x_stride;
    const T* dyr = dy + row * dy_stride;
    float sum_gx = 0.f, sum_g = 0.f;
#pragma unroll 4
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = (to_float(xr[c]) - mean) * rstd;
      const float g = HAS_W ? to_float(dyr[c]) * to_float(weight[c]) : to_float(dyr[c]);
      sum_gx += g * xh;
      sum_g += g;
    }
    if (RMS) {
      sum_gx = block_sum(sum_gx);
    } else {
      block_sum2(sum_gx, sum_g);
    }
    if (threadIdx.x == 0) {
      coef[2 * row] = sum_gx * inv_cols;
      coef[2 * row + 1] = RMS ? 0.f : sum_g * inv_cols;
    }
  }
  __syncthreads();  // pass 2's threads read the coefficients thread 0 stored
  // Pass 2: column by column over all of the block's rows, so each thread keeps its columns'
  // dweight/dbias in registers and stores them once (no read-modify-write of the partial rows
  // per row: 8 B/element of extra traffic at long rows).
  float* dwp = HAS_W ? dw_partial + int64_t(blockIdx.x) * cols : nullptr;
  float* dbp = HAS_B ? db_partial + int64_t(blockIdx.x) * cols : nullptr;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float w = HAS_W ? to_float(weight[c]) : 1.f;
    float dw = 0.f, db = 0.f;
#pragma unroll 4
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
      const float mean = RMS ? 0.f : mean_in[row];
      const float rstd = rstd_in[row];
      const float c1 = coef[2 * row];
      const float c2 = coef[2 * row + 1];
      const float xh = (to_float(x[row * x_stride + c]) - mean) * rstd;
      const float d = to_float(dy[row * dy_stride + c]);
      float out = rstd * (d * w - xh * c1 - c2);
      if (has_dresidual) out += to_float(dresidual[row * dr_stride + c]);
      dx[row * dx_stride + c] = from_float<T>(out);
      dw += d * xh;
      db += d;
    }
    if (HAS_W) dwp[c] = dw;
    if (HAS_B) dbp[c] = db;
  }
}

// ---- dweight / dbias: the column sums of the partial rows -------------------------------------
// A block of kSumRowLanes x kSumCols threads owns kSumCols columns: thread (r, c) sums partial
// rows r, r + kSumRowLanes, ... of column c (a warp reads 32 consecutive floats of one row), then
// row lane 0 adds the other lanes' sums in lane order. A fixed order whatever the timing
// (deterministic), and the cast to dweight's dtype in the same pass (the Triton backward's
// _sum_partials_kernel does the same in one launch).
constexpr int kSumCols = 32;
constexpr int kSumRowLanes = 8;

template <typename TW>
__global__ void __launch_bounds__(kSumCols * kSumRowLanes)
row_norm_sum_partials_kernel(
    // pointers
    const float* __restrict__ dw_partial, const float* __restrict__ db_partial,  // (P, cols)
    TW* __restrict__ dweight, float* __restrict__ dbias,  // (cols,); each nullptr when absent
    // sizes
    int64_t num_partials, int cols) {
  __shared__ float sums[2][kSumRowLanes][kSumCols];
  const int lane = threadIdx.x % kSumCols;
  const int r0 = threadIdx.x / kSumCols;
  const int col = blockIdx.x * kSumCols + lane;
  float dw = 0.f, db = 0.f;
  if (col < cols) {
#pragma unroll 4
    for (int64_t r = r0; r < num_partials; r += kSumRowLanes) {
      if (dweight != nullptr) dw += dw_partial[r * cols + col];
      if (dbias != nullptr) db += db_partial[r * cols + col];
    }
  }
  sums[0][r0][lane] = dw;
  sums[1][r0][lane] = db;
  __syncthreads();
  if (r0 == 0 && col < cols) {
    for (int i = 1; i < kSumRowLanes; ++i) {
      dw += sums[0][i][lane];
      db += sums[1][i][lane];
    }
    if (dweight != nullptr) dweight[col] = from_float<TW>(dw);
    if (dbias != nullptr) dbias[col] = db;
  }
}

// ---- host side --------------------------------------------------------------------------------
template <typename T>
using FwdKernel = void (*)(const T*, const T*, const T*, const T*, T*, T*, float*, float*,
                           int64_t, int, int64_t, int64_t, int64_t, int64_t, float, float);
template <typename T>
using BwdKernel = void (*)(const T*, const T*, const T*, const float*, const float*, const T*, T*,
                           float*, float*, float*, int64_t, int, int64_t, int64_t, int64_t,
                           int64_t, float);

struct LaunchShape {
  int chunks;   // 0: the uncached kernel
  int threads;  // block size, a multiple of 32
};

int64_t round_up_to_warp(int64_t n) { return (n + 31) / 32 * 32; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The cached variant with the fewest chunks per thread (1, 2, 4 or 8, at most max_values values)
// whose block (one thread per `chunks` chunks of the row) has at most `preferred` threads, else at
// most its own limit; else the uncached kernel with up to 1024 threads, about 8 values each.
template <typename T>
LaunchShape choose_shape(int64_t cols, bool vectorizable, int max_values, int preferred,
                         int (*max_threads)(int)) {
  constexpr int V = kVec<T>;
  if (vectorizable) {
    const int64_t num_chunks = cols / V;
    for (int pass = 0; pass < 2; ++pass) {
      for (int chunks = 1; chunks <= 8 && chunks * V <= max_values; chunks *= 2) {
        const int64_t threads = round_up_to_warp((num_chunks + chunks - 1) / chunks);
        if (threads <= (pass == 0 ? preferred : max_threads(chunks * V))) {
          return {chunks, int(threads)};
        }
      }
    }
  }
  return {0, int(std::min<int64_t>(kUncachedMaxThreads, round_up_to_warp((cols + 7) / 8)))};
}

template <typename Kernel>
int grid_size(Kernel kernel, int threads, int64_t rows, int num_sms) {
  const int64_t resident = int64_t(num_sms) * max_blocks_per_sm(kernel, threads);
  return int(std::min(rows, resident));
}

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("dlkern row_norm: ") + what);
}

// forward

void validate(const RowNormFwdParams& p) {
  check(p.rows > 0, "rows must be > 0");
  check(p.cols >= 1 && p.cols <= kMaxCols, "cols must be in [1, 2^30]");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.x != nullptr && p.y != nullptr && p.rstd != nullptr, "x, y and rstd are required");
  check(p.is_rms || p.mean != nullptr, "LayerNorm needs the mean buffer");
  check(!(p.is_rms && p.has_bias), "RMSNorm has no bias");
  check(!p.has_weight || p.weight != nullptr, "has_weight without weight");
  check(!p.has_bias || p.bias != nullptr, "has_bias without bias");
  check(!p.has_residual || (p.residual != nullptr && p.residual_out != nullptr),
        "has_residual needs residual and residual_out");
  check(p.x_row_stride >= 0 && p.residual_row_stride >= 0 && p.y_row_stride >= 0 &&
            p.residual_out_row_stride >= 0,
        "row strides must be >= 0");
}

template <typename T, bool RMS, bool RESIDUAL, bool HAS_W, bool HAS_B>
FwdKernel<T> fwd_kernel(int chunks) {
  static_assert(8 * kVec<T> <= kFwdMaxValues, "every chunk count is a valid forward variant");
  switch (chunks) {
    case 1: return row_norm_fwd_cached_kernel<T, 1, RMS, RESIDUAL, HAS_W, HAS_B>;
    case 2: return row_norm_fwd_cached_kernel<T, 2, RMS, RESIDUAL, HAS_W, HAS_B>;
    case 4: return row_norm_fwd_cached_kernel<T, 4, RMS, RESIDUAL, HAS_W, HAS_B>;
    case 8: return row_norm_fwd_cached_kernel<T, 8, RMS, RESIDUAL, HAS_W, HAS_B>;
    default: return row_norm_fwd_uncached_kernel<T, RMS, RESIDUAL>;  // weight/bias: runtime
  }
}

template <typename T>
void fwd_launch(const RowNormFwdParams& p, cudaStream_t stream) {
  constexpr int V = kVec<T>;
  const bool vectorizable =
      p.cols % V == 0 && aligned16(p.x) && aligned16(p.y) && p.x_row_stride % V == 0 &&
      p.y_row_stride % V == 0 && (!p.has_weight || aligned16(p.weight)) &&
      (!p.has_bias || aligned16(p.bias)) &&
      (!p.has_residual || (aligned16(p.residual) && aligned16(p.residual_out) &&
                           p.residual_row_stride % V == 0 && p.residual_out_row_stride % V == 0));
  const LaunchShape shape = choose_shape<T>(p.cols, vectorizable, kFwdMaxValues,
                                            kFwdPreferredThreads, fwd_max_threads);
  const FwdKernel<T> kern = DLK_BOOL_SWITCH(p.is_rms, RMS, [&] {
    return DLK_BOOL_SWITCH(p.has_residual, RESIDUAL, [&] {
      return DLK_BOOL_SWITCH(p.has_weight, HAS_W, [&] {
        return DLK_BOOL_SWITCH(p.has_bias, HAS_B, [&] {
          return fwd_kernel<T, RMS, RESIDUAL, HAS_W, HAS_B && !RMS>(shape.chunks);  // RMS: no bias
        });
      });
    });
  });
  const int grid = grid_size(kern, shape.threads, p.rows, p.num_sms);
  DLK_LAUNCH(kern, grid, shape.threads, 0, stream,
             static_cast<const T*>(p.x), static_cast<const T*>(p.residual),
             static_cast<const T*>(p.has_weight ? p.weight : nullptr),
             static_cast<const T*>(p.has_bias ? p.bias : nullptr), static_cast<T*>(p.y),
             static_cast<T*>(p.residual_out), p.mean, p.rstd,
             p.rows, int(p.cols), p.x_row_stride, p.residual_row_stride, p.y_row_stride,
             p.residual_out_row_stride,
             p.eps, float(1.0 / double(p.cols)));
  check_launch(shape.chunks ? "row_norm_fwd_cached_kernel" : "row_norm_fwd_uncached_kernel");
}

// backward

void validate(const RowNormBwdParams& p) {
  check(p.rows > 0, "rows must be > 0");
  check(p.cols >= 1 && p.cols <= kMaxCols, "cols must be in [1, 2^30]");
  check(p.num_sms >= 1, "num_sms must be >= 1");
  check(p.dy != nullptr && p.x != nullptr && p.dx != nullptr && p.rstd != nullptr,
        "dy, x, dx and rstd are required");
  check(p.is_rms || p.mean != nullptr, "LayerNorm needs mean");
  check(!(p.is_rms && p.has_bias), "RMSNorm has no bias");
  check(!p.has_weight || p.weight != nullptr, "has_weight without weight");
  check(!p.has_dresidual || p.dresidual != nullptr, "has_dresidual without dresidual");
  check(p.dy_row_stride >= 0 && p.x_row_stride >= 0 && p.dresidual_row_stride >= 0 &&
            p.dx_row_stride >= 0,
        "row strides must be >= 0");
}

template <typename T, bool RMS, bool HAS_W, bool HAS_B>
BwdKernel<T> bwd_kernel(int chunks) {
  static_assert(2 * kVec<T> <= kBwdMaxValues, "1 and 2 chunks are valid backward variants");
  if (chunks == 1) return row_norm_bwd_cached_kernel<T, 1, RMS, HAS_W, HAS_B>;
  if (chunks == 2) return row_norm_bwd_cached_kernel<T, 2, RMS, HAS_W, HAS_B>;
  if constexpr (4 * kVec<T> <= kBwdMaxValues) {  // fp32 only
    if (chunks == 4) return row_norm_bwd_cached_kernel<T, 4, RMS, HAS_W, HAS_B>;
  }
  return row_norm_bwd_uncached_kernel<T, RMS, HAS_W, HAS_B>;
}

template <typename T>
std::pair<BwdKernel<T>, LaunchShape> bwd_choose(const RowNormBwdParams& p) {
  constexpr int V = kVec<T>;
  const bool vectorizable =
      p.cols % V == 0 && aligned16(p.dy) && aligned16(p.x) && aligned16(p.dx) &&
      p.dy_row_stride % V == 0 && p.x_row_stride % V == 0 && p.dx_row_stride % V == 0 &&
      (!p.has_weight || aligned16(p.weight)) &&
      (!p.has_dresidual || (aligned16(p.dresidual) && p.dresidual_row_stride % V == 0));
  const LaunchShape shape = choose_shape<T>(p.cols, vectorizable, kBwdMaxValues,
                                            kBwdPreferredThreads, bwd_max_threads);
  const BwdKernel<T> kern = DLK_BOOL_SWITCH(p.is_rms, RMS, [&] {
    return DLK_BOOL_SWITCH(p.has_weight, HAS_W, [&] {
      return DLK_BOOL_SWITCH(p.has_bias, HAS_B, [&] {
        return bwd_kernel<T, RMS, HAS_W, HAS_B && !RMS>(shape.chunks);  // RMS: never a bias
      });
    });
  });
  return {kern, shape};
}

template <typename T>
int64_t bwd_num_partials(const RowNormBwdParams& p) {
  const auto [kern, shape] = bwd_choose<T>(p);
  return grid_size(kern, shape.threads, p.rows, p.num_sms);
}

template <typename T>
void bwd_launch(const RowNormBwdParams& p, cudaStream_t stream) {
  const auto [kern, shape] = bwd_choose<T>(p);
  DLK_LAUNCH(kern, int(p.num_partials), shape.threads, 0, stream,
             static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
             static_cast<const T*>(p.has_weight ? p.weight : nullptr), p.mean, p.rstd,
             static_cast<const T*>(p.has_dresidual ? p.dresidual : nullptr),
             static_cast<T*>(p.dx), p.dweight_partial, p.dbias_partial, p.coef,
             p.rows, int(p.cols), p.dy_row_stride, p.x_row_stride, p.dresidual_row_stride,
             p.dx_row_stride,
             float(1.0 / double(p.cols)));
  check_launch(shape.chunks ? "row_norm_bwd_cached_kernel" : "row_norm_bwd_uncached_kernel");
}

template <typename TW>
void sum_partials_launch(const RowNormBwdParams& p, cudaStream_t stream) {
  const auto kern = row_norm_sum_partials_kernel<TW>;
  const int grid = int((p.cols + kSumCols - 1) / kSumCols);
  DLK_LAUNCH(kern, grid, kSumCols * kSumRowLanes, 0, stream,
             p.has_weight ? p.dweight_partial : nullptr, p.has_bias ? p.dbias_partial : nullptr,
             static_cast<TW*>(p.has_weight ? p.dweight : nullptr),
             p.has_bias ? p.dbias : nullptr, p.num_partials, int(p.cols));
  check_launch("row_norm_sum_partials_kernel");
}


}  // namespace

// With rows == 0 nothing is launched or checked: empty tensors may have null data pointers.
void row_norm_fwd(const RowNormFwdParams& p, void* stream) {
  if (p.rows == 0) return;
  validate(p);
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    fwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}

int64_t row_norm_bwd_num_partials(const RowNormBwdParams& p) {
  if (p.rows == 0) return 0;
  validate(p);
  return dispatch_dtype<int64_t>(p.dtype,
                                 [&](auto tag) { return bwd_num_partials<decltype(tag)>(p); });
}

void row_norm_bwd(const RowNormBwdParams& p, void* stream) {
  if (p.rows == 0) return;
  validate(p);
  check(p.num_partials >= 1 && p.num_partials <= INT32_MAX, "num_partials must be in [1, 2^31)");
  check(!p.has_weight || p.dweight_partial != nullptr, "has_weight needs dweight_partial");
  check(!p.has_bias || p.dbias_partial != nullptr, "has_bias needs dbias_partial");
  check(p.coef != nullptr, "coef (rows x 2 fp32 scratch) is required");
  check(!p.has_weight || p.dweight != nullptr, "has_weight needs dweight");
  check(!p.has_bias || p.dbias != nullptr, "has_bias needs dbias");
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    bwd_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
  if (p.has_weight || p.has_bias) {
    dispatch_dtype<void>(p.dweight_dtype, [&](auto tag) {
      sum_partials_launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
    });
  }
}

}  // namespace dlk
