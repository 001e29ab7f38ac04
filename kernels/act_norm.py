"""Triton ActNorm: the per-channel affine map ``y = x · m[c] + k[c]`` and its backward.

The op layer turns ActNorm's parameters into m and k (forward: m = e^logscale, k = bias · m;
inverse: m = e^-logscale, k = -bias) and lets torch differentiate that tiny map, so the kernels
only need dx = dy · m and the per-channel sums Σ dy and Σ dy · x.

x is viewed as (B, C, S) with unit stride along S (S = 1 for vectors). A channel's B × S plane
is cut into (BLOCK_B, BLOCK_S) tiles (BLOCK_B · BLOCK_S ≤ 1024: whole rows of long planes, many
samples of short ones, so vectors and images tile alike with no per-element division). Grid
(C, P): program (c, p) walks the tiles p, p + P, ... of channel c; the backward writes per-program
partial sums, summed by the launcher in a fixed order (deterministic, no atomics).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

TILE = 1024
MAX_PROGRAMS_PER_CHANNEL = 64


@triton.jit
def _tile(t, B, S, BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr):
    """Sample and pixel indices of tile t of a (B, S) plane, and their mask."""
    n_s = tl.cdiv(S, BLOCK_S)
    b = (t // n_s).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    s = (t % n_s).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    return b[:, None], s[None, :], (b < B)[:, None] & (s < S)[None, :]


@triton.jit
def _act_norm_fwd_kernel(
    # pointers
    X, M, K, Y,                  # x (B, C, S) strided, m and k (C,) fp32, y (B, C, S) contiguous
    # sizes and strides
    B, C, S, stride_xb, stride_xc,
    # meta
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    m = tl.load(M + c)
    k = tl.load(K + c)
    tiles = tl.cdiv(B, BLOCK_B) * tl.cdiv(S, BLOCK_S)
    for t in range(tl.program_id(1), tiles, tl.num_programs(1)):
        b, s, mask = _tile(t, B, S, BLOCK_B, BLOCK_S)
        x = tl.load(X + b * stride_xb + c * stride_xc + s, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + (b * C + c) * S + s, (x * m + k).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _act_norm_bwd_kernel(
    # pointers
    DY, X, M, DX, PART,          # dy, x strided (B, C, S); m (C,); dx contiguous; PART (2, P, C) fp32
    # sizes and strides
    B, C, S, stride_dyb, stride_dyc, stride_xb, stride_xc,
    # meta
    BLOCK_B: tl.constexpr, BLOCK_S: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    m = tl.load(M + c)
    acc_dy = tl.zeros([BLOCK_B, BLOCK_S], tl.float32)
    acc_dyx = tl.zeros([BLOCK_B, BLOCK_S], tl.float32)
    tiles = tl.cdiv(B, BLOCK_B) * tl.cdiv(S, BLOCK_S)
    for t in range(p, tiles, tl.num_programs(1)):
        b, s, mask = _tile(t, B, S, BLOCK_B, BLOCK_S)
        x = tl.load(X + b * stride_xb + c * stride_xc + s, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + b * stride_dyb + c * stride_dyc + s, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + (b * C + c) * S + s, (dy * m).to(DX.dtype.element_ty), mask=mask)
        acc_dy += dy
        acc_dyx += dy * x
    tl.store(PART + p * C + c, tl.sum(tl.sum(acc_dy, axis=1), axis=0))
    tl.store(PART + (tl.num_programs(1) + p) * C + c, tl.sum(tl.sum(acc_dyx, axis=1), axis=0))


def _unit_s(t):
    """A (B, C, S) operand with unit stride along S (copied otherwise, e.g. an expanded dy)."""
    return t if t.shape[2] <= 1 or t.stride(2) == 1 else t.contiguous()


def _plan(B, S):
    """(BLOCK_B, BLOCK_S, programs per channel)."""
    block_s = min(TILE, triton.next_power_of_2(max(S, 1)))
    block_b = min(TILE // block_s, triton.next_power_of_2(max(B, 1)))
    tiles = triton.cdiv(B, block_b) * triton.cdiv(S, block_s)
    return block_b, block_s, max(1, min(tiles, MAX_PROGRAMS_PER_CHANNEL))


def act_norm_fwd(x3, m, k):
    """x3 (B, C, S), m and k (C,) fp32 -> y (B, C, S) contiguous in x's dtype, y = x · m[c] + k[c]."""
    x3 = _unit_s(x3)
    B, C, S = x3.shape
    y = new_empty(B, C, S, dtype=x3.dtype, device=x3.device)
    block_b, block_s, programs = _plan(B, S)
    if B * S > 0 and C > 0:
        _act_norm_fwd_kernel[(C, programs)](x3, m.float().contiguous(), k.float().contiguous(), y, B, C, S,
                                            x3.stride(0), x3.stride(1), BLOCK_B=block_b, BLOCK_S=block_s,
                                            num_warps=4)
    return y


def act_norm_bwd(dy3, x3, m):
    """-> (dx (B, C, S) in x's dtype, Σ dy (C,) fp32, Σ dy · x (C,) fp32), sums over B and S."""
    dy3, x3 = _unit_s(dy3), _unit_s(x3)
    B, C, S = x3.shape
    block_b, block_s, programs = _plan(B, S)
    dx = new_empty(B, C, S, dtype=x3.dtype, device=x3.device)
    part = new_empty(2, programs, C, dtype=torch.float32, device=x3.device)
    if B * S > 0 and C > 0:
        _act_norm_bwd_kernel[(C, programs)](dy3, x3, m.float().contiguous(), dx, part, B, C, S,
                                            dy3.stride(0), dy3.stride(1), x3.stride(0), x3.stride(1),
                                            BLOCK_B=block_b, BLOCK_S=block_s, num_warps=4)
    else:
        part.zero_()
    return dx, part[0].sum(0), part[1].sum(0)
