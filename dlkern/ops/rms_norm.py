"""RMSNorm and the fused residual-add RMSNorm (LLaMA/Mamba-style pre-norm blocks)."""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from dlkern.autocast import FP32_ON_CUDA, follows_autocast
from dlkern.backend import choose
from dlkern.ops import peers
from dlkern.ops.row_norm import (row_norm, default_eps, kernel_support, norm_bench_cases,
                                 norm_cost, norm_samples, normalized_size)
from dlkern.registry import OpSpec, register_op

LAUNCHERS = ("rms_norm_fwd", "rms_norm_bwd")


def rms_norm_ref(input: Tensor, normalized_shape, weight=None, eps: float | None = None) -> Tensor:
    """Reference: torch's RMSNorm, ``x / sqrt(mean(x**2) + eps) * weight`` over the trailing
    ``normalized_shape`` dims with fp32 (or fp64) math; ``eps=None`` is the math type's epsilon.
    input (*, *normalized_shape); weight (*normalized_shape) or None -> same shape as input."""
    return torch.nn.functional.rms_norm(input, list(normalized_shape), weight, eps)


def add_rms_norm_ref(input: Tensor, residual: Tensor, normalized_shape, weight=None,
                     eps: float | None = None) -> tuple[Tensor, Tensor]:
    """Reference: ``s = input + residual`` (in the input dtype), returns ``(rms_norm(s), s)``."""
    s = input + residual
    return rms_norm_ref(s, normalized_shape, weight, eps), s


@follows_autocast(FP32_ON_CUDA)
def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None,
             *, backend: str | None = None) -> Tensor:
    """Drop-in for ``torch.nn.functional.rms_norm``; ``backend`` overrides the backend choice."""
    ns = normalized_size(input, normalized_shape, weight, None)
    args = (input, ns, weight, eps)
    chosen = choose(RMS_NORM, args, {}, backend)
    if chosen == "reference":
        return rms_norm_ref(*args)
    n = functools.reduce(lambda a, b: a * b, ns, 1)
    eps = default_eps(eps, input.dtype)
    return row_norm(input, None, weight, None, n, eps, True, chosen)[0]


@follows_autocast(FP32_ON_CUDA)
def add_rms_norm(input: Tensor, residual: Tensor, normalized_shape, weight: Tensor | None = None,
                 eps: float | None = None, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``s = input + residual; return rms_norm(s), s`` in one pass over memory."""
    ns = normalized_size(input, normalized_shape, weight, None, residual)
    args = (input, residual, ns, weight, eps)
    chosen = choose(ADD_RMS_NORM, args, {}, backend)
    if chosen == "reference":
        return add_rms_norm_ref(*args)
    n = functools.reduce(lambda a, b: a * b, ns, 1)
    eps = default_eps(eps, input.dtype)
    return row_norm(input, residual, weight, None, n, eps, True, chosen)


RMS_NORM = register_op(OpSpec(
    name="rms_norm", family="norm", fn=rms_norm, reference=rms_norm_ref,
    supports=lambda backend, x, ns, w=None, eps=None: kernel_support(backend, x, ns, w),
    samples=lambda device, dtype: norm_samples(device, dtype, with_bias=False, with_residual=False),
    bench_cases=lambda device, dtype, quick: norm_bench_cases(device, dtype, quick, with_bias=False, with_residual=False),
    cost=lambda s: norm_cost(s, with_residual=False, stats_bytes=4),
    torch_equivalent=rms_norm_ref,
    peers={"liger": peers.liger_rms_norm, "apex": peers.apex_rms_norm},
    launchers=LAUNCHERS,
))

ADD_RMS_NORM = register_op(OpSpec(
    name="add_rms_norm", family="norm", fn=add_rms_norm, reference=add_rms_norm_ref,
    supports=lambda backend, x, r, ns, w=None, eps=None: kernel_support(backend, x, ns, w),
    samples=lambda device, dtype: norm_samples(device, dtype, with_bias=False, with_residual=True),
    bench_cases=lambda device, dtype, quick: norm_bench_cases(device, dtype, quick, with_bias=False, with_residual=True),
    cost=lambda s: norm_cost(s, with_residual=True, stats_bytes=4),
    torch_equivalent=add_rms_norm_ref,
    launchers=LAUNCHERS,
))
