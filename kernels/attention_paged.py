"""Triton decode attention over a paged KV cache (forward only), split-K over the cache.

Contract: q (B, Lq, Hq, D) with a contiguous head dim; k_cache/v_cache (num_pages, page_size, Hkv, D)
read through their strides (contiguous head dim); block_table (B, max_pages) int32: token position j of
sequence b lives in page block_table[b, j // page_size], slot j % page_size; cache_seqlens (B,) int32:
the number L of cached tokens of sequence b, the Lq new queries being its last Lq positions (their
keys are already in the cache). Causal (bottom-right): query i sees keys j <= i + L - Lq. Only the
first cdiv(L, page_size) entries of a block table row and the pages they name are read. ``scale``
(Hq,) fp32. o (B, Lq, Hq, D) contiguous; a query that sees no key gets 0.

One program per (split, sequence, kv head) holds every query row of the head's group (Lq x group
rows, so each K/V tile is read once for all of them: decode is bound by reading the cache) and runs
the online softmax over its split's key tiles. With several splits each writes its normalized
partial output and logsumexp (fp32), and ``_paged_combine_kernel`` merges them per row.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

from .attention_fwd import LOG2E
from .interpret import INTERPRET


@triton.jit
def _attn_paged_kernel(
    Q, KC, VC, BT, SEQLENS, Scale, O, LSE,
    sqb, sqm, sqh, skp, sks, skh, svp, svs, svh, sbt,
    B, Lq, Hq, GROUP, page_size, tiles_per_split,
    D: tl.constexpr, IS_CAUSAL: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hk = tl.program_id(2)
    L = tl.load(SEQLENS + b)
    # rows: query i of head hk·GROUP + g at row i·GROUP + g
    offs_r = tl.arange(0, BLOCK_M)
    qi = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    row_ok = qi < Lq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + qi[:, None] * sqm + h[:, None] * sqh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    scale2 = tl.load(Scale + h, mask=row_ok, other=0.0) * LOG2E
    last = qi + L - Lq          # the last key each row sees (causal)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = split * tiles_per_split * BLOCK_N
    hi = tl.minimum(lo + tiles_per_split * BLOCK_N, L)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        page = tl.load(BT + b * sbt + offs_n // page_size, mask=n_ok, other=0).to(tl.int64)
        slot = offs_n % page_size
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(KC + page[:, None] * skp + slot[:, None] * sks + hk * skh + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(VC + page[:, None] * svp + slot[:, None] * svs + hk * svh + offs_d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale2[:, None]   # (BLOCK_M, BLOCK_N)
        valid = n_ok[None, :] & row_ok[:, None]
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= last[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing visible yet
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    out_row = ((split * B + b) * Lq + qi) * Hq + h      # (split, b, i, h); split = 0 without SPLIT
    tl.store(O + out_row[:, None] * D + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if SPLIT:
        lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))))  # base 2
        tl.store(LSE + out_row, lse, mask=row_ok)


@triton.jit
def _paged_combine_kernel(O_PART, LSE_PART, O, rows, splits, D: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """o_row = Σ_s 2^(lse_s - lse) o_s with lse = log2 Σ_s 2^lse_s; 0 when no split saw a key."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < splits
    lse = tl.load(LSE_PART + offs_s * rows + row, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))
    w = w / tl.maximum(tl.sum(w, axis=0), 1e-30)
    part = tl.load(O_PART + (offs_s[:, None] * rows + row) * D + offs_d[None, :],
                   mask=s_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    tl.store(O + row * D + offs_d, tl.sum(part * w[:, None], axis=0).to(O.dtype.element_ty), mask=offs_d < D)


def _num_splits(q, batch, hkv, capacity_tiles):
    """Enough programs to fill the GPU twice (the interpreter: as if it had 4 SMs), at least one key
    tile per split."""
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else 4
    return max(1, min(triton.cdiv(2 * sms, max(batch * hkv, 1)), capacity_tiles, 64))


def attention_paged_fwd(q, k_cache, v_cache, block_table, cache_seqlens, scale, is_causal, num_splits):
    """-> o (B, Lq, Hq, D) contiguous in q's dtype. ``num_splits`` 0: chosen here. See the module docstring."""
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (k_cache, v_cache))
    B, Lq, Hq, D = q.shape
    page_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    BLOCK_N = 16 if INTERPRET else (32 if q.dtype == torch.float32 else 64)
    capacity_tiles = max(triton.cdiv(block_table.shape[1] * page_size, BLOCK_N), 1)
    splits = num_splits or _num_splits(q, B, Hkv, capacity_tiles)
    splits = max(1, min(splits, capacity_tiles))
    tiles_per_split = triton.cdiv(capacity_tiles, splits)
    splits = triton.cdiv(capacity_tiles, tiles_per_split)   # no split left without tiles
    o = new_empty(B, Lq, Hq, D, dtype=q.dtype, device=q.device)
    if splits > 1:
        o_part = torch.empty(splits, B, Lq, Hq, D, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(splits, B, Lq, Hq, dtype=torch.float32, device=q.device)
    else:
        o_part, lse_part = o, o
    BLOCK_D = max(16, triton.next_power_of_2(D))
    _attn_paged_kernel[(splits, B, Hkv)](
        q, k_cache, v_cache, block_table, cache_seqlens, scale, o_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        B, Lq, Hq, group, page_size, tiles_per_split,
        D=D, IS_CAUSAL=bool(is_causal), SPLIT=splits > 1, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_D=BLOCK_D, BLOCK_M=max(16, triton.next_power_of_2(Lq * group)), BLOCK_N=BLOCK_N, num_warps=4)
    if splits > 1:
        rows = B * Lq * Hq
        _paged_combine_kernel[(rows,)](o_part, lse_part, o, rows, splits, D=D,
                                       BLOCK_S=max(2, triton.next_power_of_2(splits)), BLOCK_D=BLOCK_D, num_warps=1)
    return o
