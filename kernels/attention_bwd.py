"""Triton attention backward, by recomputation (the contract is in ``attention.py``).

* ``_attn_bwd_delta_kernel``: Δ_i = do_i · o_i.
* ``_attn_bwd_dkdv_kernel``: one program per key block, key-major: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, so the
  keys are the M dimension of every dot (wgmma needs M >= 64; a query-major S would have to be
  transposed for both dK and dV). The per-head scale is folded into dSᵀ (through Δ·scale: free),
  so dK needs no per-head accumulator. With ``DQ_ATOMIC`` it also adds dSᵀᵀ·K into an fp32 dQ
  buffer with relaxed atomics: 5 tile matmuls per (query, key) block instead of 7, at the price
  of a summation order that varies from run to run.
* ``_attn_bwd_dq_kernel``: the deterministic dQ (one program per query block; and dS itself for
  a bias gradient).

Both loops split their tiles like the forward: tiles that every row sees whole carry no mask; the
causal diagonal and the ragged last tile are masked.
"""
import triton
import triton.language as tl

from .attention_configs import TUNE_KEY, configs, pruner
from .attention_fwd import LOG2E, _causal_key_end, _dropout_scale, _load, _scaled_scores, _unmasked_key_end


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, sdob, sdoh, sdom, Hq, Lq, D,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Δ_i = do_i · o_i (fp32), the softmax-backward row term."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // Hq, bh % Hq
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < Lq) & (offs_d[None, :] < D)
    o = tl.load(O + (bh * Lq + offs_m[:, None]) * D + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :], mask=ok, other=0.0)
    tl.store(DELTA + bh * Lq + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1),
             mask=offs_m < Lq)


@triton.jit
def _lse2(LSE_h, offs_m, Lq, MASKED: tl.constexpr):
    """Base-2 logsumexp of the rows; +inf where nothing is visible (lse = -inf) or out of bounds,
    so that exp2(s - lse2) = 0 there."""
    lse = _load(LSE_h + offs_m, offs_m < Lq, MASKED)
    lse = tl.where(offs_m < Lq, lse, float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


@triton.jit
def _query_tile_ranges(start_n, Lq, causal_offset, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """(lo, mid, full) for the key block at start_n: query tiles [lo, mid) cross the causal diagonal
    (masked), [mid, full) are whole and see every key of the block (unmasked), [full, Lq) is the
    ragged last tile (masked)."""
    lo = start_n * 0
    mid = lo
    if IS_CAUSAL:
        lo = tl.maximum(start_n - causal_offset, 0) // BLOCK_M * BLOCK_M
        mid = tl.maximum(tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - causal_offset, 0), BLOCK_M) * BLOCK_M, lo)
        mid = tl.minimum(mid, tl.cdiv(Lq, BLOCK_M) * BLOCK_M)
    return lo, mid, Lq // BLOCK_M * BLOCK_M


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, bias_cols, LSE_h, DELTA_h, DQ_h, lo, hi, offs_n, offs_d,
                sqm, sdom, sbm, scale, scale2, Lq, Lk, causal_offset, seed, row_base, dropout_p,
                D: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, KEY_MASK: tl.constexpr,
                HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
                DQ_ATOMIC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr):
    """dK, dV (BLOCK_N, BLOCK_D) over query tiles [lo, hi); MASKED: bounds and causal masks on."""
    d_ok = offs_d < D
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_ok = offs_m < Lq
        rows = q_ok[:, None] & d_ok[None, :]
        q = _load(q_base + offs_m[:, None] * sqm + offs_d[None, :], rows, MASKED or D < BLOCK_D)   # (BLOCK_M, BLOCK_D)
        do = _load(do_base + offs_m[:, None] * sdom + offs_d[None, :], rows, MASKED or D < BLOCK_D)
        lse2 = _lse2(LSE_h, offs_m, Lq, MASKED)
        delta_s = _load(DELTA_h + offs_m, q_ok, MASKED) * scale
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION)                      # (BLOCK_N, BLOCK_M)
        if MASKED or HAS_BIAS or KEY_MASK:
            st = st * scale2
            if HAS_BIAS:
                b_ok = (offs_n[:, None] < Lk) & q_ok[None, :]
                st += tl.load(bias_cols + offs_m[None, :].to(tl.int64) * sbm, mask=b_ok,
                              other=0.0).to(tl.float32) * LOG2E
            if KEY_MASK:
                # keys past the end: their exp could overflow (k = 0) and reach dQ through the atomics
                st = tl.where(offs_n[:, None] < Lk, st, float("-inf"))
            if MASKED and IS_CAUSAL:
                st = tl.where(offs_n[:, None] <= offs_m[None, :] + causal_offset, st, float("-inf"))
            pt = tl.math.exp2(st - lse2[None, :])
        else:
            pt = tl.math.exp2(st * scale2 - lse2[None, :])                         # one FFMA
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)                    # (BLOCK_N, BLOCK_M)
        if DROPOUT:
            z = _dropout_scale(seed, row_base, offs_m[None, :], offs_n[:, None], Lk, dropout_p)
            dv += tl.dot((pt * z).to(do.dtype), do, input_precision=PRECISION)
            dpt = dpt * z
        else:
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dst = pt * (dpt * scale - delta_s[None, :])                                 # scale·dSᵀ
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(dst.to(k.dtype)), k, input_precision=PRECISION)   # (BLOCK_M, BLOCK_D)
            tl.atomic_add(DQ_h + offs_m[:, None] * D + offs_d[None, :], dq, mask=rows, sem="relaxed")
    return dk, dv


@triton.autotune(configs=configs("dkdv"), key=TUNE_KEY, prune_configs_by=pruner("dkdv"),
                 reset_to_zero=["DQ"])
@triton.heuristics({"EVEN_M": lambda a: a["Lq"] % a["BLOCK_M"] == 0,
                    "EVEN_N": lambda a: a["Lk"] % a["BLOCK_N"] == 0})
@triton.jit
def _attn_bwd_dkdv_kernel(
    # pointers (DQ: fp32 accumulator, used with DQ_ATOMIC only)
    Q, K, V, Bias, Scale, DO, LSE, DELTA, DK, DV, DQ,
    # strides (head dim contiguous); lse, delta, dk, dv, dq are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdom,
    # sizes and scalars
    Hq, Hkv, GROUP, Lq, Lk, causal_offset, dropout_p, seed, ARCH_KEY, LQ_KEY, LK_KEY,
    # meta-parameters
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    DQ_ATOMIC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
):
    """One program per (key block, batch, kv head): loops over the group's query heads and the
    query blocks that can see the keys, so dK and dV are written once, without atomics."""
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // Hkv, bhk % Hkv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (offs_n[:, None] < Lk) & (offs_d[None, :] < D)
    k = _load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :], kv_ok, not EVEN_N or D < BLOCK_D)
    v = _load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :], kv_ok, not EVEN_N or D < BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    lo, mid, full = _query_tile_ranges(start_n, Lq, causal_offset, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * Hq + h
        scale = tl.load(Scale + h)
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        bias_cols = Bias + b * sbb + h * sbh + offs_n[:, None].to(tl.int64) * sbn
        if IS_CAUSAL:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, bias_cols, LSE + bh * Lq, DELTA + bh * Lq,
                                 DQ + bh * Lq * D, lo, mid, offs_n, offs_d, sqm, sdom, sbm, scale, scale * LOG2E,
                                 Lq, Lk, causal_offset, seed, bh * Lq, dropout_p, D, BLOCK_D, True, not EVEN_N,
                                 HAS_BIAS, IS_CAUSAL, DROPOUT, DQ_ATOMIC, PRECISION, BLOCK_M)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, bias_cols, LSE + bh * Lq, DELTA + bh * Lq,
                             DQ + bh * Lq * D, mid, full, offs_n, offs_d, sqm, sdom, sbm, scale, scale * LOG2E,
                             Lq, Lk, causal_offset, seed, bh * Lq, dropout_p, D, BLOCK_D, False, not EVEN_N,
                             HAS_BIAS, IS_CAUSAL, DROPOUT, DQ_ATOMIC, PRECISION, BLOCK_M)
        if not EVEN_M:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, bias_cols, LSE + bh * Lq, DELTA + bh * Lq,
                                 DQ + bh * Lq * D, tl.maximum(mid, full), Lq, offs_n, offs_d, sqm, sdom, sbm,
                                 scale, scale * LOG2E, Lq, Lk, causal_offset, seed, bh * Lq, dropout_p, D, BLOCK_D,
                                 True, not EVEN_N, HAS_BIAS, IS_CAUSAL, DROPOUT, DQ_ATOMIC, PRECISION, BLOCK_M)
    out = (bhk * Lk + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, bias_rows, DS_rows, lo, hi, offs_m, offs_d,
              skn, svn, sbn, scale2, Lq, Lk, causal_offset, seed, row_base, dropout_p,
              D: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr,
              IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, BIAS_GRAD: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ/scale (BLOCK_M, BLOCK_D) over key tiles [lo, hi); MASKED: bounds and causal masks on."""
    d_ok = offs_d < D
    row_ok = offs_m[:, None] < Lq
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < Lk) & d_ok[None, :]
        k = _load(k_base + offs_n[:, None] * skn + offs_d[None, :], kv_ok, MASKED or D < BLOCK_D)   # (BLOCK_N, BLOCK_D)
        v = _load(v_base + offs_n[:, None] * svn + offs_d[None, :], kv_ok, MASKED or D < BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)                      # (BLOCK_M, BLOCK_N)
        if MASKED or HAS_BIAS:
            s = _scaled_scores(s, scale2, bias_rows, offs_m, offs_n, sbn, Lq, Lk, causal_offset,
                               MASKED, HAS_BIAS, IS_CAUSAL)
            p = tl.math.exp2(s - lse2[:, None])
        else:
            p = tl.math.exp2(s * scale2 - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            dp = dp * _dropout_scale(seed, row_base, offs_m[:, None], offs_n[None, :], Lk, dropout_p)
        ds = p * (dp - delta[:, None])
        if BIAS_GRAD:
            tl.store(DS_rows + offs_n[None, :], ds, mask=row_ok & (offs_n[None, :] < Lk))
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.autotune(configs=configs("dq"), key=TUNE_KEY, prune_configs_by=pruner("dq"))
@triton.heuristics({"EVEN_N": lambda a: a["Lk"] % a["BLOCK_N"] == 0})
@triton.jit
def _attn_bwd_dq_kernel(
    # pointers
    Q, K, V, Bias, Scale, DO, LSE, DELTA, DQ, DS,
    # strides (head dim contiguous); lse, delta, dq and ds are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdom,
    # sizes and scalars
    Hq, GROUP, Lq, Lk, causal_offset, dropout_p, seed, ARCH_KEY, LQ_KEY, LK_KEY,
    # meta-parameters
    D: tl.constexpr, HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
):
    """One program per (query block, batch, query head): dQ, and dS itself when the bias needs a
    gradient (DS is zero-filled by the launcher: keys past the causal end are never visited)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (offs_m[:, None] < Lq) & (offs_d[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :], mask=q_ok, other=0.0)
    lse2 = _lse2(LSE + bh * Lq, offs_m, Lq, True)
    delta = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    bias_rows = Bias + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbm
    ds_rows = DS + (bh * Lq + offs_m[:, None]) * Lk
    scale = tl.load(Scale + h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    mid = _unmasked_key_end(start_m, Lk, causal_offset, BLOCK_N, IS_CAUSAL)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, bias_rows, ds_rows, 0, mid, offs_m, offs_d,
                   skn, svn, sbn, scale * LOG2E, Lq, Lk, causal_offset, seed, bh * Lq, dropout_p,
                   D, BLOCK_D, False, HAS_BIAS, IS_CAUSAL, DROPOUT, BIAS_GRAD, PRECISION, BLOCK_N)
    if IS_CAUSAL or not EVEN_N:
        end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
        dq = _dq_tiles(dq, q, do, lse2, delta, k_base, v_base, bias_rows, ds_rows, mid, end, offs_m, offs_d,
                       skn, svn, sbn, scale * LOG2E, Lq, Lk, causal_offset, seed, bh * Lq, dropout_p,
                       D, BLOCK_D, True, HAS_BIAS, IS_CAUSAL, DROPOUT, BIAS_GRAD, PRECISION, BLOCK_N)
    tl.store(DQ + (bh * Lq + offs_m[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_ok)
