"""Invertible 1×1 convolution (Glow) with an LU-parametrized weight
``W = P · L · (U + diag(sign_s · exp(log_s)))``: P a fixed permutation (``perm``: row i of W is
row ``perm[i]`` of L·U), L unit lower-triangular (from ``lower``'s strict lower part), U strictly
upper-triangular (from ``upper``). ``y[b, :, pixel] = W x[b, :, pixel]`` and
``logdet[b] = pixels · Σ log_s`` — no dense slogdet. ``reverse`` applies W⁻¹ = U⁻¹ L⁻¹ Pᵀ (two
triangular solves on the C×C factors) and negates the log-determinant.

The kernels do the per-pixel channel matmul and its backward (dx and dW = Σ dy xᵀ); W is assembled
(and inverted) in torch, whose autograd carries dW to the LU parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.act_norm import as_bcs, pixel_logdet
from dlkern.registry import Cost, OpSpec, Sample, register_op

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL_CHANNELS = 128


@torch.library.custom_op("dlkern::inv_conv1x1_fwd", mutates_args=())
def inv_conv1x1_fwd_op(x3: Tensor, w: Tensor, backend: str) -> Tensor:
    return _backend.launchers(backend, x3.device).inv_conv1x1_fwd(x3, w)


@torch.library.custom_op("dlkern::inv_conv1x1_bwd", mutates_args=())
def inv_conv1x1_bwd_op(dy3: Tensor, x3: Tensor, w: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _backend.launchers(backend, x3.device).inv_conv1x1_bwd(dy3, x3, w)


@inv_conv1x1_fwd_op.register_fake
def _(x3, w, backend):
    return x3.new_empty(x3.shape)


@inv_conv1x1_bwd_op.register_fake
def _(dy3, x3, w, backend):
    return x3.new_empty(x3.shape), w.new_empty(w.shape, dtype=torch.float32)


def _setup(ctx, inputs, output):
    x3, w, backend = inputs
    ctx.save_for_backward(x3, w)
    ctx.backend = backend


def _backward(ctx, dy3):
    x3, w = ctx.saved_tensors
    dx, dw = inv_conv1x1_bwd_op(dy3, x3, w, ctx.backend)
    return dx, dw.to(w.dtype), None


inv_conv1x1_fwd_op.register_autograd(_backward, setup_context=_setup)


def lu_weight(lower: Tensor, upper: Tensor, log_s: Tensor, sign_s: Tensor, perm: Tensor, *,
              reverse: bool = False, dtype: torch.dtype = torch.float32) -> Tensor:
    """W = P L (U + diag(sign_s · e^log_s)) (C, C) in ``dtype``, or its inverse for ``reverse``."""
    eye = torch.eye(log_s.shape[0], dtype=dtype, device=log_s.device)
    lo = torch.tril(lower.to(dtype), -1) + eye
    up = torch.triu(upper.to(dtype), 1) + torch.diag(sign_s.to(dtype) * torch.exp(log_s.to(dtype)))
    if not reverse:
        return (lo @ up)[perm]
    lo_inv = torch.linalg.solve_triangular(lo, eye, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(up, lo_inv, upper=True)[:, perm]   # U⁻¹ L⁻¹ Pᵀ


def inv_conv1x1_ref(x: Tensor, lower: Tensor, upper: Tensor, log_s: Tensor, sign_s: Tensor, perm: Tensor,
                    *, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Reference (the eager composition). x (B, C, *spatial) or (B, C); lower, upper (C, C); log_s,
    sign_s (C,); perm (C,) int64. Returns (y like x in x's dtype, logdet (B,) in float32, float64 for
    float64 inputs)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    w = lu_weight(lower, upper, log_s, sign_s, perm, reverse=reverse, dtype=acc)
    y = torch.matmul(w, as_bcs(x.to(acc)))
    return y.view(x.shape).to(x.dtype), pixel_logdet(x, log_s, reverse, acc)


def _check(x, lower, upper, log_s, sign_s, perm):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating-point tensor (B, C, *spatial); got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    c = x.shape[1]
    for name, t, shape in (("lower", lower, (c, c)), ("upper", upper, (c, c)), ("log_s", log_s, (c,)),
                           ("sign_s", sign_s, (c,)), ("perm", perm, (c,))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a tensor of shape {shape} for x with C = {c} channels; got "
                             f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")
    if perm.dtype != torch.int64:
        raise TypeError(f"perm must be an int64 permutation of range(C); got dtype {perm.dtype}")


@follows_autocast(NONE)
def inv_conv1x1(x: Tensor, lower: Tensor, upper: Tensor, log_s: Tensor, sign_s: Tensor, perm: Tensor, *,
                reverse: bool = False, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``(y, logdet)``: ``y = W x`` per pixel with the LU-parametrized W (``reverse``: ``W⁻¹ x``),
    ``logdet`` (B,) = ±(pixels · Σ log_s)."""
    _check(x, lower, upper, log_s, sign_s, perm)
    args = (x, lower, upper, log_s, sign_s, perm)
    chosen = choose(INV_CONV1X1, args, {"reverse": reverse}, backend)
    if chosen == "reference":
        return inv_conv1x1_ref(*args, reverse=reverse)
    w = lu_weight(lower, upper, log_s, sign_s, perm, reverse=reverse)
    y3 = inv_conv1x1_fwd_op(as_bcs(x), w, chosen)
    return y3.view(x.shape), pixel_logdet(x, log_s, reverse, torch.float32)


def _supports(backend, x, *params, **kwargs):
    reasons = [] if x.dtype in KERNEL_DTYPES else [f"x dtype {x.dtype} is not supported (float32, float16, bfloat16)"]
    if x.shape[1] > MAX_KERNEL_CHANNELS:
        reasons.append(f"the kernels take at most {MAX_KERNEL_CHANNELS} channels; got {x.shape[1]}")
    return reasons


def lu_params(c: int, generator: torch.Generator | None = None, scale: float = 0.3):
    """Random LU parameters (lower, upper, log_s, sign_s, perm) for C channels, on the CPU in float32."""
    r = lambda *s: torch.randn(s, generator=generator)  # noqa: E731
    return (scale * r(c, c), scale * r(c, c), scale * r(c), torch.where(r(c) < 0, -1.0, 1.0),
            torch.randperm(c, generator=generator))


def _sample(name, x, params, device, dtype, **kwargs):
    lower, upper, log_s, sign_s, perm = (p.to(device=device, dtype=dtype) if p.is_floating_point() else p.to(device)
                                         for p in params)
    return Sample(name, (x, lower, upper, log_s, sign_s, perm), kwargs, (0, 1, 2, 3))


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(10)
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    yield _sample("vec", r(5, 4), lu_params(4, gen), device, dtype)
    yield _sample("img_rev", r(2, 3, 1, 3), lu_params(3, gen), device, dtype, reverse=True)
    yield _sample("img_odd", r(3, 7, 5, 3), lu_params(7, gen), device, dtype)
    yield _sample("img_channels_last", r(2, 6, 3, 3).contiguous(memory_format=torch.channels_last),
                  lu_params(6, gen), device, dtype)
    yield _sample("channel_slice_b1", r(1, 24, 3, 3)[:, 12:], lu_params(12, gen), device, dtype)
    yield _sample("many_rows_rev", r(700, 5), lu_params(5, gen), device, dtype, reverse=True)


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 12, 32, 32)] if quick else [(32, 12, 32, 32), (32, 48, 16, 16), (16, 96, 8, 8)]
    for shape in shapes:
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        yield _sample("x".join(map(str, shape)), x, lu_params(shape[1], gen), device, dtype)


def _cost(sample):
    x = sample.args[0]
    c = x.shape[1]
    e = x.numel() * x.element_size()
    return Cost(fwd_bytes=2 * e, bwd_bytes=4 * e, fwd_flops=2 * x.numel() * c, bwd_flops=4 * x.numel() * c)


INV_CONV1X1 = register_op(OpSpec(
    name="inv_conv1x1", family="flow", fn=inv_conv1x1, reference=inv_conv1x1_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=inv_conv1x1_ref,
    launchers=("inv_conv1x1_fwd", "inv_conv1x1_bwd"),
))
