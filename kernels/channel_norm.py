"""Triton BatchNorm / GroupNorm / InstanceNorm, forward and backward, on one set of kernels.

Every input is viewed as (N, C, S) with arbitrary strides (S = flattened spatial dims), which covers
NCHW, channels_last and strided views without copies. The three norms differ only in their
*statistics unit*: one channel for BatchNorm, one (sample, group) for GroupNorm, one
(sample, channel) for InstanceNorm. The stat unit of element (n, c) is
``n * units_per_sample + c // channels_per_unit`` (units_per_sample = 0 for BatchNorm).

Kernels:
* ``_partial_stats_kernel``: mean and M2 of each reduction unit over one split of its elements
  (tiles merged with Chan's formula: no E[x^2] - mean^2 cancellation). Splitting a unit over
  several programs keeps the GPU busy when units are few and long (BatchNorm over N*H*W).
* ``_finalize_stats_kernel``: merges the splits in a fixed order (deterministic), writes mean,
  rstd and (for running statistics) the unbiased variance. Launchers never mutate their inputs:
  the caller updates running statistics, so the ops stay functional for torch.compile.
* ``_apply_kernel``: y = act((x - mean) * rstd * w + b).
* ``_partial_grad_kernel``: per reduction unit and split, sum(g) and sum(g * xhat), where g is the
  gradient before the activation.
* ``_grad_apply_kernel``: dx = rstd * (w * g - xhat * c1 - c2), c1/c2 per stat unit.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty, new_empty_like

ACTIVATIONS = {None: 0, "none": 0, "silu": 1, "gelu": 2, "relu": 3}
_GELU_C = tl.constexpr(0.7071067811865476)  # 1/sqrt(2): exact (erf) GELU, as torch's default


@triton.jit
def _act_fwd(p, ACT: tl.constexpr):
    if ACT == 1:
        return p * tl.sigmoid(p)
    elif ACT == 2:
        return 0.5 * p * (1.0 + tl.erf(p * _GELU_C))
    elif ACT == 3:
        return tl.maximum(p, 0.0)
    else:
        return p


@triton.jit
def _act_grad(p, dy, ACT: tl.constexpr):
    """dy * act'(p)."""
    if ACT == 1:
        sig = tl.sigmoid(p)
        return dy * sig * (1.0 + p * (1.0 - sig))
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.erf(p * _GELU_C))
        pdf = tl.exp(-0.5 * p * p) * 0.3989422804014327  # 1/sqrt(2*pi)
        return dy * (cdf + p * pdf)
    elif ACT == 3:
        return tl.where(p > 0.0, dy, 0.0)
    else:
        return dy


@triton.jit
def _unit_offsets(units, r, U_INNER, stride_uo, stride_ui, R0, stride_r1, stride_r0):
    """Element offsets of reduction index ``r`` (BLOCK_R,) in ``units`` (BLOCK_U,): a unit starts at
    (u // U_INNER) * stride_uo + (u % U_INNER) * stride_ui; its elements form an (R / R0, R0) grid."""
    base = (units // U_INNER).to(tl.int64) * stride_uo + (units % U_INNER).to(tl.int64) * stride_ui
    return base[:, None] + ((r // R0).to(tl.int64) * stride_r1 + (r % R0).to(tl.int64) * stride_r0)[None, :]


@triton.jit
def _partial_stats_kernel(
    X, PART_MEAN, PART_M2,                       # input; (SPLITS, U) fp32 outputs
    U, U_INNER, stride_uo, stride_ui,            # reduction units
    R, R0, stride_r1, stride_r0, r_per_split,    # each unit's R elements, split in chunks
    BLOCK_U: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_s = tl.program_id(1)
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    u_ok = units < U
    r_start = pid_s * r_per_split
    r_end = tl.minimum(r_start + r_per_split, R)
    n_full = (r_end - r_start) // BLOCK_R
    # Welford per lane: lane j of every full tile sees its k-th element at iteration k, so the
    # update's 1/(k+1) is one scalar and no tile needs a cross-lane reduction (no barrier in the
    # loop; the r mask is constant there, so loads stay vectorized). The lanes merge at the end.
    mean = tl.zeros([BLOCK_U, BLOCK_R], tl.float32)
    m2 = tl.zeros([BLOCK_U, BLOCK_R], tl.float32)
    for k in range(0, n_full):
        r = r_start + k * BLOCK_R + tl.arange(0, BLOCK_R)
        offs = _unit_offsets(units, r, U_INNER, stride_uo, stride_ui, R0, stride_r1, stride_r0)
        x = tl.load(X + offs, mask=u_ok[:, None], other=0.0).to(tl.float32)
        delta = x - mean
        mean += delta * (1.0 / (k + 1))
        m2 += delta * (x - mean)
    # The tail tile (lanes past r_end keep their count; all masked when there is no tail).
    r = r_start + n_full * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < r_end
    offs = _unit_offsets(units, r, U_INNER, stride_uo, stride_ui, R0, stride_r1, stride_r0)
    x = tl.load(X + offs, mask=u_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
    count = tl.zeros([BLOCK_R], tl.float32) + n_full + r_ok.to(tl.float32)
    delta = x - mean
    mean += tl.where(r_ok[None, :], delta / tl.maximum(count, 1.0)[None, :], 0.0)
    m2 += tl.where(r_ok[None, :], delta * (x - mean), 0.0)
    # Chan et al.: merge the lanes' (count, mean, m2).
    total = tl.maximum(tl.sum(count, axis=0), 1.0)
    u_mean = tl.sum(mean * count[None, :], axis=1) / total
    d = mean - u_mean[:, None]
    u_m2 = tl.sum(m2 + d * d * count[None, :], axis=1)
    tl.store(PART_MEAN + pid_s * U + units, u_mean, mask=u_ok)
    tl.store(PART_M2 + pid_s * U + units, u_m2, mask=u_ok)


@triton.jit
def _finalize_stats_kernel(
    PART_MEAN, PART_M2, MEAN, RSTD, VAR_UNBIASED,   # partials in; stats out (VAR_UNBIASED optional)
    U, R, r_per_split, SPLITS, eps,
    HAS_VAR: tl.constexpr, BLOCK_U: tl.constexpr,
):
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    u_ok = units < U
    count = tl.zeros([BLOCK_U], tl.float32)
    mean = tl.zeros([BLOCK_U], tl.float32)
    m2 = tl.zeros([BLOCK_U], tl.float32)
    for s in range(0, SPLITS):  # fixed order: the result does not depend on scheduling
        n_s = tl.minimum(tl.maximum(R - s * r_per_split, 0), r_per_split).to(tl.float32)
        s_mean = tl.load(PART_MEAN + s * U + units, mask=u_ok, other=0.0)
        s_m2 = tl.load(PART_M2 + s * U + units, mask=u_ok, other=0.0)
        total = tl.maximum(count + n_s, 1.0)
        delta = s_mean - mean
        mean += delta * (n_s / total)
        m2 += s_m2 + delta * delta * (count * n_s / total)
        count = count + n_s
    tl.store(MEAN + units, mean, mask=u_ok)
    tl.store(RSTD + units, 1.0 / tl.sqrt(m2 / R + eps), mask=u_ok)
    if HAS_VAR:  # for running statistics, which track the unbiased variance (as torch)
        tl.store(VAR_UNBIASED + units, m2 / tl.maximum(R - 1, 1), mask=u_ok)


@triton.jit
def _plane_tile(C, S, s_blocks, units_per_sample, channels_per_unit, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """This program's (BLOCK_C, BLOCK_S) tile of sample n's (C, S) plane, and each channel's stat unit."""
    pid0 = tl.program_id(0)
    n = pid0 // s_blocks
    s = (pid0 % s_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mask = c_ok[:, None] & (s < S)[None, :]
    su = n * units_per_sample + c // channels_per_unit
    return n, c, s, c_ok, mask, su


@triton.jit
def _plane_offsets(n, c, s, stride_n, stride_c, stride_s):
    return n.to(tl.int64) * stride_n + c[:, None].to(tl.int64) * stride_c + s[None, :].to(tl.int64) * stride_s


@triton.jit
def _apply_kernel(
    X, Y, MEAN, RSTD, W, B,                      # pointers (W/B may be unused)
    C, S, s_blocks, sxn, sxc, sxs, syn, syc, sys,
    units_per_sample, channels_per_unit,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    n, c, s, c_ok, mask, su = _plane_tile(C, S, s_blocks, units_per_sample, channels_per_unit, BLOCK_C, BLOCK_S)
    mean = tl.load(MEAN + su, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + su, mask=c_ok, other=0.0)
    x = tl.load(X + _plane_offsets(n, c, s, sxn, sxc, sxs), mask=mask, other=0.0).to(tl.float32)
    y = (x - mean[:, None]) * rstd[:, None]
    if HAS_W:
        y *= tl.load(W + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_B:
        y += tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    y = _act_fwd(y, ACT)
    tl.store(Y + _plane_offsets(n, c, s, syn, syc, sys), y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _group_fwd_onchip_kernel(
    X, Y, MEAN, RSTD, W, B,                      # pointers (W/B may be unused); MEAN/RSTD (N*G,)
    G, cg, S, sxn, sxc, sxs, syn, syc, sys, eps,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """GroupNorm / InstanceNorm forward of one (sample, group) that fits in registers: the group
    is read once and written once (2·E·s), its statistics exact two-pass in registers."""
    pid = tl.program_id(0)
    n = pid // G
    c_in = tl.arange(0, BLOCK_C)
    c = (pid % G) * cg + c_in
    s = tl.arange(0, BLOCK_S)
    c_ok = c_in < cg
    mask = c_ok[:, None] & (s < S)[None, :]
    x = tl.load(X + _plane_offsets(n, c, s, sxn, sxc, sxs), mask=mask, other=0.0).to(tl.float32)
    count = cg * S
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(xc * xc, axis=1), axis=0) / count + eps)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)
    y = xc * rstd
    if HAS_W:
        y *= tl.load(W + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_B:
        y += tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    y = _act_fwd(y, ACT)
    tl.store(Y + _plane_offsets(n, c, s, syn, syc, sys), y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _group_bwd_onchip_kernel(
    X, DY, DX, MEAN, RSTD, W, B, PART_G, PART_GX,  # PART_*: (N*C,) per-(sample, channel) sums out
    G, cg, S, sxn, sxc, sxs, sdn, sdc, sds, son, soc, sos,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """GroupNorm / InstanceNorm backward of one (sample, group) held in registers: x and dy read
    once, dx written once (3·E·s); the per-channel sums for dweight/dbias go to PART_G/PART_GX."""
    pid = tl.program_id(0)
    n = pid // G
    c_in = tl.arange(0, BLOCK_C)
    c = (pid % G) * cg + c_in
    s = tl.arange(0, BLOCK_S)
    c_ok = c_in < cg
    mask = c_ok[:, None] & (s < S)[None, :]
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    x = tl.load(X + _plane_offsets(n, c, s, sxn, sxc, sxs), mask=mask, other=0.0).to(tl.float32)
    g = tl.load(DY + _plane_offsets(n, c, s, sdn, sdc, sds), mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + c, mask=c_ok, other=0.0).to(tl.float32)
    if ACT != 0:
        b = tl.zeros([BLOCK_C], tl.float32)
        if HAS_B:
            b = tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)
        g = _act_grad(xhat * w[:, None] + b[:, None], g, ACT)
    sum_g = tl.sum(g, axis=1)
    sum_gx = tl.sum(g * xhat, axis=1)
    units = n.to(tl.int64) * G * cg + c
    tl.store(PART_G + units, sum_g, mask=c_ok)
    tl.store(PART_GX + units, sum_gx, mask=c_ok)
    count = cg * S
    c1 = tl.sum(w * sum_gx, axis=0) / count
    c2 = tl.sum(w * sum_g, axis=0) / count
    dx = (w[:, None] * g - xhat * c1 - c2) * rstd
    tl.store(DX + _plane_offsets(n, c, s, son, soc, sos), dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _partial_grad_kernel(
    X, DY, MEAN, RSTD, W, B, PART_G, PART_GX,    # inputs; (SPLITS, U) fp32 outputs
    U, U_INNER, stride_uo, stride_ui, dy_stride_uo, dy_stride_ui,
    R, R0, stride_r1, stride_r0, dy_stride_r1, dy_stride_r0, r_per_split,
    units_per_sample, channels_per_unit,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_s = tl.program_id(1)
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    u_ok = units < U
    # Reduction unit u covers sample u // U_INNER, channel u % U_INNER (BatchNorm: U_INNER = C).
    chan = units % U_INNER
    su = (units // U_INNER) * units_per_sample + chan // channels_per_unit
    mean = tl.load(MEAN + su, mask=u_ok, other=0.0)
    rstd = tl.load(RSTD + su, mask=u_ok, other=0.0)
    w = tl.full([BLOCK_U], 1.0, tl.float32)
    b = tl.zeros([BLOCK_U], tl.float32)
    if HAS_W:
        w = tl.load(W + chan, mask=u_ok, other=0.0).to(tl.float32)
    if HAS_B:
        b = tl.load(B + chan, mask=u_ok, other=0.0).to(tl.float32)
    r_start = pid_s * r_per_split
    r_end = tl.minimum(r_start + r_per_split, R)
    acc_g = tl.zeros([BLOCK_U, BLOCK_R], tl.float32)
    acc_gx = tl.zeros([BLOCK_U, BLOCK_R], tl.float32)
    for r0 in range(r_start, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = u_ok[:, None] & (r < r_end)[None, :]
        x = tl.load(X + _unit_offsets(units, r, U_INNER, stride_uo, stride_ui, R0, stride_r1, stride_r0),
                    mask=mask, other=0.0).to(tl.float32)
        g = tl.load(DY + _unit_offsets(units, r, U_INNER, dy_stride_uo, dy_stride_ui, R0, dy_stride_r1, dy_stride_r0),
                    mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if ACT != 0:
            g = _act_grad(xhat * w[:, None] + b[:, None], g, ACT)
        acc_g += g
        acc_gx += g * xhat
    tl.store(PART_G + pid_s * U + units, tl.sum(acc_g, axis=1), mask=u_ok)
    tl.store(PART_GX + pid_s * U + units, tl.sum(acc_gx, axis=1), mask=u_ok)


@triton.jit
def _grad_finalize_kernel(
    PART_G, PART_GX, W, C1, C2, DW, DB,          # (SPLITS, NB * C) partials in; outputs
    SPLITS, NB, C, cg, inv_count,                # NB samples (1 for BatchNorm), cg channels per group
    HAS_W: tl.constexpr, HAS_C: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
    PER_CHANNEL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """One launch between the gradient sums and dx, for group g = program 0 (its cg channels):
    per-(sample, channel) sums over the splits (fixed order), c1/c2 of each (sample, group)
    (the w-weighted sums over the group / its element count), dweight and dbias of each channel
    (the sums over samples), cast to their dtypes. PER_CHANNEL (cg == 1: BatchNorm, InstanceNorm):
    every channel is its own group and a program takes BLOCK_CG of them (a program per channel
    would load one scalar per split)."""
    g = tl.program_id(0)
    if PER_CHANNEL:
        ch = g * BLOCK_CG + tl.arange(0, BLOCK_CG)
        ch_ok = ch < C
    else:
        ch = g * cg + tl.arange(0, BLOCK_CG)
        ch_ok = tl.arange(0, BLOCK_CG) < cg
    w = tl.full([BLOCK_CG], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + ch, mask=ch_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_CG], tl.float32)
    db = tl.zeros([BLOCK_CG], tl.float32)
    for n0 in range(0, NB, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (n < NB)[:, None] & ch_ok[None, :]
        offs = n.to(tl.int64)[:, None] * C + ch[None, :]
        sg = tl.zeros([BLOCK_N, BLOCK_CG], tl.float32)
        sgx = tl.zeros([BLOCK_N, BLOCK_CG], tl.float32)
        for s in range(0, SPLITS):
            sg += tl.load(PART_G + s * NB * C + offs, mask=mask, other=0.0)
            sgx += tl.load(PART_GX + s * NB * C + offs, mask=mask, other=0.0)
        if HAS_C:
            if PER_CHANNEL:
                tl.store(C1 + offs, sgx * w[None, :] * inv_count, mask=mask)
                tl.store(C2 + offs, sg * w[None, :] * inv_count, mask=mask)
            else:
                units = n.to(tl.int64) * (C // cg) + g
                tl.store(C1 + units, tl.sum(sgx * w[None, :], axis=1) * inv_count, mask=n < NB)
                tl.store(C2 + units, tl.sum(sg * w[None, :], axis=1) * inv_count, mask=n < NB)
        dw += tl.sum(sgx, axis=0)
        db += tl.sum(sg, axis=0)
    if HAS_DW:
        tl.store(DW + ch, dw.to(DW.dtype.element_ty), mask=ch_ok)
    if HAS_DB:
        tl.store(DB + ch, db.to(DB.dtype.element_ty), mask=ch_ok)


@triton.jit
def _grad_apply_kernel(
    X, DY, DX, MEAN, RSTD, W, B, C1, C2,         # c1/c2 per stat unit (unused when not HAS_C)
    C, S, s_blocks, sxn, sxc, sxs, sdn, sdc, sds, son, soc, sos,
    units_per_sample, channels_per_unit,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, HAS_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    n, c, s, c_ok, mask, su = _plane_tile(C, S, s_blocks, units_per_sample, channels_per_unit, BLOCK_C, BLOCK_S)
    rstd = tl.load(RSTD + su, mask=c_ok, other=0.0)
    g = tl.load(DY + _plane_offsets(n, c, s, sdn, sdc, sds), mask=mask, other=0.0).to(tl.float32)
    w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_W:
        w = tl.load(W + c, mask=c_ok, other=0.0).to(tl.float32)
    if ACT != 0 or HAS_C:
        mean = tl.load(MEAN + su, mask=c_ok, other=0.0)
        x = tl.load(X + _plane_offsets(n, c, s, sxn, sxc, sxs), mask=mask, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        if ACT != 0:
            b = tl.zeros([BLOCK_C], tl.float32)
            if HAS_B:
                b = tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)
            g = _act_grad(xhat * w[:, None] + b[:, None], g, ACT)
    dx = w[:, None] * g
    if HAS_C:
        c1 = tl.load(C1 + su, mask=c_ok, other=0.0)
        c2 = tl.load(C2 + su, mask=c_ok, other=0.0)
        dx = dx - xhat * c1[:, None] - c2[:, None]
    dx = dx * rstd[:, None]
    tl.store(DX + _plane_offsets(n, c, s, son, soc, sos), dx.to(DX.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host side: layouts, launch configuration, and the launchers (same names/signatures as CUDA)
# ---------------------------------------------------------------------------------------------
TILE = 4096  # elements per program tile
FINALIZE_CHANNELS = 256  # channels per program of the per-channel gradient finalize (BatchNorm, InstanceNorm)
ONCHIP_FWD_ELEMS = 32768  # a (sample, group) tile up to this size is normalized from registers
ONCHIP_BWD_ELEMS = 16384  # ... and its backward (x, dy and their products live: half the tile)


def num_warps(tile: int) -> int:
    """About eight fp32 values per thread and tensor: the backward keeps five such tensors live."""
    return max(1, min(16, tile // 256))


# Inside a reduction unit the kernels index elements with int32 (offsets are int64): a unit,
# plus the tile that may run past its end, must stay below 2**31.
INDEX_LIMIT = 2 ** 31 - 1 - TILE


def _check_index_range(x):
    """Refuse inputs whose element indices could overflow int32 (before anything is allocated);
    dlkern.ops' supports() refuses them first, so this guards direct launcher calls."""
    if x.numel() > INDEX_LIMIT:
        raise ValueError(f"input has {x.numel()} elements; the Triton channel-norm kernels index a "
                         f"statistics unit with int32 and take at most {INDEX_LIMIT}")


def _ncs(t):
    """(N, C, *spatial) -> (N, C, S) view (a copy only when the spatial dims cannot be merged)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def _num_programs(device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # the interpreter: enough splits to exercise the merge, few enough to stay fast


class _Reduction:
    """How reduction units and their elements map to memory, plus the split of each unit.
    Units are contiguous in memory when ``unit_stride == 1`` (channels_last for channel units):
    then a program takes many units and a short stretch of each, so loads stay coalesced."""

    def __init__(self, units, u_inner, stride_uo, stride_ui, r, r0, stride_r1, stride_r0, device):
        self.units, self.u_inner, self.stride_uo, self.stride_ui = units, u_inner, stride_uo, stride_ui
        self.r, self.r0, self.stride_r1, self.stride_r0 = r, r0, stride_r1, stride_r0
        # Units side by side in memory (channels_last, or a 1x1 plane where r0 == 1 makes the
        # inner stride moot): a program takes many units and a short stretch of each.
        wide = stride_ui == 1 and units > 1 and (stride_r0 != 1 or r0 == 1)
        self.block_u = min(64, triton.next_power_of_2(units)) if wide else 1
        self.block_r = max(16, min(TILE // self.block_u, triton.next_power_of_2(max(r, 1))))
        u_blocks = triton.cdiv(units, self.block_u)
        splits = max(1, min(triton.cdiv(_num_programs(device), u_blocks), triton.cdiv(r, self.block_r)))
        self.r_per_split = max(1, triton.cdiv(triton.cdiv(r, splits), self.block_r)) * self.block_r
        self.splits = max(1, triton.cdiv(r, self.r_per_split))
        self.grid = (u_blocks, self.splits)

    def args(self):
        return (self.units, self.u_inner, self.stride_uo, self.stride_ui)

    def r_args(self):
        return (self.r, self.r0, self.stride_r1, self.stride_r0)


def _elementwise_config(x3):
    """Tile shape for the (C, S) plane of one sample: long along whichever of C/S is contiguous."""
    _, C, S = x3.shape
    if x3.stride(1) == 1 and S > 1:  # channels_last
        block_c = min(128, triton.next_power_of_2(C))
        block_s = max(1, min(TILE // block_c, triton.next_power_of_2(S)))
    else:
        block_s = min(TILE, triton.next_power_of_2(S))
        block_c = max(1, min(TILE // block_s, triton.next_power_of_2(C)))
    return block_c, block_s


def _stats(x3, red, eps, unbiased_var=False):
    """(mean, rstd, unbiased variance or None), fp32, of every reduction unit of ``red``."""
    dev = x3.device
    part_mean = new_empty(red.splits, red.units, dtype=torch.float32, device=dev)
    part_m2 = new_empty(red.splits, red.units, dtype=torch.float32, device=dev)
    _partial_stats_kernel[red.grid](x3, part_mean, part_m2, *red.args(), *red.r_args(), red.r_per_split,
                                    BLOCK_U=red.block_u, BLOCK_R=red.block_r,
                                    num_warps=num_warps(red.block_u * red.block_r))
    mean = new_empty(red.units, dtype=torch.float32, device=dev)
    rstd = new_empty(red.units, dtype=torch.float32, device=dev)
    var = new_empty(red.units, dtype=torch.float32, device=dev) if unbiased_var else None
    block = min(1024, triton.next_power_of_2(red.units))
    _finalize_stats_kernel[(triton.cdiv(red.units, block),)](
        part_mean, part_m2, mean, rstd, var if unbiased_var else mean, red.units, red.r,
        red.r_per_split, red.splits, eps, HAS_VAR=unbiased_var, BLOCK_U=block, num_warps=4)
    return mean, rstd, var


def _apply(x3, y3, mean, rstd, weight, bias, units_per_sample, channels_per_unit, act):
    N, C, S = x3.shape
    block_c, block_s = _elementwise_config(x3)
    s_blocks = triton.cdiv(S, block_s)
    _apply_kernel[(N * s_blocks, triton.cdiv(C, block_c))](
        x3, y3, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
        C, S, s_blocks, *x3.stride(), *y3.stride(), units_per_sample, channels_per_unit,
        HAS_W=weight is not None, HAS_B=bias is not None, ACT=act, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=num_warps(block_c * block_s))


def _grad_sums(x3, dy3, layout, mean, rstd, weight, bias, units_per_sample, channels_per_unit, act):
    """(SPLITS, units) fp32 partials of sum g and sum g * xhat per reduction unit of ``layout``
    (:func:`_grad_finalize` reduces them). dy is addressed with its own strides (it may be laid
    out unlike x, e.g. expanded)."""
    red = _reduction(layout(x3), x3.device)
    dy_layout = layout(dy3)
    part_g = new_empty(red.splits, red.units, dtype=torch.float32, device=x3.device)
    part_gx = new_empty(red.splits, red.units, dtype=torch.float32, device=x3.device)
    dy_red = (dy_layout[2], dy_layout[3], dy_layout[6], dy_layout[7])
    _partial_grad_kernel[red.grid](
        x3, dy3, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
        part_g, part_gx, *red.args(), *dy_red[:2], *red.r_args(), *dy_red[2:], red.r_per_split,
        units_per_sample, channels_per_unit, HAS_W=weight is not None, HAS_B=bias is not None, ACT=act,
        BLOCK_U=red.block_u, BLOCK_R=red.block_r, num_warps=num_warps(red.block_u * red.block_r))
    return part_g, part_gx


MAX_FINALIZE_CG = 4096   # channels per group the finalize tile holds (larger groups: torch ops)


def _grad_finalize(part_g, part_gx, weight, nb, C, groups, count, need_c, dw_dtype, db_dtype):
    """(c1, c2 per (sample, group) or None, dweight or None, dbias or None) from the gradient
    partials of (sample, channel) units (nb samples; BatchNorm: nb = 1, one group per channel);
    ``count``: elements per statistics group. One kernel launch."""
    dev = part_g.device
    cg = C // groups
    c1 = new_empty(nb * groups, dtype=torch.float32, device=dev) if need_c else None
    c2 = new_empty(nb * groups, dtype=torch.float32, device=dev) if need_c else None
    dw = new_empty(C, dtype=dw_dtype, device=dev) if dw_dtype is not None else None
    db = new_empty(C, dtype=db_dtype, device=dev) if db_dtype is not None else None
    if cg > MAX_FINALIZE_CG:  # one group wider than a tile (GroupNorm with very few groups)
        sum_g, sum_gx = part_g.sum(0).view(nb, C), part_gx.sum(0).view(nb, C)
        w = weight.float() if weight is not None else torch.ones(C, device=dev)
        if need_c:
            c1.copy_((w * sum_gx).view(nb, groups, cg).sum(-1).reshape(-1) / count)
            c2.copy_((w * sum_g).view(nb, groups, cg).sum(-1).reshape(-1) / count)
        if dw is not None:
            dw.copy_(sum_gx.sum(0))
        if db is not None:
            db.copy_(sum_g.sum(0))
        return c1, c2, dw, db
    if C == 0:
        return c1, c2, dw, db
    per_channel = cg == 1
    block_cg = min(FINALIZE_CHANNELS, triton.next_power_of_2(C)) if per_channel else triton.next_power_of_2(cg)
    block_n = max(1, min(triton.next_power_of_2(max(nb, 1)), TILE // block_cg))
    any_out = next(t for t in (c1, dw, db, part_g) if t is not None)
    _grad_finalize_kernel[(triton.cdiv(C, block_cg) if per_channel else groups,)](
        part_g, part_gx, weight if weight is not None else part_g, c1 if need_c else any_out,
        c2 if need_c else any_out, dw if dw is not None else any_out, db if db is not None else any_out,
        part_g.shape[0], nb, C, cg, 1.0 / max(count, 1),
        HAS_W=weight is not None, HAS_C=need_c, HAS_DW=dw is not None, HAS_DB=db is not None,
        PER_CHANNEL=per_channel, BLOCK_N=block_n, BLOCK_CG=block_cg, num_warps=num_warps(block_n * block_cg))
    return c1, c2, dw, db


def _grad_apply(x3, dy3, dx3, mean, rstd, weight, bias, c1, c2, units_per_sample, channels_per_unit, act):
    N, C, S = x3.shape
    block_c, block_s = _elementwise_config(x3)
    s_blocks = triton.cdiv(S, block_s)
    has_c = c1 is not None
    _grad_apply_kernel[(N * s_blocks, triton.cdiv(C, block_c))](
        x3, dy3, dx3, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
        c1 if has_c else mean, c2 if has_c else mean, C, S, s_blocks, *x3.stride(), *dy3.stride(),
        *dx3.stride(), units_per_sample, channels_per_unit, HAS_W=weight is not None,
        HAS_B=bias is not None, ACT=act, HAS_C=has_c, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=num_warps(block_c * block_s))


# Reduction layouts: (units, u_inner, stride_uo, stride_ui, R, R0, stride_r1, stride_r0).
def _channel_units(t3):
    """BatchNorm: one unit per channel, reducing over (N, S)."""
    N, C, S = t3.shape
    sn, sc, ss = t3.stride()
    return (C, C, 0, sc, N * S, S, sn, ss)


def _group_units(t3, groups):
    """GroupNorm/InstanceNorm: one unit per (sample, group), reducing over (C/G, S)."""
    N, C, S = t3.shape
    sn, sc, ss = t3.stride()
    cg = C // groups
    if sc == 1 and S > 1:  # channels_last: walk the group's channels fastest
        return (N * groups, groups, sn, cg * sc, cg * S, cg, ss, sc)
    return (N * groups, groups, sn, cg * sc, cg * S, S, sc, ss)


def _sample_channel_units(t3):
    """Backward of Group/InstanceNorm: one unit per (sample, channel), reducing over S."""
    N, C, S = t3.shape
    sn, sc, ss = t3.stride()
    return (N * C, C, sn, sc, S, S, 0, ss)


def _reduction(layout, device):
    return _Reduction(*layout, device=device)


def _out_like(x):
    """A new tensor shaped like ``x`` (its dense layout kept) and its (N, C, S) *view*."""
    out = new_empty_like(x)
    out3 = _ncs(out)
    if not (out3._is_view() and out3._base is out) and out3.data_ptr() != out.data_ptr():
        out = new_empty(*x.shape, dtype=x.dtype, device=x.device)  # layout with unmergeable dims
        out3 = _ncs(out)
    return out, out3


def batch_norm_fwd(x, weight, bias, running_mean, running_var, training, eps):
    """x (N, C, *) -> (y like x, mean (C,), rstd (C,), unbiased batch variance (C,) or an empty
    tensor), fp32 statistics. Training: batch statistics; else the running statistics. Nothing is
    mutated: the caller updates running statistics from mean and the unbiased variance."""
    _check_index_range(x)
    x3 = _ncs(x)
    y, y3 = _out_like(x)
    if training:
        red = _reduction(_channel_units(x3), x.device)
        mean, rstd, var = _stats(x3, red, eps, unbiased_var=True)
    else:
        mean = running_mean.to(torch.float32, copy=True)
        rstd = torch.rsqrt(running_var.float() + eps)
        var = x.new_empty(0, dtype=torch.float32)
    if x.numel():
        _apply(x3, y3, mean, rstd, weight, bias, 0, 1, 0)
    return y, mean, rstd, var


def batch_norm_bwd(dy, x, weight, save_mean, save_rstd, training, has_bias):
    """-> (dx like x, dweight (C,) or None, dbias (C,) or None)."""
    _check_index_range(x)
    x3, dy3 = _ncs(x), _ncs(dy)
    dx, dx3 = _out_like(x)
    N, C, S = x3.shape
    part_g, part_gx = _grad_sums(x3, dy3, _channel_units, save_mean, save_rstd, None, None, 0, 1, 0)
    c1, c2, dw, db = _grad_finalize(part_g, part_gx, weight, 1, C, C, N * S, training,
                                    weight.dtype if weight is not None else None, x.dtype if has_bias else None)
    _grad_apply(x3, dy3, dx3, save_mean, save_rstd, weight, None, c1, c2, 0, 1, 0)
    return dx, dw, db


def group_norm_fwd(x, num_groups, weight, bias, eps, activation):
    """x (N, C, *) -> (act(group_norm(x)) like x, mean (N, G) fp32, rstd (N, G) fp32)."""
    _check_index_range(x)
    x3 = _ncs(x)
    N = x3.shape[0]
    y, y3 = _out_like(x)
    C, S = x3.shape[1], x3.shape[2]
    cg = C // num_groups
    block_c, block_s = triton.next_power_of_2(cg), triton.next_power_of_2(S)
    if block_c * block_s <= ONCHIP_FWD_ELEMS:  # one program per group, read once
        mean = new_empty(N * num_groups, dtype=torch.float32, device=x.device)
        rstd = new_empty(N * num_groups, dtype=torch.float32, device=x.device)
        if N * num_groups:
            _group_fwd_onchip_kernel[(N * num_groups,)](
                x3, y3, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
                num_groups, cg, S, *x3.stride(), *y3.stride(), eps, HAS_W=weight is not None,
                HAS_B=bias is not None, ACT=ACTIVATIONS[activation], BLOCK_C=block_c, BLOCK_S=block_s,
                num_warps=16)
        return y, mean.view(N, num_groups), rstd.view(N, num_groups)
    red = _reduction(_group_units(x3, num_groups), x.device)
    mean, rstd, _ = _stats(x3, red, eps)
    _apply(x3, y3, mean, rstd, weight, bias, num_groups, cg, ACTIVATIONS[activation])
    return y, mean.view(N, num_groups), rstd.view(N, num_groups)


def group_norm_bwd(dy, x, num_groups, weight, bias, mean, rstd, activation):
    """-> (dx like x, dweight (C,) or None, dbias (C,) or None); activation's gradient included."""
    _check_index_range(x)
    x3, dy3 = _ncs(x), _ncs(dy)
    N, C, S = x3.shape
    cg = C // num_groups
    act = ACTIVATIONS[activation]
    mean, rstd = mean.reshape(-1), rstd.reshape(-1)
    dx, dx3 = _out_like(x)
    dtypes = (weight.dtype if weight is not None else None, bias.dtype if bias is not None else None)
    block_c, block_s = triton.next_power_of_2(cg), triton.next_power_of_2(S)
    if block_c * block_s <= ONCHIP_BWD_ELEMS:  # one program per group: x and dy read once
        part_g = new_empty(1, N * C, dtype=torch.float32, device=x.device)
        part_gx = new_empty(1, N * C, dtype=torch.float32, device=x.device)
        if N * num_groups:
            _group_bwd_onchip_kernel[(N * num_groups,)](
                x3, dy3, dx3, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
                part_g, part_gx, num_groups, cg, S, *x3.stride(), *dy3.stride(), *dx3.stride(),
                HAS_W=weight is not None, HAS_B=bias is not None, ACT=act, BLOCK_C=block_c, BLOCK_S=block_s,
                num_warps=16)
        _, _, dw, db = _grad_finalize(part_g, part_gx, weight, N, C, num_groups, cg * S, False, *dtypes)
        return dx, dw, db
    part_g, part_gx = _grad_sums(x3, dy3, _sample_channel_units, mean, rstd, weight, bias, num_groups, cg, act)
    c1, c2, dw, db = _grad_finalize(part_g, part_gx, weight, N, C, num_groups, cg * S, True, *dtypes)
    _grad_apply(x3, dy3, dx3, mean, rstd, weight, bias, c1, c2, num_groups, cg, act)
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# What the compile test builds for sm_80/sm_90: each kernel at its largest tile in the shapes the
# host code picks (narrow-unit and wide-unit reductions; S-major and C-major elementwise tiles),
# with every flag on and the costliest activation (GELU), in fp32 and bf16.
# ---------------------------------------------------------------------------------------------
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_FP32_PTRS = {"PART_MEAN", "PART_M2", "MEAN", "RSTD", "VAR_UNBIASED", "PART_G", "PART_GX", "C1", "C2"}
_DATA_PTRS = {"X", "Y", "DY", "DX", "W", "B"}


def _signature(kernel, dtype):
    sig = {}
    for a in kernel.arg_names:
        if a == "eps":
            sig[a] = "fp32"
        elif a in _FP32_PTRS:
            sig[a] = "*fp32"
        elif a in _DATA_PTRS:
            sig[a] = _PTR[dtype]
        elif a.startswith(("HAS_", "BLOCK_")) or a == "ACT":
            sig[a] = "constexpr"
        else:
            sig[a] = "i32"
    return sig
