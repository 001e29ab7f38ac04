"""Fused WaveNet residual layer: dilated causal conv to 2C channels (+ conditioning), gate
tanh(a) * sigmoid(b), 1x1 residual and skip projections -> (x + residual, skip)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import LOWER, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.conv_common import dtype_reasons
from dlkern.ops.dilated_conv1d import dilated_conv1d_ref
from dlkern.registry import Cost, OpSpec, Sample, register_op

MAX_C = 128   # residual channels the fused Triton kernel holds on chip (the CUDA kernel: C <= 1024)


# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda"); the forward also returns h (the gate's input) for
# the backward
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::wavenet_layer_fwd", mutates_args=())
def wavenet_layer_fwd_op(x: Tensor, w_dil: Tensor, b_dil: Optional[Tensor], cond: Optional[Tensor], w_res: Tensor,
                         b_res: Optional[Tensor], w_skip: Tensor, b_skip: Optional[Tensor], dilation: int,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _backend.launchers(backend, x.device).wavenet_layer_fwd(
        x, w_dil, b_dil, cond, w_res, b_res, w_skip, b_skip, dilation)


@torch.library.custom_op("dlkern::wavenet_layer_bwd", mutates_args=())
def wavenet_layer_bwd_op(dout: Tensor, dskip: Tensor, x: Tensor, h: Tensor, w_dil: Tensor, w_res: Tensor,
                         w_skip: Tensor, has_b_dil: bool, has_b_res: bool, has_b_skip: bool, dilation: int,
                         backend: str) -> list[Tensor]:
    grads = _backend.launchers(backend, x.device).wavenet_layer_bwd(
        dout, dskip, x, h, w_dil, w_res, w_skip, has_b_dil, has_b_res, has_b_skip, dilation)
    return [g if g is not None else x.new_empty(0) for g in grads]


@wavenet_layer_fwd_op.register_fake
def _(x, w_dil, b_dil, cond, w_res, b_res, w_skip, b_skip, dilation, backend):
    B, C, L = x.shape
    return x.new_empty(B, C, L), x.new_empty(B, w_skip.shape[0], L), x.new_empty(B, 2 * C, L)


@wavenet_layer_bwd_op.register_fake
def _(dout, dskip, x, h, w_dil, w_res, w_skip, has_b_dil, has_b_res, has_b_skip, dilation, backend):
    C, S = w_res.shape[0], w_skip.shape[0]
    bias = lambda has, n: w_res.new_empty(n if has else 0)  # noqa: E731
    return [x.new_empty(x.shape), torch.empty_like(w_dil), bias(has_b_dil, 2 * C), h.new_empty(h.shape),
            torch.empty_like(w_res), bias(has_b_res, C), torch.empty_like(w_skip), bias(has_b_skip, S)]


def _setup(ctx, inputs, output):
    x, w_dil, b_dil, cond, w_res, b_res, w_skip, b_skip, dilation, backend = inputs
    ctx.save_for_backward(x, output[2], w_dil, w_res, w_skip)
    ctx.args = (b_dil is not None, b_res is not None, b_skip is not None, dilation, backend)
    ctx.has_cond = cond is not None


def _backward(ctx, dout, dskip, _dh):
    x, h, w_dil, w_res, w_skip = ctx.saved_tensors
    has_b_dil, has_b_res, has_b_skip, dilation, backend = ctx.args
    dx, dw_dil, db_dil, dcond, dw_res, db_res, dw_skip, db_skip = wavenet_layer_bwd_op(
        dout, dskip, x, h, w_dil, w_res, w_skip, has_b_dil, has_b_res, has_b_skip, dilation, backend)
    return (dx, dw_dil, db_dil if has_b_dil else None, dcond if ctx.has_cond else None, dw_res,
            db_res if has_b_res else None, dw_skip, db_skip if has_b_skip else None, None, None)


wavenet_layer_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Reference, checks, public function
# ---------------------------------------------------------------------------------------------
def wavenet_layer_ref(x: Tensor, dil_weight: Tensor, dil_bias: Tensor | None, res_weight: Tensor,
                      res_bias: Tensor | None, skip_weight: Tensor, skip_bias: Tensor | None, dilation: int = 1,
                      cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: the eager composition. x (B, C, L); dil_weight (2C, C, K), dil_bias (2C,);
    res_weight (C, C) or (C, C, 1), res_bias (C,); skip_weight (S, C) or (S, C, 1), skip_bias (S,);
    cond (B, 2C, L) or None (already projected). Returns (x + residual (B, C, L), skip (B, S, L))."""
    c = x.shape[1]
    h = dilated_conv1d_ref(x, dil_weight, dil_bias, dilation, True)          # (B, 2C, L)
    if cond is not None:
        h = h + cond
    z = torch.tanh(h[:, :c]) * torch.sigmoid(h[:, c:])                       # (B, C, L)
    res = F.conv1d(z, res_weight.reshape(c, c, 1), res_bias)
    skip = F.conv1d(z, skip_weight.reshape(skip_weight.shape[0], c, 1), skip_bias)
    return x + res, skip


def _check(x, dil_weight, dil_bias, res_weight, res_bias, skip_weight, skip_bias, dilation, cond):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 3:
        raise ValueError(f"x must be a floating-point tensor of shape (B, C, L); got "
                         f"{list(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    B, C, L = x.shape

    def shape_of(name, t, *shapes, optional=False):
        if t is None and optional:
            return
        if not isinstance(t, Tensor) or list(t.shape) not in [list(s) for s in shapes]:
            raise ValueError(f"{name} must have shape {' or '.join(str(tuple(s)) for s in shapes)}"
                             f"{' or be None' if optional else ''}; got "
                             f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not isinstance(dil_weight, Tensor) or dil_weight.dim() != 3:
        raise ValueError(f"dil_weight must have shape (2C, C, K) = ({2 * C}, {C}, K); got "
                         f"{list(dil_weight.shape) if isinstance(dil_weight, Tensor) else type(dil_weight).__name__}")
    shape_of("dil_weight", dil_weight, (2 * C, C, dil_weight.shape[2]))
    shape_of("dil_bias", dil_bias, (2 * C,), optional=True)
    shape_of("res_weight", res_weight, (C, C), (C, C, 1))
    shape_of("res_bias", res_bias, (C,), optional=True)
    if not isinstance(skip_weight, Tensor) or skip_weight.dim() not in (2, 3):
        raise ValueError("skip_weight must have shape (S, C) or (S, C, 1)")
    shape_of("skip_weight", skip_weight, (skip_weight.shape[0], C), (skip_weight.shape[0], C, 1))
    shape_of("skip_bias", skip_bias, (skip_weight.shape[0],), optional=True)
    shape_of("cond", cond, (B, 2 * C, L), optional=True)
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1; got {dilation!r}")


@follows_autocast(LOWER)
def wavenet_layer(x: Tensor, dil_weight: Tensor, dil_bias: Tensor | None, res_weight: Tensor,
                  res_bias: Tensor | None, skip_weight: Tensor, skip_bias: Tensor | None, dilation: int = 1,
                  cond: Tensor | None = None, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """One WaveNet residual layer: h = causal dilated conv (x) (+ cond), z = tanh(h_a) *
    sigmoid(h_b), returns (x + res(z), skip(z)); see :func:`wavenet_layer_ref` for shapes. The
    kernel backends fuse conv, gate and both projections in one pass (Triton: C <= 128, CUDA: C <= 1024
    residual channels; any number of skip channels)."""
    _check(x, dil_weight, dil_bias, res_weight, res_bias, skip_weight, skip_bias, dilation, cond)
    args = (x, dil_weight, dil_bias, res_weight, res_bias, skip_weight, skip_bias, dilation, cond)
    chosen = choose(WAVENET_LAYER, args, {}, backend)
    if chosen == "reference":
        return wavenet_layer_ref(*args)
    c, s = x.shape[1], skip_weight.shape[0]
    out, skip, _ = wavenet_layer_fwd_op(x, dil_weight.contiguous(), dil_bias, cond,
                                        res_weight.reshape(c, c).contiguous(), res_bias,
                                        skip_weight.reshape(s, c).contiguous(), skip_bias, dilation, chosen)
    return out, skip


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, x, dil_weight, dil_bias, res_weight, res_bias, skip_weight, skip_bias, dilation=1, cond=None):
    reasons = dtype_reasons(x, dil_weight, dil_bias, res_weight, res_bias, skip_weight, skip_bias, cond)
    if backend == "triton" and x.shape[1] > MAX_C:
        reasons.append(f"the fused Triton kernel holds at most {MAX_C} residual channels; got {x.shape[1]}")
    if backend == "cuda" and x.shape[1] > 1024:
        reasons.append(f"the CUDA kernel holds at most 1024 residual channels; got {x.shape[1]}")
    return reasons


def _layer(gen, device, dtype, b, c, s, length, k, bias=True, cond=False):
    r = lambda *sh, scale=1.0: (torch.randn(sh, generator=gen) * scale).to(device=device, dtype=dtype)  # noqa: E731
    return (r(b, c, length), r(2 * c, c, k, scale=(c * k) ** -0.5), r(2 * c) if bias else None,
            r(c, c, scale=c ** -0.5), r(c) if bias else None, r(s, c, scale=c ** -0.5), r(s) if bias else None)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(11)
    yield Sample("c4_s6_k2", _layer(gen, device, dtype, 2, 4, 6, 7, 2) + (1,), {}, (0, 1, 2, 3, 4, 5, 6))
    layer = _layer(gen, device, dtype, 1, 3, 33, 123, 2)  # C + S > BLOCK_O: several projection chunks
    cond = (torch.randn(1, 6, 123, generator=gen) * 0.5).to(device=device, dtype=dtype)
    yield Sample("cond_dil4_len123_batch1", layer + (4, cond), {}, (0, 1, 2, 3, 4, 5, 6, 8))
    yield Sample("dil512_short_no_bias", _layer(gen, device, dtype, 1, 2, 3, 5, 2, bias=False) + (512,), {},
                 (0, 1, 3, 5))
    x, *params = _layer(gen, device, dtype, 2, 5, 4, 9, 3)
    strided = (torch.randn(2, 10, 12, generator=gen).to(device=device, dtype=dtype))[:, ::2, 2:11]
    yield Sample("strided_x_k3_dil2", (strided, *params, 2), {}, (0, 1, 2, 3, 4, 5, 6))


def _bench_cases(device, dtype, quick):
    """WaveNet layers: 64 residual / 256 skip channels (and 128 / 256), K = 2, dilation 512."""
    gen = torch.Generator().manual_seed(0)
    b, length = (8, 16000) if device.type == "cuda" else (1, 4000)
    for c in (64,) if quick else (64, 128):
        layer = _layer(gen, device, dtype, b, c, 256, length, 2)
        yield Sample(f"wavenet_{b}x{c}x{length}_skip256_d512", layer + (512,), {}, (0, 1, 2, 3, 4, 5, 6))


def _cost(sample):
    x, w_dil, _, _, _, w_skip = sample.args[:6]
    (b, c, length), k, s, e = x.shape, w_dil.shape[2], w_skip.shape[0], x.element_size()
    flops = 2 * b * length * (2 * c * c * k + c * (c + s))
    weights = (w_dil.numel() + c * c + s * c) * e
    # forward: read x, write out, skip and h; backward: read dout, dskip, x, h, write dx, dh, z
    return Cost(fwd_bytes=b * length * (c + c + s + 2 * c) * e + weights,
                bwd_bytes=b * length * (c + s + c + 2 * c + c + 2 * c + c) * e + 2 * weights,
                fwd_flops=flops, bwd_flops=2 * flops)


WAVENET_LAYER = register_op(OpSpec(
    name="wavenet_layer", family="conv", fn=wavenet_layer, reference=wavenet_layer_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost,
    torch_equivalent=wavenet_layer_ref, launchers=("wavenet_layer_fwd", "wavenet_layer_bwd"), uses_tl_dot=True,
))
