"""InstanceNorm with torch's options: per-(sample, channel) statistics (GroupNorm with one channel
per group) and optional running statistics; ``use_input_stats=False`` normalizes with the running
statistics (BatchNorm's eval path)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern.backend import choose
from dlkern.ops.channel_norm import (batch_norm_fwd_op, channel_norm_cost, check_stat_args, group_norm_fwd_op,
                                     kernel_support, layouts, _randn)
from dlkern.registry import OpSpec, Sample, register_op


def instance_norm_ref(input, running_mean=None, running_var=None, weight=None, bias=None,
                      use_input_stats=True, momentum=0.1, eps=1e-5):
    """Reference: torch's instance norm. input (N, C, *spatial); running stats, weight, bias (C,)."""
    return F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


def _check(input, running_mean, running_var, weight, bias, use_input_stats, momentum):
    check_stat_args(input, running_mean, running_var, weight, bias, use_input_stats, momentum, min_dim=3)
    if use_input_stats and math.prod(input.shape[2:]) == 1:  # torch's check: N = 0 is served
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.shape)}")


@follows_autocast(NONE)
def instance_norm(input: Tensor, running_mean: Tensor | None = None, running_var: Tensor | None = None,
                  weight: Tensor | None = None, bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *, backend: str | None = None) -> Tensor:
    """Drop-in for ``torch.nn.functional.instance_norm`` (3-D input or more). The output is
    contiguous (N, C, *spatial) whatever the input's layout, as torch's."""
    if isinstance(input, Tensor) and input.dim() > 5:  # as torch: the spatial dims are one axis here
        return instance_norm(input.flatten(2), running_mean, running_var, weight, bias, use_input_stats,
                             momentum, eps, backend=backend).view(input.shape)
    _check(input, running_mean, running_var, weight, bias, use_input_stats, momentum)
    args = (input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    chosen = choose(INSTANCE_NORM, args, {}, backend)
    if chosen == "reference":
        return instance_norm_ref(*args)
    if not use_input_stats:
        y = batch_norm_fwd_op(input, weight, bias, running_mean, running_var, False, float(eps), chosen)[0]
        return y.contiguous()
    n, c = input.shape[:2]
    y, mean, rstd = group_norm_fwd_op(input, c, weight, bias, float(eps), "none", chosen)
    y = y.contiguous()  # the kernels keep a channels_last layout; torch's instance norm does not
    if running_mean is not None:
        with torch.no_grad():  # as torch: the batch average of the per-instance statistics
            s = input[0, 0].numel()
            var = (rstd.double().pow(-2) - eps) * (s / (s - 1))
            running_mean.mul_(1 - momentum).add_(mean.mean(0).to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.mean(0).to(running_var.dtype), alpha=momentum)
    return y


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(2)
    for name, x in layouts(device, dtype, gen, min_dim=3):
        if math.prod(x.shape[2:]) == 1:
            continue
        if x.numel() == 0:  # torch's instance_norm itself raises IndexError for N = 0 with weight/bias
            yield Sample(name, (x, None, None, None, None, True, 0.1, 1e-5), {}, (0,))
            continue
        c = x.shape[1]
        w = _randn((c,), device, dtype, gen, 0.2, 1.0)
        b = _randn((c,), device, dtype, gen, 0.2)
        rm = _randn((c,), device, torch.float32, gen, 0.5)
        rv = _randn((c,), device, torch.float32, gen).abs() + 0.5
        yield Sample(name, (x, None, None, w, b, True, 0.1, 1e-5), {}, (0, 3, 4))
        if name == "4d_nchw":
            yield Sample("running_stats", (x, rm, rv, w, b, True, 0.1, 1e-5), {}, (0, 3, 4))
            yield Sample("use_running_stats", (x, rm.clone(), rv.clone(), w, b, False, 0.1, 1e-5), {}, (0, 3, 4))


def _bench_cases(device, dtype, quick):
    """Style-transfer shapes."""
    gen = torch.Generator().manual_seed(0)
    n = 16 if device.type == "cuda" else 2
    for shape in [(n, 64, 128, 128)] if quick else [(n, 64, 128, 128), (n, 128, 64, 64), (n, 256, 32, 32)]:
        c = shape[1]
        yield Sample("x".join(map(str, shape)), (_randn(shape, device, dtype, gen), None, None,
                     torch.ones(c, device=device, dtype=dtype), torch.zeros(c, device=device, dtype=dtype),
                     True, 0.1, 1e-5), {}, (0, 3, 4))


def _cost(sample):
    """A statistics group is one (n, c) plane; with running statistics (use_input_stats False) it
    is a map."""
    x = sample.args[0]
    use_input_stats = sample.args[5] if len(sample.args) > 5 else True
    return channel_norm_cost(sample, stats_passes=1 if use_input_stats else 0,
                             group_elems=x.numel() // max(1, x.shape[0] * x.shape[1]))


INSTANCE_NORM = register_op(OpSpec(
    name="instance_norm", family="norm", fn=instance_norm, reference=instance_norm_ref,
    supports=lambda backend, x, rm=None, rv=None, w=None, b=None, *rest: kernel_support(x, rm, rv, w, b),
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=F.instance_norm,
    launchers=("group_norm_fwd", "group_norm_bwd", "batch_norm_fwd", "batch_norm_bwd"),
))
