"""Triton invertible 1×1 convolution: the per-pixel channel matmul ``y[b, :, s] = W x[b, :, s]``
and its backward ``dx = Wᵀ dy``, ``dW = Σ_pixels dy xᵀ``.

x is viewed as (B, C, S) with unit stride along S (S = 1 for vectors); positions r = b·S + s are
tiled alike for vectors and images. W (C, C) is fp32 and tiny: the op layer assembles it from the
LU parameters (and inverts it by triangular solves) in torch. The matmul accumulates outer
products W[:, i] x[i, :] over the input channels i on CUDA cores in fp32 (C ≤ 128, Glow's ≤ 96).

dW: grid (C, P); program (i, p) sums dy[:, r] · x[i, r] over the position tiles p, p + P, ...
into column i of its partial (P, C, C); the launcher sums the partials in a fixed order.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

MAX_CHANNELS = 128
TILE_ELEMS = 4096              # C_PAD × BLOCK_R accumulators per program
MAX_PROGRAMS_PER_CHANNEL = 32


@triton.jit
def _positions(r0, R, S, stride_b, BLOCK_R: tl.constexpr):
    """Offsets (without the channel term) of positions r0 .. r0 + BLOCK_R in a (B, C, S) tensor of
    batch stride stride_b and unit S stride, and their mask."""
    r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
    b = r // S
    return b * stride_b + (r - b * S), r < R


@triton.jit
def _matmul_kernel(
    # pointers
    X, W, Y,                     # x (B, C, S) strided, w (C, C) fp32, y (B, C, S) contiguous
    # sizes and strides
    R, S, C, stride_xb, stride_xc,
    # meta
    C_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
):
    off_x, mask = _positions(tl.program_id(0).to(tl.int64) * BLOCK_R, R, S, stride_xb, BLOCK_R)
    off_y, _ = _positions(tl.program_id(0).to(tl.int64) * BLOCK_R, R, S, C * S, BLOCK_R)
    o = tl.arange(0, C_PAD)
    acc = tl.zeros([C_PAD, BLOCK_R], tl.float32)
    for i in range(C):
        xi = tl.load(X + off_x + i * stride_xc, mask=mask, other=0.0).to(tl.float32)
        wi = tl.load(W + o * C + i, mask=o < C, other=0.0)
        acc += wi[:, None] * xi[None, :]
    out = Y + off_y[None, :] + o[:, None].to(tl.int64) * S
    tl.store(out, acc.to(Y.dtype.element_ty), mask=(o[:, None] < C) & mask[None, :])


@triton.jit
def _dw_kernel(
    # pointers
    DY, X, PART,                 # dy, x (B, C, S) strided; partial dW (P, C, C) fp32
    # sizes and strides
    R, S, C, stride_dyb, stride_dyc, stride_xb, stride_xc,
    # meta
    C_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
):
    i = tl.program_id(0)
    p = tl.program_id(1)
    o = tl.arange(0, C_PAD)
    acc = tl.zeros([C_PAD, BLOCK_R], tl.float32)
    for r0 in range(p * BLOCK_R, R, tl.num_programs(1) * BLOCK_R):
        off_x, mask = _positions(r0, R, S, stride_xb, BLOCK_R)
        off_dy, _ = _positions(r0, R, S, stride_dyb, BLOCK_R)
        xi = tl.load(X + off_x + i * stride_xc, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + off_dy[None, :] + o[:, None] * stride_dyc,
                     mask=(o[:, None] < C) & mask[None, :], other=0.0).to(tl.float32)
        acc += dy * xi[None, :]
    tl.store(PART + (p * C + o) * C + i, tl.sum(acc, axis=1), mask=o < C)


def _unit_s(t):
    """A (B, C, S) operand with unit stride along S (copied otherwise, e.g. an expanded dy)."""
    return t if t.shape[2] <= 1 or t.stride(2) == 1 else t.contiguous()


def _plan(B, C, S):
    rows = B * S
    c_pad = triton.next_power_of_2(C)
    block = min(max(16, TILE_ELEMS // c_pad), triton.next_power_of_2(max(rows, 16)))
    return rows, c_pad, block, _warps(c_pad)


def _warps(c_pad):
    return 8 if c_pad >= 64 else 4   # the dW tile of 128 channels needs 200+ registers at 4 warps


def inv_conv1x1_fwd(x3, w):
    """x3 (B, C, S), w (C, C) -> y (B, C, S) contiguous in x's dtype, y[b, :, s] = w @ x[b, :, s]."""
    x3 = _unit_s(x3)
    B, C, S = x3.shape
    w = w.float().contiguous()
    rows, c_pad, block, warps = _plan(B, C, S)
    y = new_empty(B, C, S, dtype=x3.dtype, device=x3.device)
    if rows > 0:
        _matmul_kernel[(triton.cdiv(rows, block),)](x3, w, y, rows, S, C, x3.stride(0), x3.stride(1),
                                                    C_PAD=c_pad, BLOCK_R=block, num_warps=warps)
    return y


def inv_conv1x1_bwd(dy3, x3, w):
    """-> (dx = wᵀ dy (B, C, S) in x's dtype, dw = Σ_{b,s} dy xᵀ (C, C) fp32)."""
    dy3, x3 = _unit_s(dy3), _unit_s(x3)
    B, C, S = x3.shape
    rows, c_pad, block, warps = _plan(B, C, S)
    programs = max(1, min(triton.cdiv(rows, block), MAX_PROGRAMS_PER_CHANNEL))
    part = new_empty(programs, C, C, dtype=torch.float32, device=x3.device)
    if rows > 0:
        _dw_kernel[(C, programs)](dy3, x3, part, rows, S, C, dy3.stride(0), dy3.stride(1),
                                  x3.stride(0), x3.stride(1), C_PAD=c_pad, BLOCK_R=block, num_warps=warps)
    else:
        part.zero_()
    dx = inv_conv1x1_fwd(dy3, w.float().t())
    return dx, part.sum(0)
