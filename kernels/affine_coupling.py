"""Triton affine coupling (RealNVP / Glow) with the log-determinant fused in, and its backward.

Per sample b the transformed half is a row x[b] of N values (C channels × S pixels, NCHW order)
and the conditioning output h[b] a row of 2N: log-scale half h[b, :N], shift half h[b, N:] (in
NCHW the two channel halves are contiguous planes, so the split is just an offset of N).

forward:  y = x · s + t            logdet[b] =  Σ log s
reverse:  y = (x - t) / s          logdet[b] = -Σ log s
with s from the scale map: "exp" s = e^h, "sigmoid" s = sigmoid(h + 2), "softclamp"
s = exp(clamp · tanh(h / clamp)).

Grid (B · chunks,): each forward program writes one BLOCK chunk of a row and its partial log-det to
partial[b, chunk]; the launcher sums the partials in a fixed order (deterministic, no atomics).
The backward is purely element-wise (the log-det gradient is one number per sample).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

BLOCK = 1024
SCALES = {"exp": 0, "sigmoid": 1, "softclamp": 2}


@triton.jit
def _expm1(z):
    # Kahan: exact-ish expm1 from exp and log (no libdevice, so it also runs in the interpreter).
    u = tl.exp(z)
    um1 = u - 1.0
    exact = (um1 == 0.0) | (u == float("inf"))
    ratio = um1 * z / tl.where(exact, 1.0, tl.log(u))  # (safe denominator: both branches run)
    return tl.where(um1 == 0.0, z, tl.where(exact, um1, ratio))


@triton.jit
def _log1p(v):
    # Kahan: log1p(v) = log(1 + v) · v / ((1 + v) - 1), exact-ish for tiny v.
    w = 1.0 + v
    d = w - 1.0
    return tl.where(d == 0.0, v, tl.log(w) * v / tl.where(d == 0.0, 1.0, d))


@triton.jit
def _scale_map(h, clamp, SCALE: tl.constexpr):
    """-> (log s, s, 1 / s, d log s / d h) for raw log-scale h (fp32)."""
    if SCALE == 0:
        log_s = h
        s = tl.exp(h)
        inv_s = tl.exp(-h)
        dlog = tl.full(h.shape, 1.0, tl.float32)
    elif SCALE == 1:
        z = h + 2.0
        e = tl.exp(-tl.abs(z))
        log_s = tl.minimum(z, 0.0) - _log1p(e)     # log sigmoid(z), stable for both signs
        s = tl.where(z >= 0, 1.0, e) / (1.0 + e)
        inv_s = 1.0 + tl.exp(-z)
        dlog = 1.0 - s
    else:
        u = h / clamp
        # tanh(u) = -expm1(-2|u|) / (2 + expm1(-2|u|)) · sign(u), accurate near 0 too
        m = _expm1(-2.0 * tl.abs(u))
        th = -m / (2.0 + m)
        th = tl.where(u < 0, -th, th)
        log_s = clamp * th
        s = tl.exp(log_s)
        inv_s = tl.exp(-log_s)
        dlog = 1.0 - th * th
    return log_s, s, inv_s, dlog


@triton.jit
def _coupling_fwd_kernel(
    # pointers
    X, H, Y, PART,            # x (B, N), h (B, 2N), y (B, N), partial log-dets (B, chunks) fp32
    # sizes and strides
    N, num_chunks, stride_xb, stride_hb, clamp,
    # meta
    REVERSE: tl.constexpr, SCALE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)   # (sample, chunk) on one axis: the batch may exceed grid axis 1's 65535
    b = (pid // num_chunks).to(tl.int64)
    chunk = pid % num_chunks
    cols = chunk.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + b * stride_xb + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(H + b * stride_hb + cols, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(H + b * stride_hb + N + cols, mask=mask, other=0.0).to(tl.float32)
    log_s, s, inv_s, _ = _scale_map(h, clamp, SCALE)
    if REVERSE:
        y = (x - t) * inv_s
        part = -tl.sum(tl.where(mask, log_s, 0.0), axis=0)
    else:
        y = x * s + t
        part = tl.sum(tl.where(mask, log_s, 0.0), axis=0)
    tl.store(Y + b * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(PART + b * num_chunks + chunk, part)


@triton.jit
def _coupling_bwd_kernel(
    # pointers
    DY, DLD, X, H, DX, DH,    # dy (B, N), dlogdet (B,) fp32, x (B, N), h (B, 2N), dx (B, N), dh (B, 2N)
    # sizes and strides
    N, num_chunks, stride_dyb, stride_xb, stride_hb, clamp,
    # meta
    REVERSE: tl.constexpr, SCALE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // num_chunks).to(tl.int64)
    cols = (pid % num_chunks).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    dy = tl.load(DY + b * stride_dyb + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + b * stride_xb + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(H + b * stride_hb + cols, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(H + b * stride_hb + N + cols, mask=mask, other=0.0).to(tl.float32)
    dld = tl.load(DLD + b)
    _, s, inv_s, dlog = _scale_map(h, clamp, SCALE)
    if REVERSE:
        # y = (x - t) / s, logdet = -Σ log s
        dx = dy * inv_s
        dt = -dx
        dlog_s = -dy * (x - t) * inv_s - dld
    else:
        # y = x · s + t, logdet = Σ log s
        dx = dy * s
        dt = dy
        dlog_s = dx * x + dld
    tl.store(DX + b * N + cols, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DH + b * 2 * N + cols, (dlog_s * dlog).to(DH.dtype.element_ty), mask=mask)
    tl.store(DH + b * 2 * N + N + cols, dt.to(DH.dtype.element_ty), mask=mask)


def _rows(t):
    """A (B, K) operand whose rows are unit-stride (copied otherwise)."""
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _block(n):
    return min(BLOCK, triton.next_power_of_2(max(n, 16)))


def affine_coupling_fwd(x2, h2, reverse, scale, clamp):
    """x2 (B, N), h2 (B, 2N) (log-scale half, shift half) -> (y (B, N) in x's dtype, logdet (B,) fp32)."""
    x2, h2 = _rows(x2), _rows(h2)
    B, N = x2.shape
    block = _block(N)
    chunks = triton.cdiv(N, block)
    y = new_empty(B, N, dtype=x2.dtype, device=x2.device)
    part = new_empty(B, chunks, dtype=torch.float32, device=x2.device)
    if B > 0 and N > 0:
        _coupling_fwd_kernel[(chunks * B,)](x2, h2, y, part, N, chunks, x2.stride(0), h2.stride(0),
                                          float(clamp), REVERSE=bool(reverse), SCALE=SCALES[scale],
                                          BLOCK_N=block, num_warps=4)
    else:
        part.zero_()
    return y, part.sum(1)


def affine_coupling_bwd(dy2, dlogdet, x2, h2, reverse, scale, clamp):
    """-> (dx (B, N) in x's dtype, dh (B, 2N) in h's dtype). x2 is the op's input (y for reverse)."""
    dy2, x2, h2 = _rows(dy2), _rows(x2), _rows(h2)
    dlogdet = dlogdet.to(torch.float32).contiguous()
    B, N = x2.shape
    block = _block(N)
    chunks = triton.cdiv(N, block)
    dx = new_empty(B, N, dtype=x2.dtype, device=x2.device)
    dh = new_empty(B, 2 * N, dtype=h2.dtype, device=x2.device)
    if B > 0 and N > 0:
        _coupling_bwd_kernel[(chunks * B,)](
            dy2, dlogdet, x2, h2, dx, dh, N, chunks, dy2.stride(0), x2.stride(0), h2.stride(0), float(clamp),
            REVERSE=bool(reverse), SCALE=SCALES[scale], BLOCK_N=block, num_warps=4)
    return dx, dh
