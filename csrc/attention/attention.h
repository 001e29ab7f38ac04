// Fused scaled-dot-product attention, FlashAttention-2 style: the interface between the torch
// binding and the kernels in attention_fwd.cu / attention_bwd.cu. Plain C++. The contract (shapes,
// masking, dropout) is the one of the Triton launchers in dlkern/kernels/attention.py.
//
// q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); query head h reads kv head h / (Hq / Hkv).
//   s_ij = scale[h] * (q_i . k_j) + bias_ij, -inf where causally masked (key j > i + offset,
//          offset = Lk - Lq when bottom_right, else 0),
//   lse_i = log sum_j exp(s_ij) (-inf for a fully masked row), P_ij = exp(s_ij - lse_i),
//   Z_ij = keep_ij / (1 - p) with keep_ij ~ Bernoulli(1 - p) from Philox(seed; b, h, i, j),
//   o_i = sum_j P_ij Z_ij v_j (0 for a fully masked row).
// Backward: dP_ij = Z_ij (do_i . v_j), delta_i = do_i . o_i, dS_ij = P_ij (dP_ij - delta_i),
//   dq_i = scale[h] sum_j dS_ij k_j, dk_j = sum_{h of j's group} scale[h] sum_i dS_ij q_i,
//   dv_j = sum_{h of j's group} sum_i P_ij Z_ij do_i.
// All math in fp32. q, k, v, do are read through (batch, head, seq) strides with unit stride along
// D; bias through 4 strides (0 on broadcast dims); o, lse, dq, dk, dv, dscores, delta are
// contiguous.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace dlk {

// (batch, head, sequence) strides in elements; the head dimension has stride 1.
struct AttentionStrides {
  int64_t b, h, l;
};

struct AttentionShape {
  int B, Hq, Hkv, Lq, Lk, D;
};

// Masking, scaling and dropout, shared by forward and backward.
struct AttentionMask {
  const void* bias;    // (B, Hq, Lq, Lk) via bias_strides, float32 or `dtype`; null: no bias
  int64_t bias_strides[4];
  bool bias_is_f32;
  const float* scale;  // (Hq,) per-head softmax scale
  bool is_causal, bottom_right;
  float dropout_p;     // in [0, 1); 0: no dropout
  uint64_t seed;       // Philox key
};

// Packed (variable-length) sequences, FlashAttention's varlen layout: q, do (total_q, Hq, D), k, v
// (total_k, Hkv, D) read through their (head, token) strides (the batch strides are 0); sequence b
// owns the rows [cu_q[b], cu_q[b + 1]) and [cu_k[b], cu_k[b + 1]); shape.B is the number of
// sequences and shape.Lq / shape.Lk their longest lengths (the grid). The contiguous outputs become
// o, dq (total_q, Hq, D), dk, dv (total_k, Hkv, D), lse and delta (Hq, total_q); the masks apply
// per sequence with its own lengths (bottom_right: offset Lk - Lq of the sequence). No bias or
// dropout. Null cu_q: the padded layout above.
struct AttentionSeqs {
  const int* cu_q = nullptr;  // (B + 1,) device int32 prefix sums
  const int* cu_k = nullptr;
  int64_t total_q = 0;
};

struct AttentionFwdParams {
  // pointers
  const void* q;  // (B, Hq, Lq, D)
  const void* k;  // (B, Hkv, Lk, D)
  const void* v;  // (B, Hkv, Lk, D)
  void* o;        // (B, Hq, Lq, D) contiguous
  float* lse;     // (B, Hq, Lq) contiguous
  AttentionStrides q_strides, k_strides, v_strides;
  AttentionShape shape;
  AttentionMask mask;
  AttentionSeqs seqs;
  DType dtype;
};

struct AttentionBwdParams {
  // pointers
  const void* dout;  // (B, Hq, Lq, D) any (batch, head, seq) strides, e.g. 0 when expanded
  const void* q;
  const void* k;
  const void* v;
  const void* o;     // (B, Hq, Lq, D) contiguous
  const float* lse;  // (B, Hq, Lq)
  void* dq;          // (B, Hq, Lq, D) contiguous
  void* dk;          // (B, Hkv, Lk, D) contiguous
  void* dv;          // (B, Hkv, Lk, D) contiguous
  float* dscores;    // (B, Hq, Lq, Lk) contiguous dS, or null
  float* delta;      // (B, Hq, Lq) workspace: rowsum(do * o)
  AttentionStrides dout_strides, q_strides, k_strides, v_strides;
  AttentionShape shape;
  AttentionMask mask;
  AttentionSeqs seqs;
  DType dtype;
};

// Decode over a paged KV cache (forward only): q (B, Lq, Hq, D) through its strides (unit stride
// along D); k_cache, v_cache (num_pages, page_size, Hkv, D) through theirs; token n of sequence b is
// slot n % page_size of page block_table[b, n / page_size]; seqlens[b] = L cached tokens, the Lq
// queries being the last Lq positions (causal: query i sees keys j <= i + L - Lq). o (B, Lq, Hq, D)
// contiguous; a query that sees no key gets 0.
// Split-K: the keys are cut into num_splits ranges of tiles_per_split tiles of 32 keys (split s:
// keys [32 s tiles_per_split, 32 (s + 1) tiles_per_split)); with num_splits > 1 each range writes
// its normalized partial output o_part (num_splits, B, Lq, Hq, D) and base-2 logsumexp lse_part
// (num_splits, B, Lq, Hq) (-inf: no key seen), fp32 contiguous, and a combine pass writes o.
struct AttentionPagedParams {
  const void* q;
  int64_t q_sb, q_sm, q_sh;
  const void* k_cache;
  const void* v_cache;
  int64_t k_sp, k_ss, k_sh, v_sp, v_ss, v_sh;
  const int* block_table;  // (B, max_pages), row stride bt_sb
  int64_t bt_sb;
  const int* seqlens;      // (B,)
  const float* scale;      // (Hq,)
  void* o;
  int B, Lq, Hq, Hkv, D, page_size;
  bool causal;
  DType dtype;
  int num_splits = 1, tiles_per_split = 1 << 30;
  float* o_part = nullptr;
  float* lse_part = nullptr;
};

// Launch on `stream` (a cudaStream_t). Requires B, Hq, Hkv, Lq, Lk >= 1, 1 <= D <= 256,
// Hq % Hkv == 0. Throw on invalid parameters or a failed launch. Never synchronize.
void attention_fwd(const AttentionFwdParams& params, void* stream);
void attention_bwd(const AttentionBwdParams& params, void* stream);
void attention_paged_fwd(const AttentionPagedParams& params, void* stream);
// Keys per tile of the paged kernel (the unit of tiles_per_split).
constexpr int kPagedTileKeys = 32;

}  // namespace dlk
