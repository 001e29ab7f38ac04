"""Weight normalization ``w = g * v / ||v||`` with the norm over every dim but ``dim``
(``torch._weight_norm``; ``dim=None`` or ``-1``: over the whole tensor)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose, forward_ad_active
from dlkern.registry import Cost, OpSpec, Sample, register_op


@torch.library.custom_op("dlkern::weight_norm_fwd", mutates_args=())
def weight_norm_fwd_op(v2: Tensor, g1: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _backend.launchers(backend, v2.device).weight_norm_fwd(v2, g1)


@torch.library.custom_op("dlkern::weight_norm_bwd", mutates_args=())
def weight_norm_bwd_op(dw2: Tensor, v2: Tensor, g1: Tensor, norm: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _backend.launchers(backend, v2.device).weight_norm_bwd(dw2, v2, g1, norm)


@weight_norm_fwd_op.register_fake
def _(v2, g1, backend):
    return torch.empty_like(v2), v2.new_empty(v2.shape[0], dtype=torch.float32)


@weight_norm_bwd_op.register_fake
def _(dw2, v2, g1, norm, backend):
    return torch.empty_like(v2), torch.empty_like(g1)


def _setup(ctx, inputs, output):
    v2, g1, backend = inputs
    ctx.save_for_backward(v2, g1, output[1])
    ctx.backend = backend


def _backward(ctx, dw2, _dnorm):
    v2, g1, norm = ctx.saved_tensors
    dv, dg = weight_norm_bwd_op(dw2, v2, g1, norm, ctx.backend)
    return dv, dg, None


weight_norm_fwd_op.register_autograd(_backward, setup_context=_setup)


def weight_norm_ref(v: Tensor, g: Tensor, dim: int | None = 0) -> Tensor:
    """Reference: ``torch._weight_norm(v, g, dim)``. v any shape; g has v's size at ``dim`` and 1
    elsewhere (or one element for the whole-tensor norm, ``dim`` None or -1)."""
    return torch._weight_norm(v, g, -1 if dim is None else dim)


def _normalize_dim(v, g, dim):
    if dim is None or dim == -1:
        if g.numel() != 1:
            raise ValueError(f"g must have one element for the whole-tensor norm (dim={dim}); got shape {list(g.shape)}")
        return None
    if not isinstance(dim, int) or not 0 <= dim < v.dim():
        raise ValueError(f"dim must be None, -1 (whole tensor) or in [0, {v.dim()}); got {dim!r}")
    expected = [v.shape[d] if d == dim else 1 for d in range(v.dim())]
    if g.numel() != v.shape[dim] or (g.dim() == v.dim() and list(g.shape) != expected):
        raise ValueError(f"g must have shape {expected} (v's size along dim={dim}); got {list(g.shape)}")
    return dim


def _weight_norm_math(v: Tensor, g: Tensor, d: int | None) -> Tensor:
    """``g * v / ||v||`` in ops that have forward-AD formulas (``torch._weight_norm`` has none)."""
    norm = torch.linalg.vector_norm(v, dim=[i for i in range(v.dim()) if i != d], keepdim=True)
    return v * (g.reshape(norm.shape) / norm)


@follows_autocast(NONE)
def weight_norm(v: Tensor, g: Tensor, dim: int | None = 0, *, backend: str | None = None) -> Tensor:
    """``g * v / ||v||``; the norm runs over every dim but ``dim`` (None or -1: the whole tensor)."""
    for name, t in (("v", v), ("g", g)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}")
    d = _normalize_dim(v, g, dim)
    chosen = choose(WEIGHT_NORM, (v, g, dim), {}, backend)
    if chosen == "reference" and forward_ad_active((v, g)):
        return _weight_norm_math(v, g, d)
    if chosen == "reference":
        return weight_norm_ref(v, g, dim)
    moved = v.movedim(d, 0) if d is not None else v.reshape(1, -1)
    v2 = moved.reshape(moved.shape[0], -1)
    v2 = v2 if v2.is_contiguous() else v2.contiguous()
    w2, _ = weight_norm_fwd_op(v2, g.reshape(-1), chosen)
    if d is None:
        return w2.view(v.shape)
    return w2.view(moved.shape).movedim(0, d).contiguous()


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    yield Sample("linear_dim0", (r(7, 13), r(7, 1).abs() + 0.5, 0), {}, (0, 1))
    yield Sample("conv_dim0", (r(6, 3, 3, 3), r(6, 1, 1, 1).abs() + 0.5, 0), {}, (0, 1))
    yield Sample("conv1d_dim1", (r(4, 5, 3), r(1, 5, 1).abs() + 0.5, 1), {}, (0, 1))
    yield Sample("last_dim", (r(9, 4), r(1, 4).abs() + 0.5, 1), {}, (0, 1))
    yield Sample("whole_tensor", (r(5, 6), r(1).abs() + 0.5, None), {}, (0, 1))
    yield Sample("long_rows", (r(3, 5000), r(3, 1).abs() + 0.5, 0), {}, (0, 1))


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    shapes = [(4096, 4096)] if quick else [(4096, 4096), (512, 512, 3, 3)]
    for shape in shapes:
        v = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        g = torch.ones([shape[0]] + [1] * (len(shape) - 1), device=device, dtype=dtype)
        yield Sample("x".join(map(str, shape)), (v, g, 0), {}, (0, 1))


def _cost(sample):
    """Minimum bytes: fwd reads v and writes w (a row's norm is computed on chip), bwd reads dw and
    v and writes dv; g and the norms are small and left out."""
    v = sample.args[0]
    return Cost(fwd_bytes=2 * v.numel() * v.element_size(), bwd_bytes=3 * v.numel() * v.element_size())


WEIGHT_NORM = register_op(OpSpec(
    name="weight_norm", family="norm", fn=weight_norm, reference=weight_norm_ref,
    supports=lambda backend, v, g, dim=0: [] if v.dtype in (torch.float32, torch.float16, torch.bfloat16)
    else [f"v dtype {v.dtype} is not supported (float32, float16, bfloat16)"],
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=torch._weight_norm,
    launchers=("weight_norm_fwd", "weight_norm_bwd"),
))
