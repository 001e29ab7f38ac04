"""Machinery shared by LayerNorm and RMSNorm (and their fused-residual variants): argument checks,
the ``torch.library`` custom ops around the kernel launchers, the autograd Function, and the
sample inputs / cost model the registry uses. The public ops live in ``layer_norm.py`` and
``rms_norm.py``.

The custom ops take the already chosen backend as a string, so ``torch.compile`` sees one opaque
node per launch (no graph break) and the choice is made eagerly, outside the graph.
Custom ops cannot return ``None``; an absent output is an empty tensor at this level.
"""
from __future__ import annotations

import math

from typing import Optional

import torch
from torch import Tensor

from dlkern import backend as _backend
from dlkern.registry import Cost, Sample

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _empty_like_none(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


# ---------------------------------------------------------------------------------------------
# Custom ops: one per launcher. ``backend`` is "triton" or "cuda".
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::layer_norm_fwd", mutates_args=())
def layer_norm_fwd_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      residual: Optional[Tensor], eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, res_out, mean, rstd = _backend.launchers(backend, x.device).layer_norm_fwd(x, weight, bias, residual, eps)
    return y, (res_out if res_out is not None else _empty_like_none(x)), mean, rstd


@torch.library.custom_op("dlkern::rms_norm_fwd", mutates_args=())
def rms_norm_fwd_op(x: Tensor, weight: Optional[Tensor], residual: Optional[Tensor], eps: float,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    y, res_out, rstd = _backend.launchers(backend, x.device).rms_norm_fwd(x, weight, residual, eps)
    return y, (res_out if res_out is not None else _empty_like_none(x)), rstd


@torch.library.custom_op("dlkern::layer_norm_bwd", mutates_args=())
def layer_norm_bwd_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                      dresidual: Optional[Tensor], has_bias: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).layer_norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias)
    return dx, (dw if dw is not None else _empty_like_none(x)), (db if db is not None else _empty_like_none(x))


@torch.library.custom_op("dlkern::rms_norm_bwd", mutates_args=())
def rms_norm_bwd_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
                    dresidual: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor]:
    dx, dw = _backend.launchers(backend, x.device).rms_norm_bwd(dy, x, weight, rstd, dresidual)
    return dx, (dw if dw is not None else _empty_like_none(x))


@layer_norm_fwd_op.register_fake
def _(x, weight, bias, residual, eps, backend):
    m = x.shape[0]
    res_out = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x.new_empty(0)
    stats = x.new_empty(m, dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), res_out, stats, stats.clone()


@rms_norm_fwd_op.register_fake
def _(x, weight, residual, eps, backend):
    res_out = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), res_out, x.new_empty(x.shape[0], dtype=torch.float32)


@layer_norm_bwd_op.register_fake
def _(dy, x, weight, mean, rstd, dresidual, has_bias, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    db = x.new_empty(x.shape[1], dtype=torch.float32) if has_bias else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw, db


@rms_norm_bwd_op.register_fake
def _(dy, x, weight, rstd, dresidual, backend):
    dw = torch.empty_like(weight) if weight is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dw


# ---------------------------------------------------------------------------------------------
# Autograd, registered on the forward custom ops so torch.compile traces the backward too
# ---------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output, is_rms):
    if is_rms:
        x, weight, residual, _eps, backend = inputs
        bias, mean = None, None
        _y, res_out, rstd = output
    else:
        x, weight, bias, residual, _eps, backend = inputs
        _y, res_out, mean, rstd = output
    # The backward needs the tensor that was normalized: x, or x + residual as stored.
    ctx.save_for_backward(res_out if residual is not None else x, weight, mean, rstd)
    ctx.has_bias, ctx.has_residual, ctx.backend = bias is not None, residual is not None, backend
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, dy, dres_out, is_rms):
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    dres = dres_out if ctx.has_residual and dres_out is not None and dres_out.numel() > 0 else None
    if is_rms:
        dx, dw = rms_norm_bwd_op(dy, x, weight, rstd, dres, ctx.backend)
        db = None
    else:
        dx, dw, db = layer_norm_bwd_op(dy, x, weight, mean, rstd, dres, ctx.has_bias, ctx.backend)
    dw = dw if weight is not None else None
    db = db.to(ctx.bias_dtype) if ctx.has_bias else None  # the launchers sum it in fp32
    dresidual = dx if ctx.has_residual else None
    if is_rms:
        return dx, dw, dresidual, None, None
    return dx, dw, db, dresidual, None, None


layer_norm_fwd_op.register_autograd(
    lambda ctx, dy, dres_out, _dmean, _drstd: _backward(ctx, dy, dres_out, is_rms=False),
    setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, is_rms=False))
rms_norm_fwd_op.register_autograd(
    lambda ctx, dy, dres_out, _drstd: _backward(ctx, dy, dres_out, is_rms=True),
    setup_context=lambda ctx, inputs, output: _setup_context(ctx, inputs, output, is_rms=True))


def _rows(t: Tensor, n: int) -> Tensor:
    """View ``t`` as (rows, n) with contiguous columns; copies only when no such view exists."""
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def row_norm(x, residual, weight, bias, n: int, eps: float, is_rms: bool, backend: str):
    """LayerNorm (``is_rms=False``) or RMSNorm over the trailing ``n`` elements of ``x`` on a kernel
    backend, with ``residual`` added first when given. Returns ``(y, x + residual or None)``."""
    x2 = _rows(x, n)
    r2 = _rows(residual, n) if residual is not None else None
    w1 = weight.reshape(n) if weight is not None else None
    if is_rms:
        y, res_out, _ = rms_norm_fwd_op(x2, w1, r2, eps, backend)
    else:
        b1 = bias.reshape(n) if bias is not None else None
        y, res_out, _, _ = layer_norm_fwd_op(x2, w1, b1, r2, eps, backend)
    return y.view(x.shape), (res_out.view(x.shape) if residual is not None else None)


# ---------------------------------------------------------------------------------------------
# Argument checks shared by the four public ops (errors name the argument and accepted values)
# ---------------------------------------------------------------------------------------------
def normalized_size(input: Tensor, normalized_shape, weight, bias, residual=None) -> tuple[int, ...]:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor; got dtype {input.dtype}")
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, (str, bytes)):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints; got {normalized_shape!r}")
    try:
        normalized_shape = tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints; got {normalized_shape!r}") from None
    k = len(normalized_shape)
    if k == 0 or input.dim() < k or tuple(input.shape[-k:]) != normalized_shape:
        raise ValueError(f"normalized_shape {list(normalized_shape)} must match the trailing dimensions "
                         f"of input; got input of shape {list(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor or None; got {type(t).__name__}")
        if tuple(t.shape) != normalized_shape:
            raise ValueError(f"{name} must have shape normalized_shape={list(normalized_shape)}; "
                             f"got {list(t.shape)}")
        if t.device != input.device:
            raise ValueError(f"{name} must be on the input's device {input.device}; got {t.device}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point; got dtype {t.dtype}")
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"residual must be a tensor; got {type(residual).__name__}")
        if residual.shape != input.shape:
            raise ValueError(f"residual must have the input's shape {list(input.shape)}; got {list(residual.shape)}")
        if residual.device != input.device or residual.dtype != input.dtype:
            raise ValueError(f"residual must match input's device and dtype ({input.device}, {input.dtype}); "
                             f"got ({residual.device}, {residual.dtype})")
    return normalized_shape


def kernel_support(backend: str, input, normalized_shape, weight=None, bias=None) -> list[str]:
    """Reasons the Triton/CUDA row-norm kernels cannot serve these inputs."""
    reasons = []
    if input.dtype not in KERNEL_DTYPES:
        reasons.append(f"input dtype {input.dtype} is not supported (float32, float16, bfloat16)")
    for name, t in (("weight", weight), ("bias", bias)):  # any float dtype: fp32 params, half input
        if isinstance(t, Tensor) and t.dtype not in KERNEL_DTYPES:
            reasons.append(f"{name} dtype {t.dtype} is not supported (float32, float16, bfloat16)")
    return reasons


# ---------------------------------------------------------------------------------------------
# Registry helpers: sample inputs and cost model
# ---------------------------------------------------------------------------------------------
def _randn(shape, device, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def norm_samples(device, dtype, *, with_bias: bool, with_residual: bool, seed: int = 0):
    """Layouts real models use: 2/3/4-D, odd sizes, batch 1, strided rows, transposed input,
    rows longer than one block, no affine parameters, multi-dim normalized_shape."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: _randn(s, device, dtype, gen)  # noqa: E731
    cases = [
        ("2d_odd", r(5, 123), (123,)),
        ("3d_gpt", r(2, 3, 64), (64,)),
        ("batch1", r(1, 1, 1000), (1000,)),
        ("strided_rows", r(6, 200)[:, 17:140], (123,)),
        ("transposed", r(33, 7).t(), (33,)),
        ("4d_multi_dim", r(2, 3, 4, 6), (4, 6)),
        ("n1", r(3, 1), (1,)),
        ("long_row", r(3, 8192 + 37), (8192 + 37,)),
        ("empty_batch", r(0, 3, 64), (64,)),
    ]
    for name, x, ns in cases:
        w = (1.0 + 0.1 * r(*ns))
        b = 0.1 * r(*ns) if with_bias else None
        args = [x, ns, w] + ([b] if with_bias else [])
        grads = (0, 2, 3) if with_bias else (0, 2)
        if with_residual:
            res = r(*x.shape)
            args = [x, res] + args[1:]
            grads = (0, 1) + tuple(g + 1 for g in grads[1:])
        yield Sample(name, tuple(args), {}, grads)
    # No affine parameters at all.
    x = r(4, 96)
    args = (x, r(4, 96), (96,)) if with_residual else (x, (96,))
    yield Sample("no_affine", args, {}, (0, 1) if with_residual else (0,))


def norm_bench_cases(device, dtype, quick, *, with_bias, with_residual):
    """Transformer shapes (tokens x hidden); the CPU set stays small enough to time quickly."""
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        shapes = [(4096, 1024), (4096, 4096), (16384, 8192)] if quick else \
                 [(4096, n) for n in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)]
    else:
        shapes = [(1024, 1024)] if quick else [(4096, 1024), (4096, 4096)]
    for m, n in shapes:
        x = _randn((m, n), device, dtype, gen)
        w = torch.ones(n, device=device, dtype=dtype)
        args = [x, (n,), w] + ([torch.zeros(n, device=device, dtype=dtype)] if with_bias else [])
        grads = (0, 2, 3) if with_bias else (0, 2)
        if with_residual:
            args = [x, _randn((m, n), device, dtype, gen)] + args[1:]
            grads = (0, 1) + tuple(g + 1 for g in grads[1:])
        yield Sample(f"{m}x{n}", tuple(args), {}, grads)


def norm_cost(sample: Sample, *, with_residual: bool, stats_bytes: int = 8) -> Cost:
    """Minimum bytes: x (+ residual) in, y (+ the sum) out, the parameters, and ``stats_bytes`` per
    row of saved statistics (LayerNorm: mean and rstd, 8; RMSNorm: rstd, 4). A row is the
    normalized shape, which may span several trailing dims."""
    x = sample.args[0]
    e, s = x.numel(), x.element_size()
    at = next(i for i, a in enumerate(sample.args) if isinstance(a, (tuple, list)))  # normalized_shape
    n = max(1, math.prod(sample.args[at]))
    rows = e // n
    params = sum(t.numel() * t.element_size() for t in sample.args[at + 1:] if isinstance(t, Tensor))
    io = 2 if not with_residual else 4          # fwd: x (+res) in, y (+sum) out
    fwd = io * e * s + params + stats_bytes * rows
    bwd = (3 + (1 if with_residual else 0)) * e * s + 2 * params + stats_bytes * rows
    return Cost(fwd_bytes=fwd, bwd_bytes=bwd, fwd_flops=8 * e, bwd_flops=12 * e)


def default_eps(eps, dtype) -> float:
    """RMSNorm's ``eps=None``: as in torch, the machine epsilon of the math type (fp32 for
    fp16/bf16 inputs, which are computed in fp32), not of the storage type."""
    return float(torch.finfo(torch.promote_types(dtype, torch.float32)).eps) if eps is None else float(eps)
