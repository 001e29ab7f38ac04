"""LayerNorm and the fused residual-add LayerNorm (pre-norm transformer blocks)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import FP32_ON_CUDA, follows_autocast
from dlkern.backend import choose
from dlkern.ops import peers
from dlkern.ops.row_norm import (row_norm, kernel_support, norm_bench_cases, norm_cost,
                                 norm_samples, normalized_size)
from dlkern.registry import OpSpec, register_op

LAUNCHERS = ("layer_norm_fwd", "layer_norm_bwd")


def layer_norm_ref(input: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Reference: torch's LayerNorm over the trailing ``normalized_shape`` dims (fp32 statistics).
    input (*, *normalized_shape); weight, bias (*normalized_shape) or None -> same shape as input."""
    return F.layer_norm(input, tuple(normalized_shape), weight, bias, eps)


def add_layer_norm_ref(input: Tensor, residual: Tensor, normalized_shape, weight=None, bias=None,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Reference: ``s = input + residual`` (in the input dtype), returns ``(layer_norm(s), s)``."""
    s = input + residual
    return layer_norm_ref(s, normalized_shape, weight, bias, eps), s


@follows_autocast(FP32_ON_CUDA)
def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5, *, backend: str | None = None) -> Tensor:
    """Drop-in for ``torch.nn.functional.layer_norm``; ``backend`` overrides the backend choice."""
    ns = normalized_size(input, normalized_shape, weight, bias)
    args = (input, ns, weight, bias, eps)
    chosen = choose(LAYER_NORM, args, {}, backend)
    if chosen == "reference":
        return layer_norm_ref(*args)
    n = functools.reduce(lambda a, b: a * b, ns, 1)
    return row_norm(input, None, weight, bias, n, float(eps), False, chosen)[0]


@follows_autocast(FP32_ON_CUDA)
def add_layer_norm(input: Tensor, residual: Tensor, normalized_shape, weight: Tensor | None = None,
                   bias: Tensor | None = None, eps: float = 1e-5, *,
                   backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``s = input + residual; return layer_norm(s), s`` in one pass over memory."""
    ns = normalized_size(input, normalized_shape, weight, bias, residual)
    args = (input, residual, ns, weight, bias, eps)
    chosen = choose(ADD_LAYER_NORM, args, {}, backend)
    if chosen == "reference":
        return add_layer_norm_ref(*args)
    n = functools.reduce(lambda a, b: a * b, ns, 1)
    return row_norm(input, residual, weight, bias, n, float(eps), False, chosen)


LAYER_NORM = register_op(OpSpec(
    name="layer_norm", family="norm", fn=layer_norm, reference=layer_norm_ref,
    supports=lambda backend, x, ns, w=None, b=None, eps=1e-5: kernel_support(backend, x, ns, w, b),
    samples=lambda device, dtype: norm_samples(device, dtype, with_bias=True, with_residual=False),
    bench_cases=lambda device, dtype, quick: norm_bench_cases(device, dtype, quick, with_bias=True, with_residual=False),
    cost=lambda s: norm_cost(s, with_residual=False),
    torch_equivalent=F.layer_norm,
    peers={"liger": peers.liger_layer_norm, "apex": peers.apex_layer_norm},
    launchers=LAUNCHERS,
))

ADD_LAYER_NORM = register_op(OpSpec(
    name="add_layer_norm", family="norm", fn=add_layer_norm, reference=add_layer_norm_ref,
    supports=lambda backend, x, r, ns, w=None, b=None, eps=1e-5: kernel_support(backend, x, ns, w, b),
    samples=lambda device, dtype: norm_samples(device, dtype, with_bias=True, with_residual=True),
    bench_cases=lambda device, dtype, quick: norm_bench_cases(device, dtype, quick, with_bias=True, with_residual=True),
    cost=lambda s: norm_cost(s, with_residual=True),
    torch_equivalent=add_layer_norm_ref,
    launchers=LAUNCHERS,
))
