"""Triton ActNorm: the per-channel affine map ``y = x · m[c] + k[c]`` and its backward.

The op layer turns ActNorm's parameters into m and k (forward: m = e^logscale, k = bias · m;
inverse: m = e^-logscale, k = -bias) and lets torch differentiate that tiny map, so the kernels
only need dx = dy · m and the per-channel sums Σ dy and Σ dy · x.

x is viewed as (B, C, S) with unit stride along S (S = 1 for vectors). Grid (C, P): program
(c, p) walks the tiles p, p + P, ... of channel c's B·S positions (position r = b·S + s), so vectors
and images tile alike; the backward writes per-program partial sums, summed by the launcher in a
fixed order (deterministic, no atomics).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

BLOCK = 1024
MAX_PROGRAMS_PER_CHANNEL = 64


@triton.jit
def _tile(r0, R, S, stride_b, stride_c, c, BLOCK_R: tl.constexpr):
    """Offsets into a strided (B, C, S) tensor and into a contiguous one, and the mask, of the
    positions r0 .. r0 + BLOCK_R of channel c."""
    r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
    b = r // S
    s = r - b * S
    return b * stride_b + c * stride_c + s, (b * tl.num_programs(0) + c) * S + s, r < R


@triton.jit
def _act_norm_fwd_kernel(
    # pointers
    X, M, K, Y,                  # x (B, C, S) strided, m and k (C,) fp32, y (B, C, S) contiguous
    # sizes and strides
    R, S, stride_xb, stride_xc,  # R = B·S
    # meta
    BLOCK_R: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    m = tl.load(M + c)
    k = tl.load(K + c)
    for r0 in range(tl.program_id(1) * BLOCK_R, R, tl.num_programs(1) * BLOCK_R):
        off_x, off_y, mask = _tile(r0, R, S, stride_xb, stride_xc, c, BLOCK_R)
        x = tl.load(X + off_x, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + off_y, (x * m + k).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _act_norm_bwd_kernel(
    # pointers
    DY, X, M, DX, PART,          # dy, x strided (B, C, S); m (C,); dx contiguous; PART (2, P, C) fp32
    # sizes and strides
    R, S, stride_dyb, stride_dyc, stride_xb, stride_xc,
    # meta
    BLOCK_R: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    m = tl.load(M + c)
    acc_dy = tl.zeros([BLOCK_R], tl.float32)
    acc_dyx = tl.zeros([BLOCK_R], tl.float32)
    for r0 in range(p * BLOCK_R, R, tl.num_programs(1) * BLOCK_R):
        off_x, off_out, mask = _tile(r0, R, S, stride_xb, stride_xc, c, BLOCK_R)
        off_dy, _, _ = _tile(r0, R, S, stride_dyb, stride_dyc, c, BLOCK_R)
        x = tl.load(X + off_x, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + off_dy, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + off_out, (dy * m).to(DX.dtype.element_ty), mask=mask)
        acc_dy += dy
        acc_dyx += dy * x
    num_c = tl.num_programs(0)
    tl.store(PART + p * num_c + c, tl.sum(acc_dy, axis=0))
    tl.store(PART + (tl.num_programs(1) + p) * num_c + c, tl.sum(acc_dyx, axis=0))


def _unit_s(t):
    """A (B, C, S) operand with unit stride along S (copied otherwise, e.g. an expanded dy)."""
    return t if t.shape[2] <= 1 or t.stride(2) == 1 else t.contiguous()


def _plan(B, S):
    rows = B * S
    block = min(BLOCK, triton.next_power_of_2(max(rows, 16)))
    return rows, block, max(1, min(triton.cdiv(rows, block), MAX_PROGRAMS_PER_CHANNEL))


def act_norm_fwd(x3, m, k):
    """x3 (B, C, S), m and k (C,) fp32 -> y (B, C, S) contiguous in x's dtype, y = x · m[c] + k[c]."""
    x3 = _unit_s(x3)
    B, C, S = x3.shape
    y = new_empty(B, C, S, dtype=x3.dtype, device=x3.device)
    rows, block, programs = _plan(B, S)
    if rows > 0 and C > 0:
        _act_norm_fwd_kernel[(C, programs)](x3, m.float().contiguous(), k.float().contiguous(), y, rows, S,
                                            x3.stride(0), x3.stride(1), BLOCK_R=block, num_warps=4)
    return y


def act_norm_bwd(dy3, x3, m):
    """-> (dx (B, C, S) in x's dtype, Σ dy (C,) fp32, Σ dy · x (C,) fp32), sums over B and S."""
    dy3, x3 = _unit_s(dy3), _unit_s(x3)
    B, C, S = x3.shape
    rows, block, programs = _plan(B, S)
    dx = new_empty(B, C, S, dtype=x3.dtype, device=x3.device)
    part = new_empty(2, programs, C, dtype=torch.float32, device=x3.device)
    if rows > 0 and C > 0:
        _act_norm_bwd_kernel[(C, programs)](dy3, x3, m.float().contiguous(), dx, part, rows, S,
                                            dy3.stride(0), dy3.stride(1), x3.stride(0), x3.stride(1),
                                            BLOCK_R=block, num_warps=4)
    else:
        part.zero_()
    return dx, part[0].sum(0), part[1].sum(0)


def compile_specs():
    """Both kernels at the largest tile, fp32 and bf16."""
    for dtype, ptr in ((torch.float32, "*fp32"), (torch.bfloat16, "*bf16")):
        t = str(dtype)[6:]
        fwd = {"X": ptr, "M": "*fp32", "K": "*fp32", "Y": ptr, "R": "i64", "S": "i64",
               "stride_xb": "i64", "stride_xc": "i64", "BLOCK_R": "constexpr"}
        bwd = {"DY": ptr, "X": ptr, "M": "*fp32", "DX": ptr, "PART": "*fp32", "R": "i64", "S": "i64",
               "stride_dyb": "i64", "stride_dyc": "i64", "stride_xb": "i64", "stride_xc": "i64",
               "BLOCK_R": "constexpr"}
        yield (f"fwd_{t}_r{BLOCK}", _act_norm_fwd_kernel, fwd, {"BLOCK_R": BLOCK}, 4)
        yield (f"bwd_{t}_r{BLOCK}", _act_norm_bwd_kernel, bwd, {"BLOCK_R": BLOCK}, 4)
