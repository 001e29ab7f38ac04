// Decode attention over a paged KV cache (math: attention.h, AttentionPagedParams), forward only.
//
// One block of 4 warps per (kv head, sequence). The query rows of the kv head's group (Lq x group,
// row r = query r / group of head hk·group + r % group) go through the keys in passes of one row
// per warp, so every K/V element a pass reads serves the whole group from L2 (decode reads the
// cache once from DRAM; a pass is one sweep over the sequence's pages). Per tile of 32 keys the block
// stages K (fp32, rows padded by one float against bank conflicts) in shared memory with each key's
// page looked up once; lane j of a warp scores key j against the warp's row, the online softmax
// runs over the warp with shuffles, and each lane accumulates its columns d = lane + 32c of
// P·V reading V straight from the pages (coalesced along d). Only keys < cache_seqlens are read.
// Split-K (AttentionPagedParams): blockIdx.z takes one range of the sequence's key tiles; with
// several splits each block writes its rows' normalized fp32 partial output and base-2 logsumexp,
// and attention_paged_combine_kernel merges them per row, o = sum_s 2^(lse_s - lse) o_s with
// lse = log2 sum_s 2^lse_s (0 when no split saw a key), as the Triton kernel's combine does.
#include <algorithm>

#include "attention/attention_common.cuh"

namespace dlk {
namespace {

using namespace attn;

constexpr int kPagedWarps = 4, kPagedTile = kPagedTileKeys;

template <typename T, int kD>
__global__ void __launch_bounds__(kPagedWarps * 32)
attention_paged_kernel(const AttentionPagedParams p) {
  constexpr int kCols = (kD + 31) / 32;  // columns per lane
  constexpr int kUnroll = kD <= 64 ? kD : 8;  // the score's dot product (partial unrolls of short ones spill)
  __shared__ float k_s[kPagedTile][kD + 1];
  __shared__ float q_s[kPagedWarps][kD];
  __shared__ int64_t key_off_s[kPagedTile];  // element offset of each key's row in its page, -1: none

  const int hk = blockIdx.x, b = blockIdx.y, split = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = p.Hq / p.Hkv, rows = p.Lq * group;
  const int L = p.seqlens[b];
  // this split's keys [lo, hi) (int64: tiles_per_split may be a "whole sequence" sentinel)
  const int64_t lo64 = int64_t(split) * p.tiles_per_split * kPagedTile;
  const int lo = int(std::min<int64_t>(lo64, L));
  const int hi = int(std::min<int64_t>(lo64 + int64_t(p.tiles_per_split) * kPagedTile, L));
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);

  for (int pass = 0; pass * kPagedWarps < rows; ++pass) {
    const int r = pass * kPagedWarps + warp;
    const bool active = r < rows;
    const int i = active ? r / group : 0, h = hk * group + (active ? r % group : 0);
    const float scale2 = p.scale[h] * kLog2e;
    const int last = p.causal ? i + L - p.Lq : L - 1;  // the last key row r sees
    __syncthreads();  // the previous pass is done with q_s
    for (int d = lane; d < kD; d += 32) {
      q_s[warp][d] = active && d < p.D
          ? to_float(static_cast<const T*>(p.q)[b * p.q_sb + i * p.q_sm + h * p.q_sh + d]) : 0.f;
    }
    float m = -INFINITY, l = 0.f, o[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[c] = 0.f;

    for (int k0 = lo; k0 < hi; k0 += kPagedTile) {
      __syncthreads();  // every warp is done with the previous tile
      if (threadIdx.x < kPagedTile) {
        const int n = k0 + threadIdx.x;
        int64_t off = -1;
        if (n < hi) {
          const int64_t page = p.block_table[b * p.bt_sb + n / p.page_size];
          off = page * p.k_sp + int64_t(n % p.page_size) * p.k_ss + int64_t(hk) * p.k_sh;
        }
        key_off_s[threadIdx.x] = off;
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < kPagedTile * kD; idx += kPagedWarps * 32) {
        const int j = idx / kD, d = idx % kD;
        const int64_t off = key_off_s[j];
        k_s[j][d] = off >= 0 && d < p.D ? to_float(kc[off + d]) : 0.f;
      }
      __syncthreads();

      const int j = k0 + lane;
      float s = 0.f;
#pragma unroll kUnroll
      for (int d = 0; d < kD; ++d) s += q_s[warp][d] * k_s[lane][d];
      s = j < hi && j <= last ? s * scale2 : -INFINITY;
      float mx = s;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m, mx);
      const float base = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: p = 0, not NaN
      const float pj = exp2_approx(s - base), alpha = exp2_approx(m - base);
      l = l * alpha + warp_sum(pj);
      m = m_new;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[c] *= alpha;
      const int valid = active ? min(kPagedTile, hi - k0) : 0;  // warp-uniform
      for (int jj = 0; jj < valid; ++jj) {
        const float pjj = __shfl_sync(0xffffffffu, pj, jj);
        if (pjj == 0.f) continue;  // masked (causal) or underflowed: nothing to add
        // V of key jj: its page looked up again (the V cache has strides of its own)
        const int n = k0 + jj;
        const int64_t page = p.block_table[b * p.bt_sb + n / p.page_size];
        const T* vrow = vc + page * p.v_sp + int64_t(n % p.page_size) * p.v_ss + int64_t(hk) * p.v_sh;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = lane + 32 * c;
          if (d < p.D) o[c] += pjj * to_float(vrow[d]);
        }
      }
    }
    if (active) {
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int64_t row = (int64_t(b) * p.Lq + i) * p.Hq + h;  // (b, i, h)
      if (p.num_splits > 1) {  // partial (split, b, i, h) for the combine pass
        const int64_t part = int64_t(split) * p.B * p.Lq * p.Hq + row;
        if (lane == 0) p.lse_part[part] = l > 0.f ? m + log2f(l) : -INFINITY;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = lane + 32 * c;
          if (d < p.D) p.o_part[part * p.D + d] = o[c] * inv;
        }
      } else {
        T* out = static_cast<T*>(p.o) + row * p.D;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = lane + 32 * c;
          if (d < p.D) out[d] = from_float<T>(o[c] * inv);
        }
      }
    }
  }
}

constexpr int kCombineThreads = 128;

// One warp per output row (b, i, h): the splits' weights from their lse, then each lane its
// columns d = lane + 32 c of sum_s w_s o_s.
template <typename T>
__global__ void __launch_bounds__(kCombineThreads)
attention_paged_combine_kernel(const AttentionPagedParams p) {
  const int64_t rows = int64_t(p.B) * p.Lq * p.Hq;
  const int64_t row = int64_t(blockIdx.x) * (kCombineThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float mx = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) mx = fmaxf(mx, p.lse_part[s * rows + row]);
  const float base = mx == -INFINITY ? 0.f : mx;  // no split saw a key: every weight 0
  float total = 0.f;
  for (int s = 0; s < p.num_splits; ++s) total += exp2_approx(p.lse_part[s * rows + row] - base);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = lane; d < p.D; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
      acc += exp2_approx(p.lse_part[s * rows + row] - base) * p.o_part[(s * rows + row) * p.D + d];
    }
    static_cast<T*>(p.o)[row * p.D + d] = from_float<T>(acc * inv);
  }
}

}  // namespace

void attention_paged_fwd(const AttentionPagedParams& p, void* stream) {
  if (p.B < 1 || p.Lq < 1 || p.Hq < 1 || p.Hkv < 1 || p.Hq % p.Hkv != 0 || p.D < 1 || p.D > 256 ||
      p.page_size < 1 || p.B > 65535 || p.Hkv > 65535) {
    throw std::invalid_argument("dlkern attention_paged_fwd: need 1 <= B <= 65535, Lq >= 1, Hkv dividing Hq, "
                                "1 <= D <= 256, page_size >= 1");
  }
  if (p.q == nullptr || p.k_cache == nullptr || p.v_cache == nullptr || p.block_table == nullptr ||
      p.seqlens == nullptr || p.scale == nullptr || p.o == nullptr) {
    throw std::invalid_argument("dlkern attention_paged_fwd: every pointer is required");
  }
  if (p.num_splits < 1 || p.num_splits > 65535 || p.tiles_per_split < 1 ||
      (p.num_splits > 1 && (p.o_part == nullptr || p.lse_part == nullptr))) {
    throw std::invalid_argument("dlkern attention_paged_fwd: need 1 <= num_splits <= 65535, tiles_per_split >= 1, "
                                "and o_part, lse_part when num_splits > 1");
  }
  dispatch_dtype<void>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_head_dim(p.D, [&](auto d) {
      auto kern = attention_paged_kernel<T, decltype(d)::value>;
      DLK_LAUNCH(kern, dim3(unsigned(p.Hkv), unsigned(p.B), unsigned(p.num_splits)), kPagedWarps * 32, 0,
                 static_cast<cudaStream_t>(stream), p);
      check_launch("attention_paged_kernel");
    });
    if (p.num_splits > 1) {
      const int64_t rows = int64_t(p.B) * p.Lq * p.Hq;
      auto combine = attention_paged_combine_kernel<T>;
      DLK_LAUNCH(combine, unsigned((rows + kCombineThreads / 32 - 1) / (kCombineThreads / 32)), kCombineThreads, 0,
                 static_cast<cudaStream_t>(stream), p);
      check_launch("attention_paged_combine_kernel");
    }
  });
}

}  // namespace dlk
