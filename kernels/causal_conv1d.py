"""Triton causal depthwise conv1d (Mamba's short convolution) with fused SiLU, its backward and the
one-token decode step.

x (B, D, L) with any strides (channel-first, channel-last = a (B, L, D) tensor transposed, or a
strided view); weight (D, W) with W <= 8. One program per (batch, D tile, L tile); the W taps are
W shifted loads of the same tile, which hit L1/L2 after the first.

    z[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l - (W - 1) + k]      (x = 0 before l = 0)
    y = z  or  silu(z)

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
def _conv_at(X, Wt, Bias, xrow, d, l, D, L, sxl,
             WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """z at positions l (1, BL) of channels d (BD, 1); xrow: X offsets of (b, d, 0), int64."""
    acc = tl.zeros([d.shape[0], l.shape[1]], tl.float32)
    for k in tl.static_range(WIDTH):
        src = l - (WIDTH - 1) + k
        m = (d < D) & (src >= 0) & (src < L)
        xv = tl.load(X + xrow + src.to(tl.int64) * sxl, mask=m, other=0.0).to(tl.float32)
        wv = tl.load(Wt + d * WIDTH + k, mask=d < D, other=0.0).to(tl.float32)
        acc += xv * wv
    if HAS_BIAS:
        acc += tl.load(Bias + d, mask=d < D, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _causal_conv1d_fwd_kernel(
    X, Wt, Bias, Y,                 # pointers: x (B, D, L), weight (D, W), bias (D,), y (B, D, L)
    D, L,                           # sizes
    sxb, sxd, sxl, syb, syd, syl,   # strides
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    z = _conv_at(X, Wt, Bias, b * sxb + d.to(tl.int64) * sxd, d, l, D, L, sxl, WIDTH, HAS_BIAS)
    if SILU:
        z = z * tl.sigmoid(z)
    out = Y + b * syb + d.to(tl.int64) * syd + l.to(tl.int64) * syl
    tl.store(out, z.to(Y.dtype.element_ty), mask=(d < D) & (l < L))


@triton.jit
def _dz_at(X, Wt, Bias, DY, xrow, dyrow, d, l, D, L, sxl, sdyl,
           WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """dL/dz at positions l (0 outside [0, L))."""
    m = (d < D) & (l < L)
    dz = tl.load(DY + dyrow + l.to(tl.int64) * sdyl, mask=m, other=0.0).to(tl.float32)
    if SILU:
        z = _conv_at(X, Wt, Bias, xrow, d, l, D, L, sxl, WIDTH, HAS_BIAS)
        s = tl.sigmoid(z)
        dz = dz * s * (1.0 + z * (1.0 - s))
    return dz


@triton.jit
def _causal_conv1d_bwd_kernel(
    DY, X, Wt, Bias, DX, DWP, DBP,  # pointers; DWP (B * nL, D, W), DBP (B * nL, D): fp32 partials
    D, L,
    sdyb, sdyd, sdyl, sxb, sxd, sxl, sdxb, sdxd, sdxl,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    lt = tl.program_id(0)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]
    l = lt * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    d64 = d.to(tl.int64)
    xrow = b * sxb + d64 * sxd
    dyrow = b * sdyb + d64 * sdyd
    dmask = d < D
    dz0 = _dz_at(X, Wt, Bias, DY, xrow, dyrow, d, l, D, L, sxl, sdyl, WIDTH, HAS_BIAS, SILU)
    dx = dz0 * tl.load(Wt + d * WIDTH + (WIDTH - 1), mask=dmask, other=0.0).to(tl.float32)
    for j in tl.static_range(1, WIDTH):  # dz at l + j meets weight tap W - 1 - j
        dz = _dz_at(X, Wt, Bias, DY, xrow, dyrow, d, l + j, D, L, sxl, sdyl, WIDTH, HAS_BIAS, SILU)
        dx += dz * tl.load(Wt + d * WIDTH + (WIDTH - 1 - j), mask=dmask, other=0.0).to(tl.float32)
    tl.store(DX + b * sdxb + d64 * sdxd + l.to(tl.int64) * sdxl, dx.to(DX.dtype.element_ty),
             mask=dmask & (l < L))
    part = b * tl.num_programs(0) + lt
    dvec = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    for k in tl.static_range(WIDTH):
        src = l - (WIDTH - 1) + k
        xv = tl.load(X + xrow + src.to(tl.int64) * sxl, mask=dmask & (src >= 0) & (src < L),
                     other=0.0).to(tl.float32)
        tl.store(DWP + (part * D + dvec) * WIDTH + k, tl.sum(dz0 * xv, axis=1), mask=dvec < D)
    tl.store(DBP + part * D + dvec, tl.sum(dz0, axis=1), mask=dvec < D)


@triton.jit
def _causal_conv1d_update_kernel(
    X, S, Wt, Bias, Y,              # x (B, D), conv_state (B, D, W - 1) updated in place, y (B, D)
    D,
    sxb, sxd, ssb, ssd, ssw, syb, syd,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,          # next power of 2 of W - 1 (at least 1)
):
    """Every load of the state happens before the barrier and every store after it: the state is
    shifted in place, and the thread that writes slot k need not be the one that read it (the
    loads and stores of a tile may get different thread layouts)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    d64 = d.to(tl.int64)
    k = tl.arange(0, BLOCK_K)[None, :]
    m2 = m[:, None] & (k < WIDTH - 1)
    slots = S + b * ssb + d64[:, None] * ssd + k.to(tl.int64) * ssw           # (BLOCK_D, BLOCK_K)
    x = tl.load(X + b * sxb + d64 * sxd, mask=m, other=0.0)
    old = tl.load(slots, mask=m2, other=0.0)                                   # s[k]
    nxt = tl.load(slots + ssw, mask=m2 & (k + 1 < WIDTH - 1), other=0.0)       # s[k + 1]
    new = tl.where(k == WIDTH - 2, x[:, None], nxt)                            # (s[1], .., s[W-2], x)
    w = tl.load(Wt + d[:, None] * WIDTH + k, mask=m2, other=0.0).to(tl.float32)
    acc = tl.sum(old.to(tl.float32) * w, axis=1)
    acc += x.to(tl.float32) * tl.load(Wt + d * WIDTH + (WIDTH - 1), mask=m, other=0.0).to(tl.float32)
    tl.debug_barrier()
    tl.store(slots, new.to(S.dtype.element_ty), mask=m2)
    if HAS_BIAS:
        acc += tl.load(Bias + d, mask=m, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(Y + b * syb + d64 * syd, acc.to(Y.dtype.element_ty), mask=m)


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


def causal_conv1d_fwd(x, weight, bias, silu):
    """x (B, D, L) any strides, weight (D, W) contiguous, bias (D,) or None -> y like x."""
    B, D, L = x.shape
    width = weight.shape[1]
    y = new_empty_like(x)
    bd, bl = _tiles(_channel_last(x))
    _causal_conv1d_fwd_kernel[_grid(B, D, L, bd, bl)](
        x, weight, bias if bias is not None else weight, y, D, L, *x.stride(), *y.stride(),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=bd, BLOCK_L=bl, num_warps=4)
    return y


def causal_conv1d_bwd(dy, x, weight, bias, silu):
    """-> (dx like x, dweight (D, W) in weight's dtype, dbias (D,) in bias's dtype or None)."""
    B, D, L = x.shape
    width = weight.shape[1]
    dx = new_empty_like(x)
    bd, bl = _tiles(_channel_last(x), backward=True, width=width)
    grid = _grid(B, D, L, bd, bl)
    parts = B * grid[0]
    dwp = new_empty(parts, D, width, dtype=torch.float32, device=x.device)
    dbp = new_empty(parts, D, dtype=torch.float32, device=x.device)
    _causal_conv1d_bwd_kernel[grid](
        dy, x, weight, bias if bias is not None else weight, dx, dwp, dbp, D, L,
        *dy.stride(), *x.stride(), *dx.stride(),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=bd, BLOCK_L=bl, num_warps=4)
    dbias = dbp.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dwp.sum(0).to(weight.dtype), dbias


def causal_conv1d_update(x, conv_state, weight, bias, silu):
    """x (B, D), conv_state (B, D, W - 1) updated in place -> y (B, D) in x's dtype."""
    B, D = x.shape
    width = weight.shape[1]
    y = new_empty(B, D, dtype=x.dtype, device=x.device)
    block = min(256, triton.next_power_of_2(max(D, 1)))
    _causal_conv1d_update_kernel[(B, triton.cdiv(D, block))](
        x, conv_state, weight, bias if bias is not None else weight, y, D,
        *x.stride(), *conv_state.stride(), *y.stride(),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=block,
        BLOCK_K=triton.next_power_of_2(max(width - 1, 1)), num_warps=4)
    return y
