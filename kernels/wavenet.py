"""Triton fused WaveNet residual layer (forward) and its backward.

    h = dilated_causal_conv(x; w_dil (2C, C, K)) + b_dil (+ cond)      (B, 2C, L)
    z = tanh(h[:, :C]) * sigmoid(h[:, C:])                               (B, C, L)
    out = x + w_res @ z + b_res,   skip = w_skip @ z + b_skip           (B, C, L), (B, S, L)

Forward: one program per (batch, L tile) holds every channel of its tile: the two halves of h
(tl.dot over taps and Cin tiles), the gate, and both 1x1 projections (tl.dot with z as operand, BLOCK_O
output rows at a time), so z never goes to memory and h only once, saved for the backward. The
residual channels are padded to a power of two (C <= 128: WaveNet uses 64 or 128); the skip
channels are unlimited.

Backward: one program per (batch, L tile) computes dz = w_res^T dout + w_skip^T dskip and the gate
derivative, writing dh (B, 2C, L) (which is also dcond) and z; then the dilated-conv kernels give
dx (+ dout), dw_dil, db_dil, and their weight-gradient kernel with K = 1 gives dw_res/db_res and
dw_skip/db_skip (deterministic: fixed-order reductions).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty
from .dilated_conv1d import _dconv_dweight_kernel, _dweight_ci, dilated_conv1d_bwd

MAX_C = 128       # residual channels: the program keeps its (C, BLOCK_L) tiles of h and z in registers
BLOCK_O = 32      # output rows of the projections per tl.dot (any number of skip channels)
NUM_WARPS = 8


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _wavenet_fwd_kernel(
    X, WD, BD, COND, WR, BR, WS, BS, OUT, SKIP, H,  # x (B, C, L), w_dil (2C, C, K), w_res (C, C), w_skip (S, C)
    C, S, L, K, dil,                                # sizes; causal: left padding (K - 1) * dil
    sxb, sxc, sxl, scb, scc, scl,                   # strides of x and cond; out, skip, h are contiguous
    HAS_BD: tl.constexpr, HAS_COND: tl.constexpr, HAS_BR: tl.constexpr, HAS_BS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    c = tl.arange(0, BLOCK_C)
    lmask = l < L
    cmask = c < C
    acc_a = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
    acc_g = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
    for k in range(K):
        src = l - (K - 1 - k) * dil
        smask = (src >= 0) & lmask
        for ci0 in range(0, C, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            xv = tl.load(X + b * sxb + ci[:, None].to(tl.int64) * sxc + src[None, :].to(tl.int64) * sxl,
                         mask=(ci[:, None] < C) & smask[None, :], other=0.0)                 # (BCI, BL)
            wmask = cmask[:, None] & (ci[None, :] < C)
            wa = tl.load(WD + (c[:, None] * C + ci[None, :]) * K + k, mask=wmask, other=0.0)
            wg = tl.load(WD + ((c[:, None] + C) * C + ci[None, :]) * K + k, mask=wmask, other=0.0)
            acc_a = tl.dot(wa, xv, acc_a, input_precision="ieee")
            acc_g = tl.dot(wg, xv, acc_g, input_precision="ieee")
    if HAS_BD:
        acc_a += tl.load(BD + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        acc_g += tl.load(BD + C + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
    m2 = cmask[:, None] & lmask[None, :]
    if HAS_COND:
        cond = COND + b * scb + l[None, :].to(tl.int64) * scl
        acc_a += tl.load(cond + c[:, None].to(tl.int64) * scc, mask=m2, other=0.0).to(tl.float32)
        acc_g += tl.load(cond + (c[:, None] + C).to(tl.int64) * scc, mask=m2, other=0.0).to(tl.float32)
    hrow = H + b * (2 * C * L) + l[None, :]
    tl.store(hrow + c[:, None] * L, acc_a.to(H.dtype.element_ty), mask=m2)
    tl.store(hrow + (c[:, None] + C) * L, acc_g.to(H.dtype.element_ty), mask=m2)
    z = (_tanh(acc_a) * tl.sigmoid(acc_g)).to(X.dtype.element_ty)   # z rounded as the composition rounds it
    z = tl.where(m2, z, 0.0)
    # out = x + (w_res @ z + b_res), then skip = w_skip @ z + b_skip: BLOCK_O output rows at a time
    for o0 in range(0, C + S, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        is_res = o < C
        row = tl.where(is_res, o, o - C)                            # row of w_res or of w_skip
        omask = o < C + S
        w = tl.load(tl.where(is_res, WR, WS)[:, None] + row[:, None] * C + c[None, :],
                    mask=omask[:, None] & cmask[None, :], other=0.0)     # (BO, BC)
        acc = tl.dot(w, z, input_precision="ieee")                  # (BO, BL)
        if HAS_BR:
            acc += tl.load(BR + row, mask=is_res, other=0.0).to(tl.float32)[:, None]
        if HAS_BS:
            acc += tl.load(BS + row, mask=omask & ~is_res, other=0.0).to(tl.float32)[:, None]
        rmask = is_res[:, None] & lmask[None, :]
        xv = tl.load(X + b * sxb + row[:, None].to(tl.int64) * sxc + l[None, :].to(tl.int64) * sxl,
                     mask=rmask, other=0.0)
        res = acc.to(X.dtype.element_ty).to(tl.float32) + xv.to(tl.float32)   # the projection rounded first
        tl.store(OUT + b * (C * L) + row[:, None] * L + l[None, :], res.to(OUT.dtype.element_ty), mask=rmask)
        tl.store(SKIP + b * (S * L) + row[:, None] * L + l[None, :], acc.to(SKIP.dtype.element_ty),
                 mask=(omask & ~is_res)[:, None] & lmask[None, :])


@triton.jit
def _wavenet_gate_bwd_kernel(
    DOUT, DSKIP, H, WR, WS, DH, Z,                  # dh (B, 2C, L), z (B, C, L): contiguous outputs
    C, S, L,
    sob, soc, sol, ssb, ssc, ssl,                   # strides of dout and dskip (stride 0 allowed)
    BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    c = tl.arange(0, BLOCK_C)
    lmask = l < L
    cmask = c < C
    m2 = cmask[:, None] & lmask[None, :]
    # dz = w_res^T @ dout + w_skip^T @ dskip, BLOCK_O rows of [dout; dskip] at a time
    dz = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
    for o0 in range(0, C + S, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        is_res = o < C
        row = tl.where(is_res, o, o - C)
        omask = o < C + S
        wt = tl.load(tl.where(is_res, WR, WS)[None, :] + row[None, :] * C + c[:, None],
                     mask=cmask[:, None] & omask[None, :], other=0.0)                        # (BC, BO)
        g = tl.load(tl.where(is_res, DOUT + b * sob, DSKIP + b * ssb)[:, None]
                    + row[:, None].to(tl.int64) * tl.where(is_res, soc, ssc)[:, None]
                    + l[None, :].to(tl.int64) * tl.where(is_res, sol, ssl)[:, None],
                    mask=omask[:, None] & lmask[None, :], other=0.0)                        # (BO, BL)
        dz = tl.dot(wt, g.to(wt.dtype), dz, input_precision="ieee")
    hrow = H + b * (2 * C * L) + l[None, :]
    a = tl.load(hrow + c[:, None] * L, mask=m2, other=0.0).to(tl.float32)
    g = tl.load(hrow + (c[:, None] + C) * L, mask=m2, other=0.0).to(tl.float32)
    ta = _tanh(a)
    sg = tl.sigmoid(g)
    da = dz * sg * (1.0 - ta * ta)
    dg = dz * ta * sg * (1.0 - sg)
    drow = DH + b * (2 * C * L) + l[None, :]
    tl.store(drow + c[:, None] * L, da.to(DH.dtype.element_ty), mask=m2)
    tl.store(drow + (c[:, None] + C) * L, dg.to(DH.dtype.element_ty), mask=m2)
    tl.store(Z + b * (C * L) + c[:, None] * L + l[None, :], (ta * sg).to(Z.dtype.element_ty), mask=m2)


def _blocks(C, L, dtype):
    """(BLOCK_C, BLOCK_CI, BLOCK_L): every residual channel of an L tile; smaller Cin and L tiles
    for wide layers (fp32 operands of tl.dot take twice the registers)."""
    bc = max(16, triton.next_power_of_2(C))
    wide_fp32 = bc > 64 and dtype == torch.float32
    bl = 64 if bc <= 64 else 16 if wide_fp32 else 32
    return bc, 16 if wide_fp32 else min(bc, 32), max(16, min(bl, triton.next_power_of_2(L)))


def wavenet_layer_fwd(x, w_dil, b_dil, cond, w_res, b_res, w_skip, b_skip, dilation):
    """x (B, C, L) any strides; w_dil (2C, C, K), w_res (C, C), w_skip (S, C) contiguous; biases
    or None; cond (B, 2C, L) or None. -> (out (B, C, L), skip (B, S, L), h (B, 2C, L)), contiguous."""
    B, C, L = x.shape
    S, K = w_skip.shape[0], w_dil.shape[2]
    out = new_empty(B, C, L, dtype=x.dtype, device=x.device)
    skip = new_empty(B, S, L, dtype=x.dtype, device=x.device)
    h = new_empty(B, 2 * C, L, dtype=x.dtype, device=x.device)
    bc, bci, bl = _blocks(C, L, x.dtype)
    dummy = w_res
    _wavenet_fwd_kernel[(B, triton.cdiv(L, bl))](
        x, w_dil, b_dil if b_dil is not None else dummy, cond if cond is not None else x, w_res,
        b_res if b_res is not None else dummy, w_skip, b_skip if b_skip is not None else dummy,
        out, skip, h, C, S, L, K, dilation, *x.stride(), *(cond.stride() if cond is not None else (0, 0, 0)),
        HAS_BD=b_dil is not None, HAS_COND=cond is not None, HAS_BR=b_res is not None, HAS_BS=b_skip is not None,
        BLOCK_C=bc, BLOCK_O=BLOCK_O, BLOCK_CI=bci, BLOCK_L=bl, num_warps=NUM_WARPS)
    return out, skip, h


def _weight_grad_1x1(dy, z, has_bias):
    """sum_b dy (B, O, L) @ z (B, I, L)^T -> ((O, I) fp32, (O,) fp32 or None)."""
    B, I, L = z.shape
    O = dy.shape[1]
    dw = new_empty(O, I, 1, dtype=torch.float32, device=z.device)
    db = new_empty(O, dtype=torch.float32, device=z.device) if has_bias else dw
    bo = max(16, min(64, triton.next_power_of_2(O)))
    bi = max(16, min(_dweight_ci(z.dtype), triton.next_power_of_2(I)))
    _dconv_dweight_kernel[(triton.cdiv(O, bo), triton.cdiv(I, bi), 1)](
        dy, z, dw, db, B, I, O, L, 1, 1, 0, *dy.stride(), *z.stride(),
        HAS_BIAS=has_bias, BLOCK_CO=bo, BLOCK_CI=bi, BLOCK_L=max(16, min(32, triton.next_power_of_2(L))),
        num_warps=NUM_WARPS)
    return dw.view(O, I), (db if has_bias else None)


def wavenet_layer_bwd(dout, dskip, x, h, w_dil, w_res, w_skip, has_b_dil, has_b_res, has_b_skip, dilation):
    """-> (dx, dw_dil, db_dil | None, dh (= dcond), dw_res, db_res | None, dw_skip, db_skip | None);
    weight and bias gradients in the weights' dtype."""
    B, C, L = x.shape
    S, K = w_skip.shape[0], w_dil.shape[2]
    dh = new_empty(B, 2 * C, L, dtype=x.dtype, device=x.device)
    z = new_empty(B, C, L, dtype=x.dtype, device=x.device)
    bc, _, bl = _blocks(C, L, x.dtype)
    _wavenet_gate_bwd_kernel[(B, triton.cdiv(L, bl))](
        dout, dskip, h, w_res, w_skip, dh, z, C, S, L, *dout.stride(), *dskip.stride(),
        BLOCK_C=bc, BLOCK_O=BLOCK_O, BLOCK_L=bl, num_warps=NUM_WARPS)
    dx, dw_dil, db_dil = dilated_conv1d_bwd(dh, x, w_dil, has_b_dil, dilation, (K - 1) * dilation)
    dx += dout
    dw_res, db_res = _weight_grad_1x1(dout, z, has_b_res)
    dw_skip, db_skip = _weight_grad_1x1(dskip, z, has_b_skip)
    cast = lambda t: t.to(w_res.dtype) if t is not None else None  # noqa: E731
    return dx, dw_dil, db_dil, dh, cast(dw_res), cast(db_res), cast(dw_skip), cast(db_skip)
