"""Triton variable-length (packed) attention, forward and backward: the kernels of ``attention_fwd.py``
/ ``attention_bwd.py`` with each program's sequence read from ``cu_seqlens``.

Contract (shared with the CUDA twin): q (total_q, Hq, D), k/v (total_k, Hkv, D) read through their
(token, head) strides with a contiguous head dim; sequence s owns query rows
[cu_seqlens_q[s], cu_seqlens_q[s + 1]) and key rows [cu_seqlens_k[s], cu_seqlens_k[s + 1]); query
head h reads kv head h // (Hq // Hkv); ``scale`` (Hq,) fp32. Causal masking is aligned bottom-right
per sequence, as FlashAttention-2 does: key j is masked for query i when j > i + Lk - Lq (Lq, Lk
the sequence's lengths), so a query row left of every key (Lq > Lk) gets o = 0, lse = -inf and zero
gradients. o (total_q, Hq, D) contiguous, lse (Hq, total_q) fp32.

Grids are (blocks of the longest sequence, heads, sequences): a program whose block starts past its
sequence's end returns at once, and every load and store is bounded by the sequence's own rows, so
memory between or after the sequences is never read or written. No bias, no dropout.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

from .attention_bwd import _dkdv_tiles, _dq_tiles, _lse2, _query_tile_ranges
from .attention_configs import TUNE_KEY, configs, len_key, pruner
from .attention_fwd import LOG2E, _causal_key_end, _fwd_tiles, _signed_scale, _unmasked_key_end
from .attention import _arch_key, _last_dim_contiguous


@triton.jit
def _sequence(CU, seq):
    """(first row, length) of sequence ``seq`` (int64 start: packed offsets times strides)."""
    start = tl.load(CU + seq).to(tl.int64)
    return start, (tl.load(CU + seq + 1) - start).to(tl.int32)


@triton.autotune(configs=configs("fwd"), key=TUNE_KEY, prune_configs_by=pruner("fwd"))
@triton.jit
def _attn_varlen_fwd_kernel(
    Q, K, V, Scale, O, LSE, CU_Q, CU_K,
    sqt, sqh, skt, skh, svt, svh,
    Hq, GROUP, total_q, ARCH_KEY, LQ_KEY, LK_KEY,
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    h = tl.program_id(1)
    seq = tl.program_id(2)
    q0, Lq = _sequence(CU_Q, seq)
    if start_m >= Lq:
        return
    k0, Lk = _sequence(CU_K, seq)
    causal_offset = Lk - Lq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_ok = offs_m < Lq

    scale2, sign = _signed_scale(Scale, h)
    q = tl.load(Q + (q0 + offs_m[:, None]) * sqt + h * sqh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = (q * sign).to(q.dtype)
    k_base = K + k0 * skt + hk * skh
    v_base = V + k0 * svt + hk * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # unmasked key tiles, then the causal diagonal and the ragged last tile (the lengths vary per
    # sequence, so the masked loop always runs; it is empty when nothing is left)
    mid = _unmasked_key_end(start_m, Lk, causal_offset, BLOCK_N, IS_CAUSAL)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, Q, offs_m, offs_d, 0, mid,
                               skt, svt, 0, scale2, Lq, Lk, causal_offset, 0, 0, 0.0,
                               D, BLOCK_D, False, False, IS_CAUSAL, False, PRECISION, BLOCK_N)
    end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, Q, offs_m, offs_d, mid, end,
                               skt, svt, 0, scale2, Lq, Lk, causal_offset, 0, 0, 0.0,
                               D, BLOCK_D, True, False, IS_CAUSAL, False, PRECISION, BLOCK_N)

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(O + ((q0 + offs_m[:, None]) * Hq + h) * D + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + h * total_q + q0 + offs_m, lse, mask=row_ok)


@triton.autotune(configs=configs("dkdv"), key=TUNE_KEY, prune_configs_by=pruner("dkdv"),
                 reset_to_zero=["DQ"])
@triton.jit
def _attn_varlen_dkdv_kernel(
    Q, K, V, Scale, DO, LSE, DELTA, DK, DV, DQ, CU_Q, CU_K,
    sqt, sqh, skt, skh, svt, svh, sdot, sdoh,
    Hq, Hkv, GROUP, total_q, ARCH_KEY, LQ_KEY, LK_KEY,
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    DQ_ATOMIC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (key block, kv head, sequence); DQ (Hq, total_q, D) fp32 with DQ_ATOMIC."""
    start_n = tl.program_id(0) * BLOCK_N
    hk = tl.program_id(1)
    seq = tl.program_id(2)
    k0, Lk = _sequence(CU_K, seq)
    if start_n >= Lk:
        return
    q0, Lq = _sequence(CU_Q, seq)
    causal_offset = Lk - Lq
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (offs_n[:, None] < Lk) & (offs_d[None, :] < D)
    k = tl.load(K + (k0 + offs_n[:, None]) * skt + hk * skh + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + (k0 + offs_n[:, None]) * svt + hk * svh + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # KEY_MASK is always on below: the key block may pass the sequence's end
    lo, mid, full = _query_tile_ranges(start_n, Lq, causal_offset, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        scale = tl.load(Scale + h)
        q_base = Q + q0 * sqt + h * sqh
        do_base = DO + q0 * sdot + h * sdoh
        row0 = h * total_q + q0
        if IS_CAUSAL:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Q, LSE + row0, DELTA + row0, DQ + row0 * D,
                                 lo, mid, offs_n, offs_d, sqt, sdot, 0, scale, scale * LOG2E,
                                 Lq, Lk, causal_offset, 0, 0, 0.0, D, BLOCK_D, True, True,
                                 False, IS_CAUSAL, False, DQ_ATOMIC, PRECISION, BLOCK_M)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Q, LSE + row0, DELTA + row0, DQ + row0 * D,
                             mid, full, offs_n, offs_d, sqt, sdot, 0, scale, scale * LOG2E,
                             Lq, Lk, causal_offset, 0, 0, 0.0, D, BLOCK_D, False, True,
                             False, IS_CAUSAL, False, DQ_ATOMIC, PRECISION, BLOCK_M)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Q, LSE + row0, DELTA + row0, DQ + row0 * D,
                             tl.maximum(mid, full), Lq, offs_n, offs_d, sqt, sdot, 0, scale, scale * LOG2E,
                             Lq, Lk, causal_offset, 0, 0, 0.0, D, BLOCK_D, True, True,
                             False, IS_CAUSAL, False, DQ_ATOMIC, PRECISION, BLOCK_M)
    out = ((k0 + offs_n[:, None]) * Hkv + hk) * D + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.autotune(configs=configs("dq"), key=TUNE_KEY, prune_configs_by=pruner("dq"))
@triton.jit
def _attn_varlen_dq_kernel(
    Q, K, V, Scale, DO, LSE, DELTA, DQ, CU_Q, CU_K,
    sqt, sqh, skt, skh, svt, svh, sdot, sdoh,
    Hq, GROUP, total_q, ARCH_KEY, LQ_KEY, LK_KEY,
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The deterministic dQ: one program per (query block, head, sequence); DQ (total_q, Hq, D)."""
    start_m = tl.program_id(0) * BLOCK_M
    h = tl.program_id(1)
    seq = tl.program_id(2)
    q0, Lq = _sequence(CU_Q, seq)
    if start_m >= Lq:
        return
    k0, Lk = _sequence(CU_K, seq)
    causal_offset = Lk - Lq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (offs_m[:, None] < Lq) & (offs_d[None, :] < D)
    q = tl.load(Q + (q0 + offs_m[:, None]) * sqt + h * sqh + offs_d[None, :], mask=q_ok, other=0.0)
    do = tl.load(DO + (q0 + offs_m[:, None]) * sdot + h * sdoh + offs_d[None, :], mask=q_ok, other=0.0)
    row0 = h * total_q + q0
    lse2 = _lse2(LSE + row0, offs_m, Lq, True)
    delta = tl.load(DELTA + row0 + offs_m, mask=offs_m < Lq, other=0.0)
    k_base = K + k0 * skt + hk * skh
    v_base = V + k0 * svt + hk * svh
    scale = tl.load(Scale + h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    mid = _unmasked_key_end(start_m, Lk, causal_offset, BLOCK_N, IS_CAUSAL)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, Q, Q, 0, mid, offs_m, offs_d,
                   skt, svt, 0, scale * LOG2E, Lq, Lk, causal_offset, 0, 0, 0.0,
                   D, BLOCK_D, False, False, IS_CAUSAL, False, False, PRECISION, BLOCK_N)
    end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, Q, Q, mid, end, offs_m, offs_d,
                   skt, svt, 0, scale * LOG2E, Lq, Lk, causal_offset, 0, 0, 0.0,
                   D, BLOCK_D, True, False, IS_CAUSAL, False, False, PRECISION, BLOCK_N)
    tl.store(DQ + ((q0 + offs_m[:, None]) * Hq + h) * D + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=q_ok)


# ---------------------------------------------------------------------------------------------
# Launchers (same names and signatures as the CUDA twins)
# ---------------------------------------------------------------------------------------------
def _varlen_meta(q, k, cu_q, max_q, max_k, is_causal):
    D = q.shape[2]
    meta = dict(D=D, HAS_BIAS=False, IS_CAUSAL=bool(is_causal), DROPOUT=False,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_D=max(16, triton.next_power_of_2(D)))
    keys = (_arch_key(q.device), len_key(max_q), len_key(max_k))
    return q.shape[0], q.shape[1], k.shape[1], cu_q.shape[0] - 1, meta, keys


def attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal):
    """-> (o (total_q, Hq, D) contiguous in q's dtype, lse (Hq, total_q) fp32). See the module docstring."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    total_q, Hq, Hkv, B, meta, keys = _varlen_meta(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, is_causal)
    o = new_empty(total_q, Hq, meta["D"], dtype=q.dtype, device=q.device)
    lse = new_empty(Hq, total_q, dtype=torch.float32, device=q.device)
    if B == 0 or total_q == 0:
        return o, lse
    grid = lambda META: (triton.cdiv(max(max_seqlen_q, 1), META["BLOCK_M"]), Hq, B)  # noqa: E731
    _attn_varlen_fwd_kernel[grid](
        q, k, v, scale, o, lse, cu_seqlens_q, cu_seqlens_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        Hq, Hq // Hkv, total_q, *keys, **meta)
    return o, lse


def attention_varlen_bwd(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                         is_causal, deterministic=True):
    """-> (dq, dk, dv) in q's dtype, contiguous (total, heads, D). ``deterministic=False``: dQ by fp32
    atomics from the dK/dV kernel; ``True``: a separate dQ pass, bitwise reproducible."""
    q, k, v, do = (_last_dim_contiguous(t) for t in (q, k, v, do))
    total_q, Hq, Hkv, B, meta, keys = _varlen_meta(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, is_causal)
    D, dev = meta["D"], q.device
    # Δ_i = do_i · o_i, rows (Hq, total_q) as lse
    delta = (o.float() * do.float()).sum(-1).t().contiguous()
    dk = new_empty(k.shape[0], Hkv, D, dtype=q.dtype, device=dev)
    dv = new_empty(k.shape[0], Hkv, D, dtype=q.dtype, device=dev)
    atomic = not deterministic
    dq_acc = torch.zeros((Hq, total_q, D) if atomic else (1,), dtype=torch.float32, device=dev)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               do.stride(0), do.stride(1))
    if B > 0 and k.shape[0] > 0:
        _attn_varlen_dkdv_kernel[lambda META: (triton.cdiv(max(max_seqlen_k, 1), META["BLOCK_N"]), Hkv, B)](
            q, k, v, scale, do, lse, delta, dk, dv, dq_acc, cu_seqlens_q, cu_seqlens_k, *strides,
            Hq, Hkv, Hq // Hkv, total_q, *keys, DQ_ATOMIC=atomic, **meta)
    if atomic:
        return dq_acc.transpose(0, 1).to(q.dtype).contiguous(), dk, dv
    dq = new_empty(total_q, Hq, D, dtype=q.dtype, device=dev)
    if B > 0 and total_q > 0:
        _attn_varlen_dq_kernel[lambda META: (triton.cdiv(max(max_seqlen_q, 1), META["BLOCK_M"]), Hq, B)](
            q, k, v, scale, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, *strides,
            Hq, Hq // Hkv, total_q, *keys, **meta)
    return dq, dk, dv
