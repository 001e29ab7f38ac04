"""Triton attention forward (FlashAttention-2 style online softmax) and the pieces the backward
shares with it. The module docstring of ``attention.py`` states the contract.

Two copies of the key loop per query block: the off-diagonal tiles, where every key is in bounds
and visible to every query of the block, carry no mask at all; the diagonal tiles (causal) and the
ragged last key tile are masked. Without bias the per-head scale is folded into the exponent
(``exp2(s·c - m)`` is one FFMA): the row max is taken on the raw scores, which needs c >= 0, so
the sign of the scale is folded into q once per program (negating a float is exact).
"""
import triton
import triton.language as tl

from .attention_configs import TUNE_KEY, configs, pruner

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _dropout_scale(seed, row_base, offs_m, offs_n, Lk, dropout_p):
    """Z = keep / (1 - p) for a (queries, keys) tile; row_base = (b·Hq + h)·Lq (int64). Pass
    offs_m[None, :] / offs_n[:, None] shapes for a (keys, queries) tile: the draw is elementwise."""
    counter = (row_base + offs_m) * Lk + offs_n
    keep = tl.rand(seed, counter) >= dropout_p
    return tl.where(keep, 1.0 / (1.0 - dropout_p), 0.0)


@triton.jit
def _load(ptrs, mask, USE_MASK: tl.constexpr):
    """A tile load that carries its mask only where one is needed (full tiles load unpredicated)."""
    if USE_MASK:
        return tl.load(ptrs, mask=mask, other=0.0)
    return tl.load(ptrs)


@triton.jit
def _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL: tl.constexpr):
    """One past the last key any query of the block [start_m, start_m + BLOCK_M) may see."""
    end = Lk
    if IS_CAUSAL:
        end = tl.maximum(tl.minimum(Lk, start_m + BLOCK_M + causal_offset), 0)
    return end


@triton.jit
def _unmasked_key_end(start_m, Lk, causal_offset, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """End of the key tiles that every query of the block sees whole (no mask needed): in bounds
    and, when causal, at or left of the block's first query's diagonal."""
    end = Lk
    if IS_CAUSAL:
        end = tl.minimum(Lk, tl.maximum(start_m + causal_offset + 1, 0))
    return end // BLOCK_N * BLOCK_N


@triton.jit
def _signed_scale(Scale, h):
    """(|c|·log2 e, sign of c) of head h's softmax scale c."""
    c = tl.load(Scale + h)
    return tl.abs(c) * LOG2E, tl.where(c < 0, -1.0, 1.0)


@triton.jit
def _scaled_scores(s, scale2, bias_rows, offs_m, offs_n, sbn, Lq, Lk, causal_offset,
                   MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """Base-2 scores s·c (+ bias·log2 e) of a (queries, keys) tile; -inf where masked (MASKED:
    keys past the end and, when causal, right of the diagonal)."""
    s = s * scale2
    if HAS_BIAS:
        b_ok = offs_m[:, None] < Lq
        if MASKED:
            b_ok = b_ok & (offs_n[None, :] < Lk)
        s += tl.load(bias_rows + offs_n[None, :] * sbn, mask=b_ok, other=0.0).to(tl.float32) * LOG2E
    if MASKED:
        valid = offs_n[None, :] < Lk
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, bias_rows, offs_m, offs_d, lo, hi,
               skn, svn, sbn, scale2, Lq, Lk, causal_offset, seed, row_base, dropout_p,
               D: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr,
               DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """The online softmax over key tiles [lo, hi); MASKED: bounds and causal masks on."""
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < Lk
        k = _load(k_base + offs_n[None, :] * skn + offs_d[:, None], kv_ok[None, :] & d_ok[:, None],
                  MASKED or D < BLOCK_D)                                           # (BLOCK_D, BLOCK_N)
        v = _load(v_base + offs_n[:, None] * svn + offs_d[None, :], kv_ok[:, None] & d_ok[None, :],
                  MASKED or D < BLOCK_D)                                           # (BLOCK_N, BLOCK_D)
        s = tl.dot(q, k, input_precision=PRECISION)                               # (BLOCK_M, BLOCK_N)
        if MASKED or HAS_BIAS:
            s = _scaled_scores(s, scale2, bias_rows, offs_m, offs_n, sbn, Lq, Lk, causal_offset,
                               MASKED, HAS_BIAS, IS_CAUSAL)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            # Rows with no visible key yet keep m = -inf: subtract 0 instead so that no -inf - -inf
            # (NaN) appears; their p and alpha are exp2(-inf) = 0.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_sub[:, None])
        else:
            # every score finite: the scale rides in the exponent's FFMA (c >= 0, see the docstring)
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale2)
            m_sub = m_new
            p = tl.math.exp2(s * scale2 - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            p = p * _dropout_scale(seed, row_base, offs_m[:, None], offs_n[None, :], Lk, dropout_p)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=configs("fwd"), key=TUNE_KEY, prune_configs_by=pruner("fwd"))
@triton.heuristics({"EVEN_N": lambda a: a["Lk"] % a["BLOCK_N"] == 0})
@triton.jit
def _attn_fwd_kernel(
    # pointers
    Q, K, V, Bias, Scale, O, LSE,
    # strides (the head dim is contiguous); o and lse are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn,
    # sizes and scalars
    Hq, GROUP, Lq, Lk, causal_offset, dropout_p, seed, ARCH_KEY, LQ_KEY, LK_KEY,
    # meta-parameters
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    scale2, sign = _signed_scale(Scale, h)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=(offs_m[:, None] < Lq) & d_ok[None, :], other=0.0)      # (BLOCK_M, BLOCK_D)
    q = (q * sign).to(q.dtype)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    bias_rows = Bias + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbm

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    mid = _unmasked_key_end(start_m, Lk, causal_offset, BLOCK_N, IS_CAUSAL)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, bias_rows, offs_m, offs_d, 0, mid,
                               skn, svn, sbn, scale2, Lq, Lk, causal_offset, seed, bh * Lq, dropout_p,
                               D, BLOCK_D, False, HAS_BIAS, IS_CAUSAL, DROPOUT, PRECISION, BLOCK_N)
    if IS_CAUSAL or not EVEN_N:
        end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, bias_rows, offs_m, offs_d, mid, end,
                                   skn, svn, sbn, scale2, Lq, Lk, causal_offset, seed, bh * Lq, dropout_p,
                                   D, BLOCK_D, True, HAS_BIAS, IS_CAUSAL, DROPOUT, PRECISION, BLOCK_N)

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    row_ok = offs_m < Lq
    tl.store(O + (bh * Lq + offs_m[:, None]) * D + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * Lq + offs_m, lse, mask=row_ok)
