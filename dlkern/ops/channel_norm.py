"""Machinery shared by BatchNorm, GroupNorm and InstanceNorm: the ``torch.library`` custom ops
around the kernel launchers (with fake and autograd registrations), argument checks, sample inputs
and the cost model. The public ops live in ``batch_norm.py``, ``group_norm.py``, ``instance_norm.py``.

The custom ops are functional (nothing mutated, so autograd and torch.compile apply): the forward
returns the batch mean and unbiased variance, and the public op updates running statistics itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dlkern import backend as _backend
from dlkern.registry import Cost, Sample

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("none", "silu", "gelu", "relu")
MAX_ELEMENTS = 2 ** 31 - 1 - 4096   # = kernels/channel_norm.py INDEX_LIMIT (its TILE is 4096)


# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda")
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::batch_norm_fwd", mutates_args=())
def batch_norm_fwd_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                      eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backend.launchers(backend, x.device).batch_norm_fwd(
        x, weight, bias, running_mean, running_var, training, eps)


@torch.library.custom_op("dlkern::batch_norm_bwd", mutates_args=())
def batch_norm_bwd_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                      training: bool, has_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).batch_norm_bwd(dy, x, weight, mean, rstd, training, has_bias)
    return dx, _or_empty(dw, x), _or_empty(db, x)


@torch.library.custom_op("dlkern::group_norm_fwd", mutates_args=())
def group_norm_fwd_op(x: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float, activation: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.launchers(backend, x.device).group_norm_fwd(x, num_groups, weight, bias, eps, activation)


@torch.library.custom_op("dlkern::group_norm_bwd", mutates_args=())
def group_norm_bwd_op(dy: Tensor, x: Tensor, num_groups: int, weight: Optional[Tensor],
                      bias: Optional[Tensor], mean: Tensor, rstd: Tensor, activation: str,
                      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).group_norm_bwd(
        dy, x, num_groups, weight, bias, mean, rstd, activation)
    return dx, _or_empty(dw, x), _or_empty(db, x)


def _or_empty(t, like):
    return t if t is not None else like.new_empty(0)


@batch_norm_fwd_op.register_fake
def _(x, weight, bias, running_mean, running_var, training, eps, backend):
    c = x.shape[1]
    stat = x.new_empty(c, dtype=torch.float32)
    return torch.empty_like(x), stat, stat.clone(), (stat.clone() if training else x.new_empty(0, dtype=torch.float32))


@batch_norm_bwd_op.register_fake
def _(dy, x, weight, mean, rstd, training, has_bias, backend):
    c = x.shape[1]
    return (torch.empty_like(x), torch.empty_like(weight) if weight is not None else x.new_empty(0),
            x.new_empty(c) if has_bias else x.new_empty(0))


@group_norm_fwd_op.register_fake
def _(x, num_groups, weight, bias, eps, activation, backend):
    stat = x.new_empty(x.shape[0], num_groups, dtype=torch.float32)
    return torch.empty_like(x), stat, stat.clone()


@group_norm_bwd_op.register_fake
def _(dy, x, num_groups, weight, bias, mean, rstd, activation, backend):
    return (torch.empty_like(x), torch.empty_like(weight) if weight is not None else x.new_empty(0),
            torch.empty_like(bias) if bias is not None else x.new_empty(0))


def _bn_setup(ctx, inputs, output):
    x, weight, bias, _rm, _rv, training, _eps, backend = inputs
    _y, mean, rstd, _var = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.training, ctx.has_bias, ctx.backend = training, bias is not None, backend


def _bn_backward(ctx, dy, _dmean, _drstd, _dvar):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = batch_norm_bwd_op(dy, x, weight, mean, rstd, ctx.training, ctx.has_bias, ctx.backend)
    return dx, (dw if weight is not None else None), (db if ctx.has_bias else None), None, None, None, None, None


def _gn_setup(ctx, inputs, output):
    x, num_groups, weight, bias, _eps, activation, backend = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.num_groups, ctx.activation, ctx.backend = num_groups, activation, backend


def _gn_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = group_norm_bwd_op(dy, x, ctx.num_groups, weight, bias, mean, rstd, ctx.activation, ctx.backend)
    return dx, None, (dw if weight is not None else None), (db if bias is not None else None), None, None, None


batch_norm_fwd_op.register_autograd(_bn_backward, setup_context=_bn_setup)
group_norm_fwd_op.register_autograd(_gn_backward, setup_context=_gn_setup)


# ---------------------------------------------------------------------------------------------
# Checks (errors name the argument and the accepted values)
# ---------------------------------------------------------------------------------------------
def check_input(input, min_dim=2, max_dim=5):
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor; got dtype {input.dtype}")
    if not min_dim <= input.dim() <= max_dim:
        raise ValueError(f"input must have {min_dim} to {max_dim} dimensions (N, C, *spatial); "
                         f"got shape {list(input.shape)}")


def check_channel_param(name, t, input, required=False):
    if t is None:
        if required:
            raise ValueError(f"{name} must be given")
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor or None; got {type(t).__name__}")
    c = input.shape[1]
    if t.dim() != 1 or t.shape[0] != c:
        raise ValueError(f"{name} must have shape (C,) = ({c},) for input of shape {list(input.shape)}; "
                         f"got {list(t.shape)}")
    if t.device != input.device:
        raise ValueError(f"{name} must be on the input's device {input.device}; got {t.device}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point; got dtype {t.dtype}")


def check_stat_args(input, running_mean, running_var, weight, bias, uses_batch_stats, momentum, min_dim=2):
    """Checks shared by batch_norm and instance_norm: running statistics are required when the
    batch statistics are not used, and come in pairs."""
    check_input(input, min_dim=min_dim)
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        check_channel_param(name, t, input, required=not uses_batch_stats and name.startswith("running"))
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not isinstance(momentum, (int, float)):
        raise TypeError(f"momentum must be a float (the modules handle momentum=None); got {momentum!r}")


def kernel_support(input, *params) -> list[str]:
    reasons = []
    if input.dtype not in KERNEL_DTYPES:
        reasons.append(f"input dtype {input.dtype} is not supported (float32, float16, bfloat16)")
    if any(isinstance(p, Tensor) and p.dtype not in KERNEL_DTYPES for p in params):
        reasons.append("parameters and running statistics must be float32, float16 or bfloat16")
    if input.numel() > MAX_ELEMENTS:
        reasons.append(f"input has {input.numel()} elements; the kernels take at most {MAX_ELEMENTS} "
                       "(int32 element indices within a statistics unit, plus one tile)")
    return reasons


# ---------------------------------------------------------------------------------------------
# Registry helpers
# ---------------------------------------------------------------------------------------------
def _randn(shape, device, dtype, gen, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)


def layouts(device, dtype, gen, *, min_dim=2):
    """(name, input) for the layouts real models use: 2/3/4/5-D, channels_last(_3d), a strided
    view, 1x1 spatial, batch 1, channel counts and sizes that divide no block."""
    r = lambda *s: _randn(s, device, dtype, gen, 2.0, 0.5)  # noqa: E731  (non-zero mean on purpose)
    cases = [
        ("3d", r(3, 6, 9)),
        ("4d_nchw", r(4, 6, 5, 7)),
        ("4d_channels_last", r(4, 6, 5, 7).to(memory_format=torch.channels_last)),
        ("5d", r(2, 4, 3, 2, 5)),
        ("5d_channels_last", r(2, 4, 3, 2, 5).to(memory_format=torch.channels_last_3d)),
        ("strided", r(3, 4, 6, 11)[..., 2:9]),
        ("spatial_1x1", r(8, 12, 1, 1)),
        ("batch1", r(1, 6, 4, 5)),
        ("odd_sizes", r(2, 10, 123)),
        ("empty_batch", r(0, 6, 4, 5)),
    ]
    if min_dim <= 2:
        cases.insert(0, ("2d", r(7, 10)))
    return cases


# A statistics group (GroupNorm group, BatchNorm channel, InstanceNorm plane) of at most this many
# bytes fits in one SM's shared memory (228 KiB on H100, 164 KiB on A100), so a kernel can read it
# once and normalize it from chip.
ON_CHIP_GROUP_BYTES = 160 * 1024


def channel_norm_cost(sample: Sample, stats_passes: int = 1, group_elems: int | None = None) -> Cost:
    """Minimum bytes (shared/PERF.md): with statistics to compute (``stats_passes`` 1), a group that
    fits on chip is read once and written once (fwd 2·E·s) and its backward reads x and dy once and
    writes dx (3·E·s); a larger group is read again after its statistics (3·E·s) and x, dy again
    after the gradient sums (5·E·s). Eval-mode BatchNorm (``stats_passes`` 0) is a 2·E·s map."""
    x = sample.args[0]
    e, s = x.numel(), x.element_size()
    group = group_elems if group_elems is not None else e
    on_chip = stats_passes == 0 or group * s <= ON_CHIP_GROUP_BYTES
    return Cost(fwd_bytes=(2 if on_chip else 3) * e * s, bwd_bytes=(3 if on_chip else 5) * e * s,
                fwd_flops=8 * e, bwd_flops=14 * e)
