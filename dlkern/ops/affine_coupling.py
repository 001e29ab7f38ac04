"""Affine coupling (RealNVP, Glow) with the per-sample log-determinant fused in.

``y = x · s + t`` (``reverse``: ``x = (y - t) / s``) where the conditioning network's raw output
``h`` holds the log-scale half (first C channels) and the shift half ``t`` (last C channels); the
scale map turns the log-scale half into ``s``. ``logdet[b] = Σ log s`` over all non-batch dims
(negated for ``reverse``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.registry import Cost, OpSpec, Sample, register_op

SCALES = ("exp", "sigmoid", "softclamp")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("dlkern::affine_coupling_fwd", mutates_args=())
def affine_coupling_fwd_op(x2: Tensor, h2: Tensor, reverse: bool, scale: str, clamp: float,
                           backend: str) -> tuple[Tensor, Tensor]:
    return _backend.launchers(backend, x2.device).affine_coupling_fwd(x2, h2, reverse, scale, clamp)


@torch.library.custom_op("dlkern::affine_coupling_bwd", mutates_args=())
def affine_coupling_bwd_op(dy2: Tensor, dlogdet: Tensor, x2: Tensor, h2: Tensor, reverse: bool,
                           scale: str, clamp: float, backend: str) -> tuple[Tensor, Tensor]:
    return _backend.launchers(backend, x2.device).affine_coupling_bwd(dy2, dlogdet, x2, h2, reverse, scale, clamp)


@affine_coupling_fwd_op.register_fake
def _(x2, h2, reverse, scale, clamp, backend):
    return x2.new_empty(x2.shape), x2.new_empty(x2.shape[0], dtype=torch.float32)


@affine_coupling_bwd_op.register_fake
def _(dy2, dlogdet, x2, h2, reverse, scale, clamp, backend):
    return x2.new_empty(x2.shape), h2.new_empty(h2.shape)


def _setup(ctx, inputs, output):
    x2, h2, reverse, scale, clamp, backend = inputs
    ctx.save_for_backward(x2, h2)  # y is recomputed from them: saves no extra activation
    ctx.args = (reverse, scale, clamp, backend)


def _backward(ctx, dy2, dlogdet):
    x2, h2 = ctx.saved_tensors
    dx, dh = affine_coupling_bwd_op(dy2, dlogdet, x2, h2, *ctx.args)
    return dx, dh, None, None, None, None


affine_coupling_fwd_op.register_autograd(_backward, setup_context=_setup)


def log_scale(h: Tensor, scale: str, clamp: float | None) -> Tensor:
    """log s for the raw log-scale half ``h`` under the scale map ``scale``."""
    if scale == "exp":
        return h
    if scale == "sigmoid":
        return F.logsigmoid(h + 2.0)
    return clamp * torch.tanh(h / clamp)


def affine_coupling_ref(x: Tensor, h: Tensor, *, reverse: bool = False, scale: str = "exp",
                        clamp: float | None = None) -> tuple[Tensor, Tensor]:
    """Reference (the eager composition). x (B, C, *spatial) or (B, D); h (B, 2C, *spatial): log-scale
    half then shift half. Returns (y like x in x's dtype, logdet (B,) in float32, float64 for
    float64 inputs). Math in float32 at least."""
    acc = torch.promote_types(x.dtype, torch.float32)
    raw, t = h.to(acc).chunk(2, dim=1)
    log_s = log_scale(raw, scale, clamp)
    xf = x.to(acc)
    if reverse:
        y = (xf - t) * torch.exp(-log_s)
    else:
        y = xf * torch.exp(log_s) + t
    logdet = log_s.flatten(1).sum(1)
    return y.to(x.dtype), (-logdet if reverse else logdet)


def _check(x, h, scale, clamp):
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be (B, D) or (B, C, *spatial); got shape {list(x.shape)}")
    if not isinstance(h, Tensor) or h.dtype != x.dtype or h.device != x.device:
        raise ValueError("h must be a tensor with x's dtype and device "
                         f"({x.dtype}, {x.device}); got {getattr(h, 'dtype', type(h).__name__)}")
    expected = [x.shape[0], 2 * x.shape[1], *x.shape[2:]]
    if list(h.shape) != expected:
        raise ValueError(f"h must have shape {expected} (2 × x's channels: log-scale half, shift half); "
                         f"got {list(h.shape)}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}; got {scale!r}")
    if scale == "softclamp":
        if not isinstance(clamp, (int, float)) or isinstance(clamp, bool) or not clamp > 0:
            raise ValueError(f"clamp must be a positive number for scale='softclamp'; got {clamp!r}")
    elif clamp is not None:
        raise ValueError(f"clamp applies to scale='softclamp' only; got clamp={clamp!r} with scale={scale!r}")


@follows_autocast(NONE)
def affine_coupling(x: Tensor, h: Tensor, *, reverse: bool = False, scale: str = "exp",
                    clamp: float | None = None, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``(y, logdet)``: ``y = x · s + t`` (``reverse``: ``(x - t) / s``), ``logdet`` per sample
    (B,) = ±Σ log s. ``h`` = cat(raw log-scale, shift) along dim 1; ``scale`` is "exp" (RealNVP),
    "sigmoid" (s = sigmoid(raw + 2), Glow) or "softclamp" (s = exp(clamp · tanh(raw / clamp)))."""
    _check(x, h, scale, clamp)
    kwargs = {"reverse": reverse, "scale": scale, "clamp": clamp}
    chosen = choose(AFFINE_COUPLING, (x, h), kwargs, backend)
    if chosen == "reference":
        return affine_coupling_ref(x, h, **kwargs)
    # (B, N) rows in NCHW order: a view for contiguous tensors and channel slices, a copy for
    # channels_last; the kernels take the row stride.
    y2, logdet = affine_coupling_fwd_op(x.flatten(1), h.flatten(1), bool(reverse), scale,
                                        float(clamp or 1.0), chosen)
    return y2.view(x.shape), logdet


def _supports(backend, x, h, **kwargs):
    return [] if x.dtype in KERNEL_DTYPES else [f"x dtype {x.dtype} is not supported (float32, float16, bfloat16)"]


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(8)
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    yield Sample("vec_exp", (r(5, 7), 0.5 * r(5, 14)), {}, (0, 1))
    yield Sample("img_exp_rev", (r(3, 2, 3, 1), 0.5 * r(3, 4, 3, 1)), {"reverse": True}, (0, 1))
    yield Sample("vec_sigmoid_rev_b1", (r(1, 123), r(1, 246)), {"reverse": True, "scale": "sigmoid"}, (0, 1))
    yield Sample("img_softclamp", (r(2, 3, 5, 4), 2 * r(2, 6, 5, 4)), {"scale": "softclamp", "clamp": 2.0}, (0, 1))
    z = r(2, 6, 3, 5)  # channel coupling: x is the second half of z (a strided view)
    yield Sample("channel_slice_sigmoid", (z[:, 3:], r(2, 6, 3, 5).contiguous(memory_format=torch.channels_last)),
                 {"scale": "sigmoid"}, (0, 1))
    yield Sample("long_rows_softclamp_rev", (r(2, 2100), r(2, 4200)), {"reverse": True, "scale": "softclamp", "clamp": 1.5}, (0, 1))


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 12, 32, 32)] if quick else [(32, 12, 32, 32), (1024, 256)]
    for shape in shapes:
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        h = 0.5 * torch.randn((shape[0], 2 * shape[1], *shape[2:]), generator=gen).to(device=device, dtype=dtype)
        yield Sample("x".join(map(str, shape)), (x, h), {"scale": "sigmoid"}, (0, 1))


def _cost(sample):
    x = sample.args[0]
    e = x.numel() * x.element_size()
    # fwd: x, h (2×) in, y out; bwd: dy, x, h (2×) in, dx, dh (2×) out (log-dets are B floats)
    return Cost(fwd_bytes=4 * e, bwd_bytes=7 * e, fwd_flops=6 * x.numel(), bwd_flops=10 * x.numel())


AFFINE_COUPLING = register_op(OpSpec(
    name="affine_coupling", family="flow", fn=affine_coupling, reference=affine_coupling_ref,
    supports=_supports, samples=_samples, bench_cases=_bench_cases, cost=_cost,
    torch_equivalent=affine_coupling_ref, launchers=("affine_coupling_fwd", "affine_coupling_bwd"),
))
