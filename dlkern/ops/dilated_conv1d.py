"""Dilated conv1d with a length-preserving padding: causal (WaveNet, ByteNet decoder: (K - 1) *
dilation zeros on the left) or centered (ByteNet encoder)."""
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



# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda"); ``left`` is the padding before the sequence
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::dilated_conv1d_fwd", mutates_args=())
def dilated_conv1d_fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], dilation: int, left: int,
                          backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).dilated_conv1d_fwd(x, weight, bias, dilation, left)


@torch.library.custom_op("dlkern::dilated_conv1d_bwd", mutates_args=())
def dilated_conv1d_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, has_bias: bool, dilation: int, left: int,
                          backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _backend.launchers(backend, x.device).dilated_conv1d_bwd(dy, x, weight, has_bias, dilation, left)
    return dx, dw, db if db is not None else x.new_empty(0)


@dilated_conv1d_fwd_op.register_fake
def _(x, weight, bias, dilation, left, backend):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2])


@dilated_conv1d_bwd_op.register_fake
def _(dy, x, weight, has_bias, dilation, left, backend):
    return x.new_empty(x.shape), torch.empty_like(weight), x.new_empty(weight.shape[0] if has_bias else 0)


def _setup(ctx, inputs, output):
    x, weight, bias, dilation, left, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (bias is not None, dilation, left, backend)


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    has_bias, dilation, left, backend = ctx.args
    dx, dw, db = dilated_conv1d_bwd_op(dy, x, weight, has_bias, dilation, left, backend)
    return dx, dw, (db if has_bias else None), None, None, None


dilated_conv1d_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Reference, checks, public function
# ---------------------------------------------------------------------------------------------
def left_padding(kernel_size: int, dilation: int, causal: bool) -> int:
    """Zeros before the sequence: all (K - 1) * dilation when causal, else half (the rest after)."""
    total = (kernel_size - 1) * dilation
    return total if causal else total // 2


def dilated_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1,
                       causal: bool = True) -> Tensor:
    """Reference: torch's conv1d on the padded sequence. x (B, Cin, L), weight (Cout, Cin, K), bias
    (Cout,) or None -> (B, Cout, L); y[:, :, l] sees x[:, :, l - left + k * dilation], k < K."""
    k = weight.shape[2]
    left = left_padding(k, dilation, causal)
    return F.conv1d(F.pad(x, (left, (k - 1) * dilation - left)), weight, bias, dilation=dilation)


def check_dilated_conv1d_args(x, weight, bias, dilation, causal):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, Cin, L); got {list(x.shape)}")
    if weight.dim() != 3 or weight.shape[1] != x.shape[1] or weight.shape[2] < 1:
        raise ValueError(f"weight must have shape (Cout, Cin, K) = (Cout, {x.shape[1]}, K); got {list(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or list(bias.shape) != [weight.shape[0]]):
        raise ValueError(f"bias must be None or a tensor of shape ({weight.shape[0]},); got "
                         f"{list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation must be an int >= 1; got {dilation!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False; got {causal!r}")


@follows_autocast(LOWER)
def dilated_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1, causal: bool = True, *,
                   backend: str | None = None) -> Tensor:
    """Length-preserving dilated conv1d: x (B, Cin, L) (any strides), weight (Cout, Cin, K), bias
    (Cout,) or None -> (B, Cout, L). causal=True pads (K - 1) * dilation zeros on the left (output l
    sees inputs up to l); causal=False centers the window (the odd zero, for even spans, goes
    right). Differentiable in x, weight and bias."""
    check_dilated_conv1d_args(x, weight, bias, dilation, causal)
    chosen = choose(DILATED_CONV1D, (x, weight, bias, dilation, causal), {}, backend)
    if chosen == "reference":
        return dilated_conv1d_ref(x, weight, bias, dilation, causal)
    left = left_padding(weight.shape[2], dilation, causal)
    return dilated_conv1d_fwd_op(x, weight.contiguous(), bias, dilation, left, chosen)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, x, w, b=None, *rest):
    return dtype_reasons(x, w, b)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(9)
    r = lambda *s, scale=1.0: (torch.randn(s, generator=gen) * scale).to(device=device, dtype=dtype)  # noqa: E731
    yield Sample("causal_k2", (r(2, 3, 7), r(4, 3, 2, scale=0.5), r(4), 1, True), {}, (0, 1, 2))
    yield Sample("causal_k3_dil4_len123", (r(1, 5, 123), r(6, 5, 3, scale=0.4), r(6), 4, True), {}, (0, 1, 2))
    yield Sample("centered_k3_dil2", (r(2, 4, 9), r(4, 4, 3, scale=0.4), None, 2, False), {}, (0, 1))
    yield Sample("centered_even_k4_dil3", (r(1, 3, 10), r(2, 3, 4, scale=0.4), r(2), 3, False), {}, (0, 1, 2))
    yield Sample("dil512_short", (r(1, 2, 7), r(3, 2, 2), r(3), 512, True), {}, (0, 1, 2))
    yield Sample("len1_batch1", (r(1, 3, 1), r(2, 3, 3), None, 2, True), {}, (0, 1))
    yield Sample("strided", (r(2, 6, 20)[:, ::2, 3:14], r(5, 3, 2), r(5), 2, True), {}, (0, 1, 2))
    yield Sample("channel_last", (r(2, 9, 4).transpose(1, 2), r(4, 4, 2, scale=0.5), r(4), 1, False), {}, (0, 1, 2))


def _bench_cases(device, dtype, quick):
    """WaveNet (residual channels 64, gate 2 x 64, K = 2, dilation up to 512) and a wider
    ByteNet-style layer (512 channels, K = 3), one second of 16 kHz audio / 2k tokens."""
    gen = torch.Generator().manual_seed(0)
    b = 8 if device.type == "cuda" else 1
    cases = [("wavenet", b, 64, 128, 16000, 2, 512, True), ("bytenet", b, 512, 512, 2048, 3, 16, False)]
    for name, bb, cin, cout, length, k, dil, causal in cases[:1] if quick else cases:
        x = torch.randn(bb, cin, length, generator=gen).to(device=device, dtype=dtype)
        w = (torch.randn(cout, cin, k, generator=gen) / (cin * k) ** 0.5).to(device=device, dtype=dtype)
        yield Sample(f"{name}_{bb}x{cin}x{length}_k{k}_d{dil}", (x, w, torch.zeros(cout, device=device, dtype=dtype),
                                                                 dil, causal), {}, (0, 1, 2))


def _cost(sample):
    x, w = sample.args[:2]
    (bb, cin, length), (cout, _, k), s = x.shape, w.shape, x.element_size()
    flops = 2 * bb * length * cin * cout * k
    return Cost(fwd_bytes=(bb * length * (cin + cout) + w.numel()) * s,
                bwd_bytes=(2 * bb * length * (cin + cout) + 2 * w.numel()) * s, fwd_flops=flops, bwd_flops=2 * flops)


DILATED_CONV1D = register_op(OpSpec(
    name="dilated_conv1d", family="conv", fn=dilated_conv1d, reference=dilated_conv1d_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=dilated_conv1d_ref,
    launchers=("dilated_conv1d_fwd", "dilated_conv1d_bwd"), uses_tl_dot=True,
))
