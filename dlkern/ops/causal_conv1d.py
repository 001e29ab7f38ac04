"""Causal depthwise conv1d (Mamba's short convolution before the selective scan), SiLU fused, and
its one-token decode step ``causal_conv1d_update`` with a rolling state."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import LOWER, NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.conv_common import dtype_reasons
from dlkern.registry import Cost, OpSpec, Sample, register_op

ACTIVATIONS = (None, "silu")
MAX_WIDTH = 8


# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda")
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).causal_conv1d_fwd(x, weight, bias, silu)


@torch.library.custom_op("dlkern::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).causal_conv1d_bwd(dy, x, weight, bias, silu)
    return dx, dw, db if db is not None else x.new_empty(0)


@torch.library.custom_op("dlkern::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                            backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).causal_conv1d_update(x, conv_state, weight, bias, silu)


@causal_conv1d_fwd_op.register_fake
def _(x, weight, bias, silu, backend):
    return torch.empty_like(x)


@causal_conv1d_bwd_op.register_fake
def _(dy, x, weight, bias, silu, backend):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias) if bias is not None else x.new_empty(0)


@causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu, backend):
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    x, weight, bias, silu, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu, ctx.backend = silu, backend


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = causal_conv1d_bwd_op(dy, x, weight, bias, ctx.silu, ctx.backend)
    return dx, dw, (db if bias is not None else None), None, None


causal_conv1d_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """Reference: torch's grouped conv1d. x (B, D, L) (any strides), weight (D, W), bias (D,) or
    None -> (B, D, L); y[:, :, l] sees x[:, :, l - W + 1 .. l] (zeros before the start)."""
    length, width = x.shape[-1], weight.shape[1]
    y = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=weight.shape[0])[..., :length]
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_update_ref(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                             activation: str | None = None) -> Tensor:
    """Reference decode step. x (B, D) or (B, D, 1): the new token; conv_state (B, D, W - 1): the
    last W - 1 inputs, oldest first, updated in place to end with x. Returns y shaped like x."""
    x2 = x.squeeze(-1) if x.dim() == 3 else x
    window = torch.cat([conv_state, x2.unsqueeze(-1)], dim=-1)               # (B, D, W)
    y = (window.float() * weight.float()).sum(-1)                            # (B, D), fp32 math
    if bias is not None:
        y = y + bias.float()
    if activation == "silu":
        y = F.silu(y)
    conv_state.copy_(window[..., 1:])
    return y.to(x.dtype).view(x.shape)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _check(x, weight, bias, activation, x_dims=(3,), x_shape="(B, D, L)"):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}")
    if x.dim() not in x_dims:
        raise ValueError(f"x must have shape {x_shape}; got {list(x.shape)}")
    d = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != d or not 1 <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"weight must have shape (D, W) = ({d}, W) with 1 <= W <= {MAX_WIDTH}; "
                         f"got {list(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or list(bias.shape) != [d]):
        raise ValueError(f"bias must be None or a tensor of shape ({d},); got "
                         f"{list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu'; got {activation!r}")


@follows_autocast(LOWER)
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None, *,
                  backend: str | None = None) -> Tensor:
    """Causal depthwise conv1d: x (B, D, L), channel-first or channel-last (a (B, L, D) tensor
    transposed; the output keeps the layout), weight (D, W) with W in 1..8, bias (D,) or None,
    activation None or "silu" (fused). Differentiable in x, weight and bias."""
    _check(x, weight, bias, activation)
    chosen = choose(CAUSAL_CONV1D, (x, weight, bias, activation), {}, backend)
    if chosen == "reference":
        return causal_conv1d_ref(x, weight, bias, activation)
    return causal_conv1d_fwd_op(x, weight.contiguous(), bias, activation == "silu", chosen)


@follows_autocast(NONE)
def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None, *, backend: str | None = None) -> Tensor:
    """One decoding step of :func:`causal_conv1d`. x (B, D) or (B, D, 1); conv_state (B, D, W - 1)
    in x's dtype holds the last W - 1 inputs (zeros at the start of a sequence) and is **updated in
    place** (shifted by one, x appended). Returns y shaped like x. Feeding a sequence token by token
    gives the full-sequence result step by step.

    Not differentiable: the result never requires grad (it runs under ``torch.no_grad()``); train
    with :func:`causal_conv1d`."""
    _check(x, weight, bias, activation, x_dims=(2, 3), x_shape="(B, D) or (B, D, 1)")
    if x.dim() == 3 and x.shape[2] != 1:
        raise ValueError(f"x must have shape (B, D) or (B, D, 1); got {list(x.shape)}")
    expected = [x.shape[0], x.shape[1], weight.shape[1] - 1]
    if not isinstance(conv_state, Tensor) or list(conv_state.shape) != expected or conv_state.dtype != x.dtype:
        got = (conv_state.dtype, list(conv_state.shape)) if isinstance(conv_state, Tensor) else conv_state
        raise ValueError(f"conv_state must be a {x.dtype} tensor of shape (B, D, W - 1) = {expected}; got {got!r}")
    with torch.no_grad():
        chosen = choose(CAUSAL_CONV1D_UPDATE, (x, conv_state, weight, bias, activation), {}, backend)
        if chosen == "reference":
            return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
        y = causal_conv1d_update_op(x.reshape(x.shape[:2]), conv_state, weight.contiguous(), bias,
                                    activation == "silu", chosen)
    return y.view(x.shape)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, x, *rest):
    return dtype_reasons(x, *rest)


def _randn(gen, device, dtype, *shape, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(5)
    r = lambda *s, scale=1.0: _randn(gen, device, dtype, *s, scale=scale)  # noqa: E731
    yield Sample("w4_silu", (r(2, 5, 7), r(5, 4, scale=0.5), r(5), "silu"), {}, (0, 1, 2))
    yield Sample("w1_len1_batch1", (r(1, 3, 1), r(3, 1), None, None), {}, (0, 1))
    yield Sample("w8_len123", (r(2, 3, 123), r(3, 8, scale=0.4), r(3), None), {}, (0, 1, 2))
    yield Sample("channel_last_w3", (r(2, 9, 6).transpose(1, 2), r(6, 3), r(6), "silu"), {}, (0, 1, 2))
    yield Sample("strided_w2", (r(2, 8, 20)[:, ::2, 3:16], r(4, 2), None, "silu"), {}, (0, 1))
    yield Sample("len_below_width", (r(1, 4, 3), r(4, 6, scale=0.4), r(4), "silu"), {}, (0, 1, 2))


def _update_samples(device, dtype):
    gen = torch.Generator().manual_seed(6)
    r = lambda *s: _randn(gen, device, dtype, *s)  # noqa: E731
    yield Sample("w4_silu", (r(2, 5), r(2, 5, 3), r(5, 4), r(5), "silu"))
    yield Sample("w1_batch1", (r(1, 3, 1), r(1, 3, 0), r(3, 1), None, None))
    yield Sample("w8_odd_d", (r(3, 7, 1), r(3, 7, 7), r(7, 8), r(7), None))
    yield Sample("strided_state", (r(2, 6), r(2, 6, 9)[..., 2:5], r(6, 4), None, "silu"))


def _bench_cases(device, dtype, quick):
    """Mamba-130m/370m mixer shapes (d_inner 1536/2048, W = 4, SiLU), channel-first and channel-last."""
    gen = torch.Generator().manual_seed(0)
    b, length = (8, 2048) if device.type == "cuda" else (1, 1024)
    for d in (1536,) if quick else (1536, 2048):
        x = _randn(gen, device, dtype, b, d, length)
        w, bias = _randn(gen, device, dtype, d, 4), _randn(gen, device, dtype, d)
        yield Sample(f"{b}x{d}x{length}_w4", (x, w, bias, "silu"), {}, (0, 1, 2))
        if not quick:
            xt = _randn(gen, device, dtype, b, length, d).transpose(1, 2)
            yield Sample(f"{b}x{d}x{length}_w4_channel_last", (xt, w, bias, "silu"), {}, (0, 1, 2))


def _update_bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    b, d = (64, 2048) if device.type == "cuda" else (8, 2048)
    yield Sample(f"{b}x{d}_w4", (_randn(gen, device, dtype, b, d), _randn(gen, device, dtype, b, d, 3),
                                 _randn(gen, device, dtype, d, 4), _randn(gen, device, dtype, d), "silu"))


def _cost(sample):
    x, w = sample.args[0], sample.args[1]
    e, s = x.numel(), x.element_size()
    return Cost(fwd_bytes=2 * e * s + w.numel() * s, bwd_bytes=3 * e * s + 2 * w.numel() * s,
                fwd_flops=2 * e * w.shape[1], bwd_flops=4 * e * w.shape[1])


def _update_cost(sample):
    x, state = sample.args[0], sample.args[1]
    s = x.element_size()
    return Cost(fwd_bytes=(2 * x.numel() + 2 * state.numel()) * s, bwd_bytes=0,
                fwd_flops=2 * x.numel() * (state.shape[-1] + 1))


CAUSAL_CONV1D = register_op(OpSpec(
    name="causal_conv1d", family="conv", fn=causal_conv1d, reference=causal_conv1d_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=causal_conv1d_ref,
    launchers=("causal_conv1d_fwd", "causal_conv1d_bwd"),
))

CAUSAL_CONV1D_UPDATE = register_op(OpSpec(
    name="causal_conv1d_update", family="conv", fn=causal_conv1d_update, reference=causal_conv1d_update_ref,
    supports=_supports, samples=_update_samples, bench_cases=_update_bench_cases, cost=_update_cost,
    torch_equivalent=causal_conv1d_update_ref, launchers=("causal_conv1d_update",),
))
