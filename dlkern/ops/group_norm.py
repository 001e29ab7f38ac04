"""GroupNorm, and GroupNorm fused with its activation (WaveNet/UNet/DDPM blocks: GN -> SiLU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import FP32_ON_CUDA, follows_autocast
from dlkern.backend import choose
from dlkern.ops.channel_norm import (ACTIVATIONS, channel_norm_cost, check_channel_param, check_input,
                                     group_norm_fwd_op, kernel_support, layouts, _randn)
from dlkern.registry import OpSpec, Sample, register_op

_ACT_REF = {"none": lambda y: y, "silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def group_norm_ref(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Reference: torch's group norm. input (N, C, *), C divisible by num_groups; weight/bias (C,)."""
    return F.group_norm(input, num_groups, weight, bias, eps)


def group_norm_act_ref(input, num_groups, weight=None, bias=None, eps=1e-5, activation="silu"):
    """Reference: ``activation(group_norm(input))``; activation in none/silu/gelu (exact)/relu."""
    return _ACT_REF[activation](group_norm_ref(input, num_groups, weight, bias, eps))


def _check(input, num_groups, weight, bias, activation="none"):
    check_input(input)
    if not isinstance(num_groups, int) or num_groups < 1 or input.shape[1] % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the channel count "
                         f"{input.shape[1]}; got {num_groups!r}")
    check_channel_param("weight", weight, input)
    check_channel_param("bias", bias, input)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))} or None; "
                         f"got {activation!r}")


def _run(op, input, num_groups, weight, bias, eps, activation, backend):
    chosen = choose(op, (input, num_groups, weight, bias, eps), {}, backend)
    if chosen == "reference":
        return group_norm_act_ref(input, num_groups, weight, bias, eps, activation)
    return group_norm_fwd_op(input, num_groups, weight, bias, float(eps), activation, chosen)[0]


@follows_autocast(FP32_ON_CUDA)
def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5, *, backend: str | None = None) -> Tensor:
    """Drop-in for ``torch.nn.functional.group_norm`` (2-D to 5-D, channels_last kept)."""
    _check(input, num_groups, weight, bias)
    return _run(GROUP_NORM, input, num_groups, weight, bias, eps, "none", backend)


@follows_autocast(FP32_ON_CUDA)
def group_norm_act(input: Tensor, num_groups: int, weight: Tensor | None = None,
                   bias: Tensor | None = None, eps: float = 1e-5, activation: str | None = "silu", *,
                   backend: str | None = None) -> Tensor:
    """``activation(group_norm(input))`` in one pass; activation: "silu", "gelu", "relu" or None."""
    activation = "none" if activation is None else activation
    _check(input, num_groups, weight, bias, activation)
    return _run(GROUP_NORM_ACT, input, num_groups, weight, bias, eps, activation, backend)


def _samples(device, dtype, activation=None):
    gen = torch.Generator().manual_seed(1)
    for name, x in layouts(device, dtype, gen):
        c = x.shape[1]
        groups = [g for g in (2, 3, c) if c % g == 0][:2] if name in ("4d_nchw", "4d_channels_last") else [2 if c % 2 == 0 else 1]
        w = _randn((c,), device, dtype, gen, 0.2, 1.0)
        b = _randn((c,), device, dtype, gen, 0.2)
        for g in groups:
            args = (x, g, w, b, 1e-5)
            if activation:
                args = args + (activation,)
            yield Sample(f"{name}_g{g}", args, {}, (0, 2, 3))
    x = _randn((2, 6, 7), device, dtype, gen)
    yield Sample("no_affine", (x, 3, None, None, 1e-5) + ((activation,) if activation else ()), {}, (0,))


def _bench_cases(device, dtype, quick, activation=None):
    """UNet/DDPM shapes: 32 groups, channels_last."""
    gen = torch.Generator().manual_seed(0)
    n = 16 if device.type == "cuda" else 2
    shapes = [(n, 128, 64, 64), (n, 256, 32, 32), (n, 512, 16, 16)]
    for shape in shapes[:1] if quick else shapes:
        x = _randn(shape, device, dtype, gen)
        c = shape[1]
        args = (x, 32, torch.ones(c, device=device, dtype=dtype), torch.zeros(c, device=device, dtype=dtype), 1e-5)
        yield Sample("x".join(map(str, shape)), args + ((activation,) if activation else ()), {}, (0, 2, 3))


def _cost(sample):
    """A statistics group is (C / G) x spatial elements."""
    x, groups = sample.args[0], sample.args[1]
    return channel_norm_cost(sample, group_elems=x.numel() // max(1, x.shape[0] * groups))


_supports = lambda backend, x, g, w=None, b=None, *rest: kernel_support(x, w, b)  # noqa: E731

GROUP_NORM = register_op(OpSpec(
    name="group_norm", family="norm", fn=group_norm, reference=group_norm_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=F.group_norm,
    launchers=("group_norm_fwd", "group_norm_bwd"),
))

GROUP_NORM_ACT = register_op(OpSpec(
    name="group_norm_silu", family="norm", fn=group_norm_act, reference=group_norm_act_ref,
    supports=_supports, samples=lambda device, dtype: _samples(device, dtype, "silu"),
    bench_cases=lambda device, dtype, quick: _bench_cases(device, dtype, quick, "silu"),
    cost=_cost, torch_equivalent=group_norm_act_ref,
    launchers=("group_norm_fwd", "group_norm_bwd"),
))
