"""Triton causal depthwise conv1d (Mamba's short convolution) with fused SiLU and its backward, with
causal-conv1d's packed sequences (``seq_idx``) and initial states (the decode step:
causal_conv1d_update.py).

x (B, D, L) with any strides (channel-first, channel-last = a (B, L, D) tensor transposed, or a
strided view); weight (D, W) with W <= 8. One program per (batch, D tile, L tile); the W taps are
W shifted loads of the same tile, which hit L1/L2 after the first.

    z[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l - (W - 1) + k]      (x = 0 before l = 0)
    y = z  or  silu(z)

x before l = 0 is initial_states[b, d, W - 1 + l] when given (zeros otherwise); under seq_idx a tap
whose position belongs to another sequence (seq_idx[b, src] != seq_idx[b, l]) reads 0, so the
sequences packed in one row never see each other. dinitial_states[p] (p = -(W-1)..-1) is dx's
formula at a negative position, computed by the first L tile of each row.

Backward (dz = dy, or dy * silu'(z) with z recomputed):
    dx[l] = sum_k weight[d, k] * dz[l + (W - 1) - k]
    dweight[d, k] = sum_{b, l} dz[l] * x[l - (W - 1) + k],   dbias[d] = sum_{b, l} dz[l]
dweight/dbias are written as fp32 partials per (batch, L tile) and summed in a fixed order
(deterministic).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty, new_empty_like

MAX_WIDTH = 8


@triton.jit
def _tap(X, Init, Seq, xrow, irow, srow, seq_l, d, src, D, L, sxl, sil, ssl,
         WIDTH: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """x at positions src (1, BL) of channels d (BD, 1) as seen from a position of sequence seq_l:
    initial_states before 0 (or 0), 0 past L and, under seq_idx, 0 in another sequence. fp32."""
    m = (d < D) & (src >= 0) & (src < L)
    if HAS_SEQ:
        m = m & (tl.load(Seq + srow + src.to(tl.int64) * ssl, mask=(src >= 0) & (src < L), other=-1) == seq_l)
    xv = tl.load(X + xrow + src.to(tl.int64) * sxl, mask=m, other=0.0).to(tl.float32)
    if HAS_INIT:
        mi = (d < D) & (src < 0) & (src >= 1 - WIDTH)
        xv += tl.load(Init + irow + (src + WIDTH - 1).to(tl.int64) * sil, mask=mi, other=0.0).to(tl.float32)
    return xv


@triton.jit
def _seq_at(Seq, srow, l, L, ssl, HAS_SEQ: tl.constexpr):
    """seq_idx at positions l (-2 outside [0, L): equal to no tap's; 0 without seq_idx)."""
    s = tl.zeros_like(l)  # one return: both branches must give one type (unused and dropped without seq_idx)
    if HAS_SEQ:
        s = tl.load(Seq + srow + l.to(tl.int64) * ssl, mask=(l >= 0) & (l < L), other=-2)
    return s


@triton.jit
def _conv_at(X, Wt, Bias, Init, Seq, xrow, irow, srow, d, l, D, L, sxl, sil, ssl,
             WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """z at positions l (1, BL) of channels d (BD, 1); xrow, irow: X / Init offsets of (b, d, 0),
    srow: Seq offset of (b, 0), int64."""
    acc = tl.zeros([d.shape[0], l.shape[1]], tl.float32)
    seq_l = _seq_at(Seq, srow, l, L, ssl, HAS_SEQ)
    for k in tl.static_range(WIDTH):
        xv = _tap(X, Init, Seq, xrow, irow, srow, seq_l, d, l - (WIDTH - 1) + k, D, L, sxl, sil, ssl,
                  WIDTH, HAS_INIT, HAS_SEQ)
        wv = tl.load(Wt + d * WIDTH + k, mask=d < D, other=0.0).to(tl.float32)
        acc += xv * wv
    if HAS_BIAS:
        acc += tl.load(Bias + d, mask=d < D, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    X, Wt, Bias, Init, Seq, Y,      # pointers: x (B, D, L), weight (D, W), bias (D,), initial_states
                                    # (B, D, W - 1), seq_idx (B, L) int32, y (B, D, L)
    D, L,                           # sizes
    sxb, sxd, sxl, syb, syd, syl,   # strides
    sib, sid, sil, ssb, ssl,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    d64 = d.to(tl.int64)
    z = _conv_at(X, Wt, Bias, Init, Seq, b * sxb + d64 * sxd, b * sib + d64 * sid, b * ssb, d, l, D, L,
                 sxl, sil, ssl, WIDTH, HAS_BIAS, HAS_INIT, HAS_SEQ)
    if SILU:
        z = z * tl.sigmoid(z)
    out = Y + b * syb + d64 * syd + l.to(tl.int64) * syl
    tl.store(out, z.to(Y.dtype.element_ty), mask=(d < D) & (l < L))


@triton.jit
def _dz_at(X, Wt, Bias, Init, Seq, DY, xrow, irow, srow, dyrow, d, l, D, L, sxl, sil, ssl, sdyl,
           WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
           HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr):
    """dL/dz at positions l (0 outside [0, L); l < 0 only reaches here with initial states)."""
    m = (d < D) & (l < L)
    if HAS_INIT:
        m = m & (l >= 0)
    dz = tl.load(DY + dyrow + l.to(tl.int64) * sdyl, mask=m, other=0.0).to(tl.float32)
    if SILU:
        z = _conv_at(X, Wt, Bias, Init, Seq, xrow, irow, srow, d, l, D, L, sxl, sil, ssl,
                     WIDTH, HAS_BIAS, HAS_INIT, HAS_SEQ)
        s = tl.sigmoid(z)
        dz = dz * s * (1.0 + z * (1.0 - s))
    return dz


@triton.jit
def _causal_conv1d_bwd_kernel(
    DY, X, Wt, Bias, Init, Seq,     # pointers (as the forward's)
    DX, DWP, DBP, DINIT,            # DWP (B * nL, D, W), DBP (B * nL, D): fp32 partials; DINIT (B, D, W - 1)
    D, L,
    sdyb, sdyd, sdyl, sxb, sxd, sxl, sdxb, sdxd, sdxl,
    sib, sid, sil, ssb, ssl, sdib, sdid, sdil,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_K: tl.constexpr,          # next power of 2 of W - 1 (the initial-state positions)
):
    b = tl.program_id(1).to(tl.int64)
    lt = tl.program_id(0)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    l = lt * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    d64 = d.to(tl.int64)
    xrow = b * sxb + d64 * sxd
    irow = b * sib + d64 * sid
    srow = b * ssb
    dyrow = b * sdyb + d64 * sdyd
    dmask = d < D
    dz0 = _dz_at(X, Wt, Bias, Init, Seq, DY, xrow, irow, srow, dyrow, d, l, D, L, sxl, sil, ssl, sdyl,
                 WIDTH, HAS_BIAS, SILU, HAS_INIT, HAS_SEQ)
    seq_l = _seq_at(Seq, srow, l, L, ssl, HAS_SEQ)
    dx = dz0 * tl.load(Wt + d * WIDTH + (WIDTH - 1), mask=dmask, other=0.0).to(tl.float32)
    for j in tl.static_range(1, WIDTH):  # dz at l + j meets weight tap W - 1 - j
        dz = _dz_at(X, Wt, Bias, Init, Seq, DY, xrow, irow, srow, dyrow, d, l + j, D, L, sxl, sil, ssl, sdyl,
                    WIDTH, HAS_BIAS, SILU, HAS_INIT, HAS_SEQ)
        if HAS_SEQ:  # l + j of another sequence does not see l
            dz = tl.where(_seq_at(Seq, srow, l + j, L, ssl, HAS_SEQ) == seq_l, dz, 0.0)
        dx += dz * tl.load(Wt + d * WIDTH + (WIDTH - 1 - j), mask=dmask, other=0.0).to(tl.float32)
    tl.store(DX + b * sdxb + d64 * sdxd + l.to(tl.int64) * sdxl, dx.to(DX.dtype.element_ty),
             mask=dmask & (l < L))
    part = b * tl.num_programs(0) + lt
    dvec = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    for k in tl.static_range(WIDTH):
        xv = _tap(X, Init, Seq, xrow, irow, srow, seq_l, d, l - (WIDTH - 1) + k, D, L, sxl, sil, ssl,
                  WIDTH, HAS_INIT, HAS_SEQ)
        tl.store(DWP + (part * D + dvec) * WIDTH + k, tl.sum(dz0 * xv, axis=1), mask=dvec < D)
    tl.store(DBP + part * D + dvec, tl.sum(dz0, axis=1), mask=dvec < D)
    if HAS_INIT:
        if lt == 0:  # dinitial_states: dx's formula at the positions p = -(W-1)..-1
            p = tl.arange(0, BLOCK_K)[None, :] - (WIDTH - 1)
            acc = tl.zeros([BLOCK_D, BLOCK_K], tl.float32)
            for j in tl.static_range(1, WIDTH):
                dzp = _dz_at(X, Wt, Bias, Init, Seq, DY, xrow, irow, srow, dyrow, d, p + j, D, L, sxl, sil,
                            ssl, sdyl, WIDTH, HAS_BIAS, SILU, HAS_INIT, HAS_SEQ)
                acc += dzp * tl.load(Wt + d * WIDTH + (WIDTH - 1 - j), mask=dmask, other=0.0).to(tl.float32)
            tl.store(DINIT + b * sdib + d64 * sdid + (p + WIDTH - 1).to(tl.int64) * sdil,
                     acc.to(DINIT.dtype.element_ty), mask=dmask & (p < 0))


def _channel_last(x):
    return x.stride(1) == 1 and x.stride(2) != 1


def _tiles(channel_last, backward=False, width=4):
    """(BLOCK_D, BLOCK_L): the contiguous dim gets the long side of the tile. The backward holds
    W shifted dz tiles (and recomputes z for each under SiLU). Up to W = 4 (Mamba's) its tiles are
    as large as fit without spilling (sm_90, bf16, SiLU: (4, 256) 143 registers, (32, 16) 96), so
    the weight loads and the per-program dweight/dbias reductions amortize over 8 elements per
    thread instead of 2 (~270 SASS instructions per element instead of 324-360; 4x fewer partials
    channel-first); wider convs keep 2 per thread ((4, 256) spills at W = 8)."""
    bd, bl = (64, 16) if channel_last else (4, 128)
    if not backward:
        return bd, bl
    if width <= 4:
        return (bd // 2, bl) if channel_last else (bd, bl * 2)
    return (bd // 4, bl) if channel_last else (bd, bl // 2)


def _grid(B, D, L, bd, bl):
    """(L tiles, B, D tiles): the L tiles, the only count that can pass 65535, on grid axis 0."""
    return (triton.cdiv(L, bl), B, triton.cdiv(D, bd))


def _extras(x, seq_idx, initial_states):
    """Pointer and strides of the optional inputs (x and zeros stand in for absent ones)."""
    init = initial_states if initial_states is not None else x
    init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0)
    seq = seq_idx if seq_idx is not None else x
    seq_strides = seq_idx.stride() if seq_idx is not None else (0, 0)
    return init, seq, (*init_strides, *seq_strides)


def causal_conv1d_fwd(x, weight, bias, silu, seq_idx=None, initial_states=None):
    """x (B, D, L) any strides, weight (D, W) contiguous, bias (D,) or None, seq_idx (B, L) int32 or
    None, initial_states (B, D, W - 1) or None -> y like x."""
    B, D, L = x.shape
    width = weight.shape[1]
    y = new_empty_like(x)
    bd, bl = _tiles(_channel_last(x))
    init, seq, strides = _extras(x, seq_idx, initial_states)
    _causal_conv1d_fwd_kernel[_grid(B, D, L, bd, bl)](
        x, weight, bias if bias is not None else weight, init, seq, y, D, L, *x.stride(), *y.stride(),
        *strides, WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu),
        HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_D=bd, BLOCK_L=bl, num_warps=4)
    return y


def causal_conv1d_bwd(dy, x, weight, bias, silu, seq_idx=None, initial_states=None):
    """-> (dx like x, dweight (D, W) in weight's dtype, dbias (D,) in bias's dtype or None,
    dinitial_states (B, D, W - 1) in its dtype or None)."""
    B, D, L = x.shape
    width = weight.shape[1]
    dx = new_empty_like(x)
    bd, bl = _tiles(_channel_last(x), backward=True, width=width)
    grid = _grid(B, D, L, bd, bl)
    parts = B * grid[0]
    dwp = new_empty(parts, D, width, dtype=torch.float32, device=x.device)
    dbp = new_empty(parts, D, dtype=torch.float32, device=x.device)
    init, seq, strides = _extras(x, seq_idx, initial_states)
    dinit = new_empty_like(initial_states) if initial_states is not None else dx
    _causal_conv1d_bwd_kernel[grid](
        dy, x, weight, bias if bias is not None else weight, init, seq, dx, dwp, dbp, dinit, D, L,
        *dy.stride(), *x.stride(), *dx.stride(), *strides,
        *(dinit.stride() if initial_states is not None else (0, 0, 0)),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu),
        HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_D=bd, BLOCK_L=bl, BLOCK_K=triton.next_power_of_2(max(width - 1, 1)), num_warps=4)
    dbias = dbp.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dwp.sum(0).to(weight.dtype), dbias, dinit if initial_states is not None else None
