"""Triton fused attention, FlashAttention-2 style: forward with online softmax (the row logsumexp is
saved), backward by recomputation in two race-free passes (dK/dV per key block, dQ per query block).

Contract (shared with the CUDA twin in csrc/attention): q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) with
query head h reading kv head h // (Hq // Hkv); ``bias`` None or a (B, Hq, Lq, Lk) view whose
broadcast dims have stride 0 (read through its strides, never materialized); ``scale`` (Hq,) fp32
per-head softmax scale; causal masking aligned top-left or bottom-right (key j is masked for query i
when j > i + offset, offset = Lk - Lq for bottom-right); dropout from Philox keyed by ``seed`` and
counter ((b·Hq + h)·Lq + i)·Lk + j, so the backward regenerates the forward's mask. A query row
whose keys are all masked gives o = 0, lse = -inf and zero gradients.

Scores are kept in base 2 (exp2 is the fast hardware exponential): s2 = s · log2(e).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

from .interpret import INTERPRET

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ---------------------------------------------------------------------------------------------
# Launch configurations (plain data). The interpreter runs one small configuration: it executes
# every program in Python, so big tiles only cost time there.
# ---------------------------------------------------------------------------------------------
def _configs(tiles, stages):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for m, n, w in tiles for st in stages]


# (BLOCK_M, BLOCK_N, num_warps), largest first; _keep drops those that would spill for a head dim.
def fwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return _configs([(128, 64, 8), (64, 64, 8), (128, 32, 8), (64, 64, 4), (64, 32, 4), (64, 32, 8),
                     (32, 32, 4), (32, 32, 8), (16, 32, 8), (16, 16, 8)], stages=(2, 3))


def bwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return _configs([(64, 64, 8), (32, 64, 8), (64, 32, 8), (32, 64, 4), (32, 32, 4), (32, 32, 8),
                     (16, 32, 8), (16, 16, 8)], stages=(1, 2))


# Largest score tile (BLOCK_M x BLOCK_N) per kernel and head-dim bucket that ptxas compiles for
# sm_80 and sm_90 with 8 warps and 16-bit inputs without spilling (bias + causal on; measured with
# tests/triton_compile_check.py: e.g. the d128 forward at 64 x 64 fits sm_90 but spills on sm_80).
# 4 warps get half of it; fp32 inputs (IEEE dots on CUDA cores, twice the operand registers) half;
# in-kernel dropout (Philox state) half, and a quarter in the forward.
MAX_TILE = {
    "fwd": {64: 128 * 64, 128: 64 * 64, 256: 16 * 32},
    "dkdv": {64: 32 * 32, 128: 16 * 32, 256: 16 * 16},
    "dq": {64: 64 * 64, 128: 32 * 64, 256: 16 * 32},
}


def _keep(config, kind, block_d, elem_bytes, dropout):
    """Tiles that fit the register file for this head dim, dtype and dropout."""
    area = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]
    limit = MAX_TILE[kind][min(b for b in (64, 128, 256) if b >= block_d)]
    limit = limit * config.num_warps // 8 // (2 if elem_bytes == 4 else 1)
    if dropout:
        limit //= 4 if kind == "fwd" else 2
    return area <= max(limit, 16 * 16)


def _pruner(kind):
    def prune(configs, named_args, **kwargs):
        get = lambda name: kwargs.get(name, named_args.get(name))  # noqa: E731
        elem = named_args["Q"].element_size()
        kept = [c for c in configs if _keep(c, kind, get("BLOCK_D"), elem, get("DROPOUT"))]
        return kept or configs[-1:]
    return {"early_config_prune": prune}


_TUNE_KEY = ["LQ_KEY", "LK_KEY", "BLOCK_D", "HAS_BIAS", "IS_CAUSAL", "DROPOUT"]


def _len_key(n):
    """Lengths are tuned per power-of-two bucket, not per exact value."""
    return triton.next_power_of_2(max(int(n), 1))


# ---------------------------------------------------------------------------------------------
# Pieces shared by the three kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _scores(q, k, offs_m, offs_n, bias_rows, sbn, scale2, Lq, Lk, causal_offset,
            HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 scores (BLOCK_M, BLOCK_N) of q (BLOCK_M, D) against k (D, BLOCK_N); -inf where masked.
    bias_rows: (BLOCK_M, 1) pointers to the bias rows of the block (their int64 offsets are
    computed once per block; the column offsets stay 32-bit)."""
    s = tl.dot(q, k, input_precision=PRECISION) * scale2
    valid = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
    if HAS_BIAS:
        b = tl.load(bias_rows + offs_n[None, :] * sbn, mask=valid, other=0.0)
        s += b.to(tl.float32) * 1.4426950408889634
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _dropout_scale(seed, row_base, offs_m, offs_n, Lk, dropout_p):
    """Z = keep / (1 - p) for the tile; row_base = (b·Hq + h)·Lq (int64)."""
    counter = (row_base + offs_m[:, None]) * Lk + offs_n[None, :]
    keep = tl.rand(seed, counter) >= dropout_p
    return tl.where(keep, 1.0 / (1.0 - dropout_p), 0.0)


@triton.jit
def _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL: tl.constexpr):
    """One past the last key any query of the block [start_m, start_m + BLOCK_M) may see."""
    end = Lk
    if IS_CAUSAL:
        end = tl.maximum(tl.minimum(Lk, start_m + BLOCK_M + causal_offset), 0)
    return end


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.autotune(configs=fwd_configs(), key=_TUNE_KEY, prune_configs_by=_pruner("fwd"))
@triton.jit
def _attn_fwd_kernel(
    # pointers
    Q, K, V, Bias, Scale, O, LSE,
    # strides (the head dim is contiguous); o and lse are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn,
    # sizes and scalars
    Hq, GROUP, Lq, Lk, D, causal_offset, dropout_p, seed, LQ_KEY, LK_KEY,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=(offs_m[:, None] < Lq) & d_ok[None, :], other=0.0)      # (BLOCK_M, BLOCK_D)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    bias_rows = Bias + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbm
    scale2 = tl.load(Scale + h) * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = offs_n < Lk
        k = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None],
                    mask=kv_ok[None, :] & d_ok[:, None], other=0.0)          # (BLOCK_D, BLOCK_N)
        s = _scores(q, k, offs_m, offs_n, bias_rows, sbn, scale2, Lq, Lk, causal_offset,
                    HAS_BIAS, IS_CAUSAL, PRECISION)                          # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows with no visible key yet keep m = -inf: subtract 0 instead so that no -inf - -inf
        # (NaN) appears; their p and alpha are exp2(-inf) = 0.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            p = p * _dropout_scale(seed, bh * Lq, offs_m, offs_n, Lk, dropout_p)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :],
                    mask=kv_ok[:, None] & d_ok[None, :], other=0.0)          # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    row_ok = offs_m < Lq
    tl.store(O + (bh * Lq + offs_m[:, None]) * D + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * Lq + offs_m, lse, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
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
def _probs(s, lse_ptr, offs_m, Lq):
    """P = exp(s - lse) from base-2 scores; rows with lse = -inf (nothing visible) give 0."""
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < Lq, other=float("inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    return tl.math.exp2(s - lse2[:, None])


@triton.autotune(configs=bwd_configs(), key=_TUNE_KEY, prune_configs_by=_pruner("dkdv"))
@triton.jit
def _attn_bwd_dkdv_kernel(
    # pointers
    Q, K, V, Bias, Scale, DO, LSE, DELTA, DK, DV,
    # strides (head dim contiguous); lse, delta, dk, dv are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdom,
    # sizes and scalars
    Hq, Hkv, GROUP, Lq, Lk, D, causal_offset, dropout_p, seed, LQ_KEY, LK_KEY,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (key block, batch, kv head): loops over the group's query heads and the
    query blocks that can see the keys, so dK and dV are written once, without atomics."""
    start_n = tl.program_id(0) * BLOCK_N
    bhk = tl.program_id(1).to(tl.int64)
    b, hk = bhk // Hkv, bhk % Hkv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    kv_ok = (offs_n[:, None] < Lk) & d_ok[None, :]
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # The first query that can see key start_n: i >= j - offset.
    first_m = start_n * 0
    if IS_CAUSAL:
        first_m = tl.maximum(start_n - causal_offset, 0) // BLOCK_M * BLOCK_M
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * Hq + h
        scale = tl.load(Scale + h)
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        dk_h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start_m in range(first_m, Lq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q_ok = (offs_m[:, None] < Lq) & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdom + offs_d[None, :], mask=q_ok, other=0.0)
            bias_rows = Bias + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbm
            s = _scores(q, tl.trans(k), offs_m, offs_n, bias_rows, sbn, scale * 1.4426950408889634,
                        Lq, Lk, causal_offset, HAS_BIAS, IS_CAUSAL, PRECISION)   # (BLOCK_M, BLOCK_N)
            p = _probs(s, LSE + bh * Lq, offs_m, Lq)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)             # (BLOCK_M, BLOCK_N)
            pz = p
            if DROPOUT:
                z = _dropout_scale(seed, bh * Lq, offs_m, offs_n, Lk, dropout_p)
                pz = p * z
                dp = dp * z
            dv += tl.dot(tl.trans(pz.to(do.dtype)), do, input_precision=PRECISION)
            delta = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
            ds = p * (dp - delta[:, None])
            dk_h += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        dk += dk_h * scale
    out = (bhk * Lk + offs_n[:, None]) * D + offs_d[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.autotune(configs=bwd_configs(), key=_TUNE_KEY, prune_configs_by=_pruner("dq"))
@triton.jit
def _attn_bwd_dq_kernel(
    # pointers
    Q, K, V, Bias, Scale, DO, LSE, DELTA, DQ, DS,
    # strides (head dim contiguous); lse, delta, dq and ds are contiguous
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdom,
    # sizes and scalars
    Hq, GROUP, Lq, Lk, D, causal_offset, dropout_p, seed, LQ_KEY, LK_KEY,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, BIAS_GRAD: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (query block, batch, query head): dQ, and dS itself when the bias needs a
    gradient (DS is zero-filled by the launcher: keys past the causal end are never visited)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // Hq, bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_ok = (offs_m[:, None] < Lq) & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :], mask=q_ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :], mask=q_ok, other=0.0)
    delta = tl.load(DELTA + bh * Lq + offs_m, mask=offs_m < Lq, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    bias_rows = Bias + b * sbb + h * sbh + offs_m[:, None].to(tl.int64) * sbm
    scale = tl.load(Scale + h)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    end = _causal_key_end(start_m, BLOCK_M, Lk, causal_offset, IS_CAUSAL)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < Lk) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_ok, other=0.0)  # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_ok, other=0.0)
        s = _scores(q, tl.trans(k), offs_m, offs_n, bias_rows, sbn, scale * 1.4426950408889634,
                    Lq, Lk, causal_offset, HAS_BIAS, IS_CAUSAL, PRECISION)
        p = _probs(s, LSE + bh * Lq, offs_m, Lq)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            dp = dp * _dropout_scale(seed, bh * Lq, offs_m, offs_n, Lk, dropout_p)
        ds = p * (dp - delta[:, None])
        if BIAS_GRAD:
            tl.store(DS + (bh * Lq + offs_m[:, None]) * Lk + offs_n[None, :], ds,
                     mask=(offs_m[:, None] < Lq) & (offs_n[None, :] < Lk))
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + (bh * Lq + offs_m[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_ok)


# ---------------------------------------------------------------------------------------------
# Launchers (same names and signatures as the CUDA twins)
# ---------------------------------------------------------------------------------------------
def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _common(q, k, v, bias, dropout_p, is_causal, bottom_right):
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    bias_strides = bias.stride() if bias is not None else (0, 0, 0, 0)
    meta = dict(HAS_BIAS=bias is not None, IS_CAUSAL=bool(is_causal), DROPOUT=dropout_p > 0.0,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_D=max(16, triton.next_power_of_2(D)))
    scalars = (Lq, Lk, D, (Lk - Lq) if bottom_right else 0, float(dropout_p))
    return B, Hq, Hkv, Lq, Lk, D, bias_strides, meta, scalars


def attention_fwd(q, k, v, bias, scale, dropout_p, seed, is_causal, bottom_right):
    """-> (o (B, Hq, Lq, D) contiguous in q's dtype, lse (B, Hq, Lq) fp32). See the module docstring."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, Hq, Hkv, Lq, Lk, D, sb, meta, (Lq, Lk, D, offset, p) = _common(q, k, v, bias, dropout_p, is_causal, bottom_right)
    o = new_empty(B, Hq, Lq, D, dtype=q.dtype, device=q.device)
    lse = new_empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    grid = lambda META: (triton.cdiv(Lq, META["BLOCK_M"]), B * Hq)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, bias if bias is not None else q, scale, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *sb,
        Hq, Hq // Hkv, Lq, Lk, D, offset, p, int(seed), _len_key(Lq), _len_key(Lk), **meta)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, bias, scale, dropout_p, seed, is_causal, bottom_right, bias_grad):
    """-> (dq, dk, dv in q's dtype, contiguous; dscores (B, Hq, Lq, Lk) fp32 if bias_grad else None)."""
    q, k, v, do = (_last_dim_contiguous(t) for t in (q, k, v, do))
    o = o.contiguous()
    B, Hq, Hkv, Lq, Lk, D, sb, meta, (Lq, Lk, D, offset, p) = _common(q, k, v, bias, dropout_p, is_causal, bottom_right)
    dev = q.device
    delta = new_empty(B, Hq, Lq, dtype=torch.float32, device=dev)
    _attn_bwd_delta_kernel[(triton.cdiv(Lq, 16), B * Hq)](
        o, do, delta, do.stride(0), do.stride(1), do.stride(2), Hq, Lq, D,
        BLOCK_M=16, BLOCK_D=meta["BLOCK_D"], num_warps=4)
    dq = new_empty(B, Hq, Lq, D, dtype=q.dtype, device=dev)
    dk = new_empty(B, Hkv, Lk, D, dtype=q.dtype, device=dev)
    dv = new_empty(B, Hkv, Lk, D, dtype=q.dtype, device=dev)
    ds = torch.zeros(B, Hq, Lq, Lk, dtype=torch.float32, device=dev) if bias_grad else None
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), *sb, do.stride(0), do.stride(1), do.stride(2))
    bias_arg = bias if bias is not None else q
    keys = (_len_key(Lq), _len_key(Lk))
    _attn_bwd_dkdv_kernel[lambda META: (triton.cdiv(Lk, META["BLOCK_N"]), B * Hkv)](
        q, k, v, bias_arg, scale, do, lse, delta, dk, dv, *strides,
        Hq, Hkv, Hq // Hkv, Lq, Lk, D, offset, p, int(seed), *keys, **meta)
    _attn_bwd_dq_kernel[lambda META: (triton.cdiv(Lq, META["BLOCK_M"]), B * Hq)](
        q, k, v, bias_arg, scale, do, lse, delta, dq, ds if ds is not None else delta, *strides,
        Hq, Hq // Hkv, Lq, Lk, D, offset, p, int(seed), *keys, BIAS_GRAD=bool(bias_grad), **meta)
    return dq, dk, dv, ds
