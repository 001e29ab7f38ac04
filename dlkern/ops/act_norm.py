"""ActNorm (Glow): the per-channel affine map ``y = (x + bias) · exp(logscale)`` with its
log-determinant ``logdet[b] = S · Σ logscale`` (S = number of pixels; negated for ``reverse``,
which computes ``x = y · exp(-logscale) - bias``).

The kernels compute ``y = x · m[c] + k[c]`` (and dx, Σ dy, Σ dy·x for the backward); m and k are
formed from the parameters in torch (C values), which also differentiates that tiny map.
The data-dependent initialization lives in :class:`dlkern.nn.ActNorm`. ``as_bcs`` and
``pixel_logdet`` serve inv_conv1x1 too.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.registry import Cost, OpSpec, Sample, register_op

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("dlkern::act_norm_fwd", mutates_args=())
def act_norm_fwd_op(x3: Tensor, m: Tensor, k: Tensor, backend: str) -> Tensor:
    return _backend.launchers(backend, x3.device).act_norm_fwd(x3, m, k)


@torch.library.custom_op("dlkern::act_norm_bwd", mutates_args=())
def act_norm_bwd_op(dy3: Tensor, x3: Tensor, m: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.launchers(backend, x3.device).act_norm_bwd(dy3, x3, m)


@act_norm_fwd_op.register_fake
def _(x3, m, k, backend):
    return x3.new_empty(x3.shape)


@act_norm_bwd_op.register_fake
def _(dy3, x3, m, backend):
    c = x3.shape[1]
    return x3.new_empty(x3.shape), x3.new_empty(c, dtype=torch.float32), x3.new_empty(c, dtype=torch.float32)


def _setup(ctx, inputs, output):
    x3, m, _k, backend = inputs
    ctx.save_for_backward(x3, m)
    ctx.backend = backend


def _backward(ctx, dy3):
    x3, m = ctx.saved_tensors
    dx, sum_dy, sum_dyx = act_norm_bwd_op(dy3, x3, m, ctx.backend)
    return dx, sum_dyx.to(m.dtype), sum_dy.to(m.dtype), None


act_norm_fwd_op.register_autograd(_backward, setup_context=_setup)


def as_bcs(x: Tensor) -> Tensor:
    """(B, C, *spatial) or (B, C) viewed as (B, C, S) (a copy only where a view is impossible)."""
    return x.flatten(2) if x.dim() > 2 else x.unsqueeze(2)


def pixel_logdet(x: Tensor, log_scales: Tensor, reverse: bool, acc: torch.dtype) -> Tensor:
    """(B,) log-determinant of a per-pixel channel map with the log-scales ``log_scales`` (C,):
    pixels · Σ log_scales for every sample (negated for ``reverse``)."""
    ld = math.prod(x.shape[2:]) * log_scales.to(acc).sum()
    return (-ld if reverse else ld).expand(x.shape[0])


def act_norm_ref(x: Tensor, bias: Tensor, logscale: Tensor, *, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Reference (the eager composition). x (B, C, *spatial) or (B, C); bias, logscale (C,).
    Returns (y like x in x's dtype, logdet (B,) in float32, float64 for float64 inputs)."""
    acc = torch.promote_types(x.dtype, torch.float32)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    b, ls = bias.to(acc).view(shape), logscale.to(acc).view(shape)
    y = x.to(acc) * torch.exp(-ls) - b if reverse else (x.to(acc) + b) * torch.exp(ls)
    return y.to(x.dtype), pixel_logdet(x, logscale, reverse, acc)


def _check(x, bias, logscale):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating-point tensor (B, C, *spatial); got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    for name, t in (("bias", bias), ("logscale", logscale)):
        if not isinstance(t, Tensor) or t.shape != (x.shape[1],) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor of shape (C,) = ({x.shape[1]},); "
                             f"got {list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")


@follows_autocast(NONE)
def act_norm(x: Tensor, bias: Tensor, logscale: Tensor, *, reverse: bool = False,
             backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``(y, logdet)``: ``y = (x + bias) · exp(logscale)`` per channel (``reverse``:
    ``y · exp(-logscale) - bias``), ``logdet`` (B,) = ±(pixels · Σ logscale)."""
    _check(x, bias, logscale)
    chosen = choose(ACT_NORM, (x, bias, logscale), {"reverse": reverse}, backend)
    if chosen == "reference":
        return act_norm_ref(x, bias, logscale, reverse=reverse)
    acc = torch.float32
    ls, b = logscale.to(acc), bias.to(acc)
    m = torch.exp(-ls) if reverse else torch.exp(ls)
    k = -b if reverse else b * m
    y3 = act_norm_fwd_op(as_bcs(x), m, k, chosen)
    return y3.view(x.shape), pixel_logdet(x, logscale, reverse, acc)


def _supports(backend, x, bias, logscale, **kwargs):
    return [] if x.dtype in KERNEL_DTYPES else [f"x dtype {x.dtype} is not supported (float32, float16, bfloat16)"]


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(9)
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    yield Sample("vec", (r(6, 5), r(5), 0.3 * r(5)), {}, (0, 1, 2))
    yield Sample("img_rev_b1", (r(1, 3, 7, 5), r(3), 0.3 * r(3)), {"reverse": True}, (0, 1, 2))
    yield Sample("img_channels_last", (r(3, 4, 5, 5).contiguous(memory_format=torch.channels_last), r(4), 0.3 * r(4)),
                 {}, (0, 1, 2))
    z = r(2, 6, 9, 7)
    yield Sample("channel_slice_rev", (z[:, 2:], r(4), 0.3 * r(4)), {"reverse": True}, (0, 1, 2))
    yield Sample("many_rows", (r(1100, 3), r(3), 0.3 * r(3)), {}, (0, 1, 2))
    yield Sample("long_planes_rev", (r(2, 2, 33, 35), r(2), 0.3 * r(2)), {"reverse": True}, (0, 1, 2))


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 12, 32, 32)] if quick else [(32, 12, 32, 32), (64, 48, 16, 16)]
    for shape in shapes:
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        bias = torch.randn(shape[1], generator=gen).to(device=device, dtype=dtype)
        logscale = 0.1 * torch.randn(shape[1], generator=gen).to(device=device, dtype=dtype)
        yield Sample("x".join(map(str, shape)), (x, bias, logscale), {}, (0, 1, 2))


def _cost(sample):
    x = sample.args[0]
    e = x.numel() * x.element_size()
    return Cost(fwd_bytes=2 * e, bwd_bytes=3 * e, fwd_flops=2 * x.numel(), bwd_flops=4 * x.numel())


ACT_NORM = register_op(OpSpec(
    name="act_norm", family="flow", fn=act_norm, reference=act_norm_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=act_norm_ref,
    launchers=("act_norm_fwd", "act_norm_bwd"),
))
