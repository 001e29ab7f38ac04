"""Triton dilated conv1d (WaveNet / ByteNet): x (B, Cin, L), weight (Cout, Cin, K), output length L
with ``left`` zeros of padding before the sequence (causal: (K - 1) * dilation; centered: half).

Implicit GEMM on tensor cores: one program per (batch, Cout tile, L tile) sums, over the K taps and
Cin tiles, weight[co, ci, k] @ x[ci, l - left + k * dilation] with ``tl.dot`` (fp32 accumulation,
IEEE fp32 products for fp32 inputs). The backward is two more GEMMs of the same shape family:
dx = sum_k weight[:, :, k]^T @ dy(shifted), dweight[:, :, k] = sum_b dy @ x(shifted)^T, the latter
one program per (Cout tile, Cin tile, tap) in a fixed order (deterministic); dbias rides along.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

NUM_WARPS = 8  # 64 x 64 fp32 tiles with IEEE fp32 products spill at 4 warps


@triton.jit
def _dconv_fwd_kernel(
    X, Wt, Bias, Y,                       # x (B, Cin, L), weight (Cout, Cin, K), bias (Cout,), y (B, Cout, L)
    CIN, COUT, L, K, dil, left,           # sizes, dilation, left padding
    sxb, sxc, sxl, syb, syc, syl,         # strides
    HAS_BIAS: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    l = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    ci_r = tl.arange(0, BLOCK_CI)
    acc = tl.zeros([BLOCK_CO, BLOCK_L], tl.float32)
    for k in range(K):
        src = l - left + k * dil
        smask = (src >= 0) & (src < L)
        for ci0 in range(0, CIN, BLOCK_CI):
            ci = ci0 + ci_r
            w = tl.load(Wt + (co[:, None] * CIN + ci[None, :]) * K + k,
                        mask=(co[:, None] < COUT) & (ci[None, :] < CIN), other=0.0)          # (BCO, BCI)
            xv = tl.load(X + b * sxb + ci[:, None].to(tl.int64) * sxc + src[None, :].to(tl.int64) * sxl,
                         mask=(ci[:, None] < CIN) & smask[None, :], other=0.0)              # (BCI, BL)
            acc = tl.dot(w, xv, acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(Bias + co, mask=co < COUT, other=0.0).to(tl.float32)[:, None]
    out = Y + b * syb + co[:, None].to(tl.int64) * syc + l[None, :].to(tl.int64) * syl
    tl.store(out, acc.to(Y.dtype.element_ty), mask=(co[:, None] < COUT) & (l[None, :] < L))


@triton.jit
def _dconv_dx_kernel(
    DY, Wt, DX,                           # dy (B, Cout, L), weight (Cout, Cin, K), dx (B, Cin, L)
    CIN, COUT, L, K, dil, left,
    sdyb, sdyc, sdyl, sdxb, sdxc, sdxl,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    s = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    co_r = tl.arange(0, BLOCK_CO)
    acc = tl.zeros([BLOCK_CI, BLOCK_L], tl.float32)
    for k in range(K):
        out_l = s + left - k * dil        # the output position that read x[s] through tap k
        omask = (out_l >= 0) & (out_l < L)
        for co0 in range(0, COUT, BLOCK_CO):
            co = co0 + co_r
            wt = tl.load(Wt + (co[None, :] * CIN + ci[:, None]) * K + k,
                         mask=(co[None, :] < COUT) & (ci[:, None] < CIN), other=0.0)         # (BCI, BCO)
            g = tl.load(DY + b * sdyb + co[:, None].to(tl.int64) * sdyc + out_l[None, :].to(tl.int64) * sdyl,
                        mask=(co[:, None] < COUT) & omask[None, :], other=0.0)              # (BCO, BL)
            acc = tl.dot(wt, g, acc, input_precision="ieee")
    out = DX + b * sdxb + ci[:, None].to(tl.int64) * sdxc + s[None, :].to(tl.int64) * sdxl
    tl.store(out, acc.to(DX.dtype.element_ty), mask=(ci[:, None] < CIN) & (s[None, :] < L))


@triton.jit
def _dconv_dweight_kernel(
    DY, X, DW, DB,                        # dweight (Cout, Cin, K), dbias (Cout,): fp32
    B, CIN, COUT, L, K, dil, left,
    sdyb, sdyc, sdyl, sxb, sxc, sxl,
    HAS_BIAS: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_L: tl.constexpr,
):
    co = tl.program_id(0) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci = tl.program_id(1) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    k = tl.program_id(2)
    l_r = tl.arange(0, BLOCK_L)
    acc = tl.zeros([BLOCK_CO, BLOCK_CI], tl.float32)
    accb = tl.zeros([BLOCK_CO], tl.float32)
    for b in range(B):
        b64 = tl.cast(b, tl.int64)
        for l0 in range(0, L, BLOCK_L):
            l = l0 + l_r
            g = tl.load(DY + b64 * sdyb + co[:, None].to(tl.int64) * sdyc + l[None, :].to(tl.int64) * sdyl,
                        mask=(co[:, None] < COUT) & (l[None, :] < L), other=0.0)            # (BCO, BL)
            src = l - left + k * dil
            xt = tl.load(X + b64 * sxb + ci[None, :].to(tl.int64) * sxc + src[:, None].to(tl.int64) * sxl,
                         mask=(ci[None, :] < CIN) & (src[:, None] >= 0) & (src[:, None] < L), other=0.0)  # (BL, BCI)
            acc = tl.dot(g, xt, acc, input_precision="ieee")
            if HAS_BIAS:
                accb += tl.sum(g.to(tl.float32), axis=1)
    tl.store(DW + (co[:, None] * CIN + ci[None, :]) * K + k, acc, mask=(co[:, None] < COUT) & (ci[None, :] < CIN))
    if HAS_BIAS:
        if (tl.program_id(1) == 0) & (k == 0):
            tl.store(DB + co, accb, mask=co < COUT)


def _dweight_ci(dtype):
    """Cin tile of the dweight kernel: fp32 (IEEE products) spills at 64 x 64."""
    return 32 if dtype == torch.float32 else 64


def _block(n, lo=16, hi=64):
    return max(lo, min(hi, triton.next_power_of_2(n)))


def dilated_conv1d_fwd(x, weight, bias, dilation, left):
    """x (B, Cin, L) any strides, weight (Cout, Cin, K) contiguous, bias (Cout,) or None; output
    position l sees x[l - left + k * dilation]. -> y (B, Cout, L) contiguous."""
    B, CIN, L = x.shape
    COUT, _, K = weight.shape
    y = new_empty(B, COUT, L, dtype=x.dtype, device=x.device)
    bco, bci, bl = _block(COUT), _block(CIN, hi=32), _block(L, hi=64)
    grid = (B, triton.cdiv(COUT, bco), triton.cdiv(L, bl))
    _dconv_fwd_kernel[grid](x, weight, bias if bias is not None else weight, y, CIN, COUT, L, K, dilation, left,
                            *x.stride(), *y.stride(), HAS_BIAS=bias is not None,
                            BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_L=bl, num_warps=NUM_WARPS)
    return y


def dilated_conv1d_bwd(dy, x, weight, has_bias, dilation, left):
    """-> (dx (B, Cin, L) contiguous, dweight (Cout, Cin, K) in weight's dtype, dbias (Cout,) in
    x's dtype or None)."""
    B, CIN, L = x.shape
    COUT, _, K = weight.shape
    dx = new_empty(B, CIN, L, dtype=x.dtype, device=x.device)
    bci, bco, bl = _block(CIN), _block(COUT, hi=32), _block(L, hi=64)
    _dconv_dx_kernel[(B, triton.cdiv(CIN, bci), triton.cdiv(L, bl))](
        dy, weight, dx, CIN, COUT, L, K, dilation, left, *dy.stride(), *dx.stride(),
        BLOCK_CI=bci, BLOCK_CO=bco, BLOCK_L=bl, num_warps=NUM_WARPS)
    dw = new_empty(COUT, CIN, K, dtype=torch.float32, device=x.device)
    db = new_empty(COUT, dtype=torch.float32, device=x.device) if has_bias else dw
    bco, bci = _block(COUT), _block(CIN, hi=_dweight_ci(x.dtype))
    _dconv_dweight_kernel[(triton.cdiv(COUT, bco), triton.cdiv(CIN, bci), K)](
        dy, x, dw, db, B, CIN, COUT, L, K, dilation, left, *dy.stride(), *x.stride(),
        HAS_BIAS=has_bias, BLOCK_CO=bco, BLOCK_CI=bci, BLOCK_L=_block(L, hi=32), num_warps=NUM_WARPS)
    return dx, dw.to(weight.dtype), db.to(x.dtype) if has_bias else None
