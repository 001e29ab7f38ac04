"""BatchNorm with torch's semantics: batch statistics in training (running statistics updated with
momentum from the unbiased batch variance), running statistics in eval."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern.backend import choose
from dlkern.ops.channel_norm import (batch_norm_fwd_op, channel_norm_cost, check_stat_args, kernel_support,
                                     layouts, _randn)
from dlkern.registry import OpSpec, Sample, register_op


def batch_norm_ref(input, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5):
    """Reference: torch's batch norm. input (N, C, *); running stats, weight, bias (C,) or None.
    Running statistics are updated in place when training."""
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum):
    check_stat_args(input, running_mean, running_var, weight, bias, training, momentum)
    if training and input.shape[0] * math.prod(input.shape[2:]) == 1:  # torch's check: N = 0 is served
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(input.shape)}")


@follows_autocast(NONE)
def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, backend: str | None = None) -> Tensor:
    """Drop-in for ``torch.nn.functional.batch_norm`` (2-D input or more, any layout)."""
    if isinstance(input, Tensor) and input.dim() > 5:  # as torch: the spatial dims are one axis here
        return batch_norm(input.flatten(2), running_mean, running_var, weight, bias, training, momentum, eps,
                          backend=backend).view(input.shape)
    check_batch_norm_args(input, running_mean, running_var, weight, bias, training, momentum)
    args = (input, running_mean, running_var, weight, bias, training, momentum, eps)
    chosen = choose(BATCH_NORM, args, {}, backend)
    if chosen == "reference":
        return batch_norm_ref(*args)
    y, mean, _rstd, var = batch_norm_fwd_op(input, weight, bias, running_mean, running_var,
                                            bool(training), float(eps), chosen)
    if training and running_mean is not None:
        with torch.no_grad():  # torch: running = (1 - momentum) * running + momentum * batch
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum)
    return y


def _samples(device, dtype):
    """fp32 weights and running statistics with any input dtype (mixed precision, as AMP keeps
    BatchNorm), plus one case with everything in the input dtype (a model cast with .half())."""
    gen = torch.Generator().manual_seed(0)
    for name, x in layouts(device, dtype, gen):
        c = x.shape[1]

        def params(pdtype):
            return (_randn((c,), device, pdtype, gen, 0.5), _randn((c,), device, pdtype, gen).abs() + 0.5,
                    _randn((c,), device, pdtype, gen, 0.2, 1.0), _randn((c,), device, pdtype, gen, 0.2))
        yield Sample(f"train_{name}", (x, *params(torch.float32), True, 0.1, 1e-5), {}, (0, 3, 4))
        if name in ("4d_nchw", "4d_channels_last", "2d"):
            yield Sample(f"eval_{name}", (x, *params(torch.float32), False, 0.1, 1e-5), {}, (0, 3, 4))
        if name == "4d_nchw" and dtype != torch.float32:
            yield Sample("train_params_in_input_dtype", (x, *params(dtype), True, 0.1, 1e-5), {}, (0, 3, 4))
    x6 = _randn((2, 3, 2, 3, 2, 3), device, dtype, gen)  # torch takes any rank >= 2
    yield Sample("train_6d", (x6, None, None, _randn((3,), device, torch.float32, gen, 0.2, 1.0),
                              _randn((3,), device, torch.float32, gen, 0.2), True, 0.1, 1e-5), {}, (0, 3, 4))
    x = _randn((6, 5, 4, 3), device, dtype, gen)
    yield Sample("no_affine_no_running", (x, None, None, None, None, True, 0.1, 1e-5), {}, (0,))


def _bench_cases(device, dtype, quick):
    """ResNet-50 stage shapes (batch 32 on GPU, 8 on CPU), channels_last as training uses."""
    gen = torch.Generator().manual_seed(0)
    n = 32 if device.type == "cuda" else 8
    shapes = [(n, 256, 56, 56), (n, 512, 28, 28), (n, 1024, 14, 14), (n, 2048, 7, 7)]
    for shape in shapes[:1] if quick else shapes:
        x = _randn(shape, device, dtype, gen).to(memory_format=torch.channels_last)
        c = shape[1]
        yield Sample("x".join(map(str, shape)) + "_cl",
                     (x, torch.zeros(c, device=device), torch.ones(c, device=device),
                      torch.ones(c, device=device), torch.zeros(c, device=device), True, 0.1, 1e-5),
                     {}, (0, 3, 4))


BATCH_NORM = register_op(OpSpec(
    name="batch_norm", family="norm", fn=batch_norm, reference=batch_norm_ref,
    supports=lambda backend, x, rm, rv, w=None, b=None, *rest: kernel_support(x, rm, rv, w, b),
    samples=_samples, bench_cases=_bench_cases,
    cost=lambda s: channel_norm_cost(s, stats_passes=1 if s.args[5] else 0,
                                     group_elems=s.args[0].numel() // max(1, s.args[0].shape[1])),
    torch_equivalent=F.batch_norm,
    launchers=("batch_norm_fwd", "batch_norm_bwd"),
))
