"""Depthwise conv2d: ``F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)`` with
weight (C, 1, KH, KW) (ConvNeXt's 7x7, MobileNet/EfficientNet's 3x3 and 5x5, strided)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import LOWER, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.conv_common import dtype_reasons
from dlkern.registry import Cost, OpSpec, Sample, register_op

MAX_KERNEL = 31


# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda"); padding is (top, left), out_hw the output size
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::depthwise_conv2d_fwd", mutates_args=())
def depthwise_conv2d_fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int],
                            padding: list[int], dilation: list[int], out_hw: list[int], backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).depthwise_conv2d_fwd(
        x, weight, bias, stride, padding, dilation, out_hw)


@torch.library.custom_op("dlkern::depthwise_conv2d_bwd", mutates_args=())
def depthwise_conv2d_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: list[int],
                            padding: list[int], dilation: list[int], backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).depthwise_conv2d_bwd(
        dy, x, weight, has_bias, stride, padding, dilation)
    return dx, dw, db if db is not None else x.new_empty(0)


def _new_image(x, h, w):
    """The kernels' output layout: channels_last when x has unit channel stride (C > 1)."""
    n, c = x.shape[:2]
    if x.stride(1) == 1 and c > 1:
        return x.new_empty(n, h, w, c).permute(0, 3, 1, 2)
    return x.new_empty(n, c, h, w)


@depthwise_conv2d_fwd_op.register_fake
def _(x, weight, bias, stride, padding, dilation, out_hw, backend):
    return _new_image(x, *out_hw)


@depthwise_conv2d_bwd_op.register_fake
def _(dy, x, weight, has_bias, stride, padding, dilation, backend):
    return _new_image(x, *x.shape[2:]), torch.empty_like(weight), x.new_empty(x.shape[1] if has_bias else 0)


def _setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, _out_hw, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (bias is not None, stride, padding, dilation, backend)


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    has_bias, stride, padding, dilation, backend = ctx.args
    dx, dw, db = depthwise_conv2d_bwd_op(dy, x, weight, has_bias, stride, padding, dilation, backend)
    return dx, dw, (db if has_bias else None), None, None, None, None, None


depthwise_conv2d_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Reference and argument handling
# ---------------------------------------------------------------------------------------------
def depthwise_conv2d_ref(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                         dilation=1) -> Tensor:
    """Reference: torch's grouped conv2d. input (N, C, H, W), weight (C, 1, KH, KW), bias (C,) or
    None -> (N, C, OH, OW); stride/dilation int or pair, padding int, pair, "same" or "valid"."""
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups=input.shape[1])


def _pair(name, v, minimum):
    pair = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(p, int) and p >= minimum for p in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them; got {v!r}")
    return pair


def conv_geometry(input, weight, stride, padding, dilation):
    """-> (stride, (pad_top, pad_left), dilation, (OH, OW)) after checking every argument."""
    kh, kw = weight.shape[2:]
    stride, dilation = _pair("stride", stride, 1), _pair("dilation", dilation, 1)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in torch); got stride={stride}")
            # torch pads (total // 2) before and the rest after (asymmetric for even kernels)
            padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
            return stride, padding, dilation, tuple(input.shape[2:])
        else:
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
    padding = _pair("padding", padding, 0)
    out = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                for size, p, d, k, s in zip(input.shape[2:], padding, dilation, (kh, kw), stride))
    if min(out) < 1:
        raise ValueError(f"the output would be empty: input {list(input.shape[2:])}, kernel {(kh, kw)}, "
                         f"padding {padding}, dilation {dilation}, stride {stride}")
    return stride, padding, dilation, out


def _check(input, weight, bias):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must have shape (N, C, H, W); got {list(input.shape)}")
    c = input.shape[1]
    if weight.dim() != 4 or weight.shape[:2] != (c, 1) or not all(1 <= k <= MAX_KERNEL for k in weight.shape[2:]):
        raise ValueError(f"weight must have shape (C, 1, KH, KW) = ({c}, 1, KH, KW) with 1 <= KH, KW <= "
                         f"{MAX_KERNEL}; got {list(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or list(bias.shape) != [c]):
        raise ValueError(f"bias must be None or a tensor of shape ({c},); got "
                         f"{list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")


@follows_autocast(LOWER)
def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, *,
                     backend: str | None = None) -> Tensor:
    """``F.conv2d(..., groups=C)`` for weight (C, 1, KH, KW), KH, KW <= 31. NCHW or channels_last
    input (kept in the output); stride and dilation int or pair; padding int, pair, "same" or
    "valid". Differentiable in input, weight and bias."""
    _check(input, weight, bias)
    stride_, pad, dil, out_hw = conv_geometry(input, weight, stride, padding, dilation)
    chosen = choose(DEPTHWISE_CONV2D, (input, weight, bias, stride, padding, dilation), {}, backend)
    if chosen == "reference":
        return depthwise_conv2d_ref(input, weight, bias, stride, padding, dilation)
    c, _, kh, kw = weight.shape
    return depthwise_conv2d_fwd_op(input, weight.reshape(c, kh, kw).contiguous(), bias, list(stride_), list(pad),
                                   list(dil), list(out_hw), chosen)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, x, w, b=None, *rest):
    return dtype_reasons(x, w, b)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(7)
    r = lambda *s, scale=1.0: (torch.randn(s, generator=gen) * scale).to(device=device, dtype=dtype)  # noqa: E731
    cl = torch.channels_last
    yield Sample("k3_nchw", (r(2, 4, 7, 7), r(4, 1, 3, 3), r(4), 1, 1), {}, (0, 1, 2))
    yield Sample("k7_channels_last", (r(1, 8, 5, 6).to(memory_format=cl), r(8, 1, 7, 7, scale=0.3), r(8), 1, 3),
                 {}, (0, 1, 2))
    yield Sample("k5_stride2_odd", (r(1, 3, 11, 9), r(3, 1, 5, 5, scale=0.4), None, 2, 2), {}, (0, 1))
    yield Sample("k3_stride2_channels_last_odd", (r(1, 6, 7, 5).to(memory_format=cl), r(6, 1, 3, 3), r(6), 2, (1, 0)),
                 {}, (0, 1, 2))
    yield Sample("same_even_k4_dil2", (r(1, 3, 7, 6), r(3, 1, 4, 2), r(3), 1, "same", 2), {}, (0, 1, 2))
    yield Sample("size1_batch1", (r(1, 2, 1, 1), r(2, 1, 3, 3), r(2), 1, 1), {}, (0, 1, 2))
    yield Sample("width123_stride2", (r(1, 2, 3, 123), r(2, 1, 3, 3), r(2), 2, 1), {}, (0, 1, 2))
    yield Sample("strided_view_dil3", (r(2, 6, 9, 12)[:, ::2, :, 1:10], r(3, 1, 3, 3), None, 1, (0, 2), 3), {}, (0, 1))
    yield Sample("k31x5", (r(1, 1, 5, 5), r(1, 1, 31, 5, scale=0.2), r(1), 1, (15, 2)), {}, (0, 1, 2))
    # channels_last, 3/5/7 and C % 4 == 0: the CUDA register-blocked forward (a partial run of 4
    # output columns; stride 2 down, dilation 2 across, each input pixel still read; a second,
    # partial tile of 32 channel vectors; a column-strided view)
    yield Sample("k5_channels_last_stride2x1_dil1x2", (r(2, 12, 9, 11).to(memory_format=cl),
                                                       r(12, 1, 5, 5, scale=0.3), r(12), (2, 1), 2, (1, 2)),
                 {}, (0, 1, 2))
    yield Sample("k3_channels_last_136ch", (r(1, 136, 4, 6).to(memory_format=cl), r(136, 1, 3, 3), None, 1, 1),
                 {}, (0, 1))
    yield Sample("k7_channels_last_column_view", (r(1, 8, 6, 20).to(memory_format=cl)[:, :, :, ::2],
                                                  r(8, 1, 7, 7, scale=0.3), r(8), 1, 3), {}, (0, 1, 2))


def _bench_cases(device, dtype, quick):
    """ConvNeXt-T stage 1 (96 channels, 56x56, 7x7) and MobileNetV2 (144 channels, 3x3 stride 2),
    channels_last as those models run; and ConvNeXt-T's last stage (768 channels, 7x7 planes), where
    a per-image pixel tile would leave lanes idle."""
    gen = torch.Generator().manual_seed(0)
    n = 32 if device.type == "cuda" else 1
    cases = [("convnext_t_s1_7x7", (n, 96, 56, 56), 7, 1, 3), ("mobilenet_3x3_s2", (n, 144, 56, 56), 3, 2, 1),
             ("convnext_t_s4_7x7", (n, 768, 7, 7), 7, 1, 3)]
    for name, shape, k, stride, pad in cases[:1] if quick else cases:
        x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
        w = (torch.randn(shape[1], 1, k, k, generator=gen) * 0.1).to(device=device, dtype=dtype)
        b = torch.zeros(shape[1], device=device, dtype=dtype)
        yield Sample(f"{name}_{'x'.join(map(str, shape))}", (x, w, b, stride, pad), {}, (0, 1, 2))


def sample_geometry(sample):
    """conv_geometry of a registry sample (x, w, bias[, stride[, padding[, dilation]]]), defaults filled."""
    x, w = sample.args[:2]
    stride, padding, dilation = (list(sample.args[3:]) + [1, 0, 1][len(sample.args) - 3:])[:3]
    return conv_geometry(x, w, stride, padding, dilation)


def _cost(sample):
    x, w = sample.args[:2]
    _, _, _, (oh, ow) = sample_geometry(sample)
    s, k2 = x.element_size(), w.shape[2] * w.shape[3]
    e_in, e_out = x.numel(), x.shape[0] * x.shape[1] * oh * ow
    return Cost(fwd_bytes=(e_in + e_out + w.numel()) * s, bwd_bytes=(2 * e_in + 2 * e_out + 2 * w.numel()) * s,
                fwd_flops=2 * e_out * k2, bwd_flops=4 * e_out * k2)


DEPTHWISE_CONV2D = register_op(OpSpec(
    name="depthwise_conv2d", family="conv", fn=depthwise_conv2d, reference=depthwise_conv2d_ref,
    supports=_supports, samples=_samples, bench_cases=_bench_cases, cost=_cost,
    torch_equivalent=depthwise_conv2d_ref, launchers=("depthwise_conv2d_fwd", "depthwise_conv2d_bwd"),
))


def is_depthwise(input, weight, groups) -> bool:
    """Whether ``F.conv2d(input, weight, groups=groups)`` is a depthwise conv this op serves
    (batched 4-D input, channel multiplier 1, filter up to 31x31)."""
    return (isinstance(input, Tensor) and isinstance(weight, Tensor) and input.dim() == 4 and weight.dim() == 4
            and groups == input.shape[1] == weight.shape[0] and weight.shape[1] == 1
            and max(weight.shape[2:]) <= MAX_KERNEL)


@follows_autocast(LOWER)
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1, *,
           backend: str | None = None) -> Tensor:
    """Mirrors ``torch.nn.functional.conv2d``: depthwise convolutions (see :func:`is_depthwise`) run
    :func:`depthwise_conv2d`, everything else runs torch's conv2d. A kernel backend named in
    ``backend=`` for a conv that is not depthwise raises :class:`dlkern.BackendError`."""
    if is_depthwise(input, weight, groups):
        return depthwise_conv2d(input, weight, bias, stride, padding, dilation, backend=backend)
    if backend not in (None, "auto", "reference"):
        depthwise_shape = (isinstance(input, Tensor) and isinstance(weight, Tensor) and input.dim() == 4
                           and weight.dim() == 4 and groups == input.shape[1] == weight.shape[0]
                           and weight.shape[1] == 1)
        why = (f"its filter {list(weight.shape[2:])} is larger than the kernels' {MAX_KERNEL}x{MAX_KERNEL} "
               "(use backend='reference' or 'auto', which run torch's conv2d)") if depthwise_shape else (
            "it serves depthwise convolutions only (groups == in_channels == out_channels, weight (C, 1, KH, KW))")
        raise _backend.BackendError(
            f"dlkern.conv2d: backend {backend!r} cannot serve this convolution: {why}; got input "
            f"{list(input.shape)}, weight {list(weight.shape)}, groups={groups}")
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
