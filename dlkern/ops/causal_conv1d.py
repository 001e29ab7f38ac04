"""Causal depthwise conv1d (Mamba's short convolution before the selective scan), SiLU fused, and
its decode step ``causal_conv1d_update`` with a rolling state, with causal-conv1d's arguments and
names: packed sequences (``seq_idx``), chunked prefill (``initial_states`` / ``return_final_states``),
several tokens per decode step, a circular buffer (``cache_seqlens``) and a state pool
(``conv_state_indices``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import LOWER, NONE, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.conv_common import dtype_reasons
from dlkern.registry import Cost, OpSpec, Sample, register_op

ACTIVATIONS = (None, "silu", "swish")   # "swish" is causal-conv1d's other name for SiLU
SILU = ("silu", "swish")
MAX_WIDTH = 8


# ---------------------------------------------------------------------------------------------
# Custom ops (``backend`` is "triton" or "cuda")
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                         initial_states: Optional[Tensor], silu: bool, backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).causal_conv1d_fwd(x, weight, bias, silu, seq_idx, initial_states)


@torch.library.custom_op("dlkern::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], seq_idx: Optional[Tensor],
                         initial_states: Optional[Tensor], silu: bool,
                         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dinit = _backend.launchers(backend, x.device).causal_conv1d_bwd(dy, x, weight, bias, silu,
                                                                                seq_idx, initial_states)
    return dx, dw, db if db is not None else x.new_empty(0), dinit if dinit is not None else x.new_empty(0)


@torch.library.custom_op("dlkern::causal_conv1d_update", mutates_args=("conv_state",))
def causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                            cache_seqlens: Optional[Tensor], conv_state_indices: Optional[Tensor],
                            backend: str) -> Tensor:
    return _backend.launchers(backend, x.device).causal_conv1d_update(x, conv_state, weight, bias, silu,
                                                                      cache_seqlens, conv_state_indices)


@causal_conv1d_fwd_op.register_fake
def _(x, weight, bias, seq_idx, initial_states, silu, backend):
    return torch.empty_like(x)


@causal_conv1d_bwd_op.register_fake
def _(dy, x, weight, bias, seq_idx, initial_states, silu, backend):
    return (torch.empty_like(x), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else x.new_empty(0),
            torch.empty_like(initial_states) if initial_states is not None else x.new_empty(0))


@causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices, backend):
    return x.new_empty(x.shape)


def _setup(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, silu, backend = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.silu, ctx.backend = silu, backend


def _backward(ctx, dy):
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    dx, dw, db, dinit = causal_conv1d_bwd_op(dy, x, weight, bias, seq_idx, initial_states, ctx.silu, ctx.backend)
    return (dx, dw, db if bias is not None else None, None,
            dinit if initial_states is not None else None, None, None)


causal_conv1d_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def _final_states(x: Tensor, initial_states: Tensor | None, width: int) -> Tensor:
    """The last W - 1 inputs (B, D, W - 1), reaching into initial_states (or zeros) when L < W - 1.
    Plain slicing: differentiable in x and initial_states."""
    if width == 1:
        return x.new_zeros(*x.shape[:2], 0)
    if x.shape[-1] >= width - 1:
        return x[..., x.shape[-1] - (width - 1):].contiguous()
    before = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], width - 1)
    return torch.cat([before, x], dim=-1)[..., -(width - 1):]


def _finish(y, x, initial_states, width, return_final_states, final_states_out):
    if not return_final_states:
        return y
    final = _final_states(x, initial_states, width)
    if final_states_out is None:
        return y, final
    return y, final_states_out.copy_(final)  # copy_ is differentiable: the gradient reaches x


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
                      initial_states: Tensor | None = None, return_final_states: bool = False,
                      final_states_out: Tensor | None = None, activation: str | None = None):
    """Reference: torch's grouped conv1d. x (B, D, L) (any strides), weight (D, W), bias (D,) or
    None -> y (B, D, L); y[:, :, l] sees x[:, :, l - W + 1 .. l], with initial_states (B, D, W - 1)
    (zeros when None) before the start. seq_idx (B, L) int: a tap at a position of another sequence
    reads 0. return_final_states: also the last W - 1 inputs (B, D, W - 1) (written into
    final_states_out when given)."""
    length, width = x.shape[-1], weight.shape[1]
    if seq_idx is not None:
        # the W shifted copies of x, each tap masked where its position is another sequence's
        xpad = F.pad(x, (width - 1, 0))
        spad = F.pad(seq_idx.long(), (width - 1, 0), value=-1)
        y = sum(weight[:, k, None] * xpad[..., k:k + length] * (spad[:, None, k:k + length] == seq_idx[:, None, :])
                for k in range(width))
        y = y + bias[:, None] if bias is not None else y
    elif initial_states is not None:
        y = F.conv1d(torch.cat([initial_states, x], dim=-1), weight.unsqueeze(1), bias, groups=weight.shape[0])
    else:
        y = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=weight.shape[0])[..., :length]
    y = F.silu(y) if activation in SILU else y
    return _finish(y, x, initial_states, width, return_final_states, final_states_out)


def causal_conv1d_update_ref(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                             activation: str | None = None, cache_seqlens: Tensor | None = None,
                             conv_state_indices: Tensor | None = None) -> Tensor:
    """Reference decode step. x (B, D) or (B, D, L): the new tokens; conv_state (B_pool, D, S), S >=
    W - 1, updated in place; the row of batch b is conv_state_indices[b] (b when None; a negative
    index is a padding slot: y = 0, no state touched). Linear (cache_seqlens None): the state holds
    the last S inputs, oldest first. Circular: position p before the new tokens is slot
    (cache_seqlens[b] + p) mod S, and the new tokens are written from slot cache_seqlens[b] mod S on.
    Returns y shaped like x (fp32 math)."""
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    batch, dim, length = x3.shape
    width, slen = weight.shape[1], conv_state.shape[-1]
    rows = conv_state_indices.long() if conv_state_indices is not None else torch.arange(batch, device=x.device)
    live = rows >= 0
    state = conv_state[rows.clamp(min=0)]                                     # (B, D, S), a copy
    if cache_seqlens is None:
        window = torch.cat([state, x3], dim=-1)                               # (B, D, S + L)
        new_state = window[..., -slen:] if slen else state
    else:
        base = cache_seqlens.long()[:, None]
        taps = torch.remainder(base + torch.arange(-(width - 1), 0, device=x.device), slen)       # (B, W - 1)
        window = torch.cat([state.gather(2, taps[:, None, :].expand(-1, dim, -1)), x3], dim=-1)
        new_state = state.clone()
        keep = range(max(0, length - slen), length)                           # the last min(L, S) tokens
        for t in keep:
            new_state.scatter_(2, torch.remainder(base + t, slen)[:, None, :].expand(-1, dim, 1), x3[..., t:t + 1])
    window = window[..., window.shape[-1] - (length + width - 1):]            # (B, D, L + W - 1)
    ct = torch.promote_types(x.dtype, torch.float32)                          # fp32 math (fp64 stays)
    y = F.conv1d(window.to(ct), weight.to(ct).unsqueeze(1), bias.to(ct) if bias is not None else None,
                 groups=dim)                                                  # (B, D, L)
    y = F.silu(y) if activation in SILU else y
    y = torch.where(live[:, None, None], y, 0.0)
    conv_state[rows[live]] = new_state[live].to(conv_state.dtype)
    return y.to(x.dtype).view(x.shape)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _check(x, weight, bias, activation, x_dims=(3,), x_shape="(B, D, L)"):
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}")
    if x.dim() not in x_dims:
        raise ValueError(f"x must have shape {x_shape}; got {list(x.shape)}")
    d = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != d or not 1 <= weight.shape[1] <= MAX_WIDTH:
        raise ValueError(f"weight must have shape (D, W) = ({d}, W) with 1 <= W <= {MAX_WIDTH}; "
                         f"got {list(weight.shape)}")
    if bias is not None and (not isinstance(bias, Tensor) or list(bias.shape) != [d]):
        raise ValueError(f"bias must be None or a tensor of shape ({d},); got "
                         f"{list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu' ('swish'); got {activation!r}")


def _check_int(name, t, shape):
    if t is not None and (not isinstance(t, Tensor) or t.dtype != torch.int32 or list(t.shape) != list(shape)):
        got = (t.dtype, list(t.shape)) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be None or an int32 tensor of shape {list(shape)}; got {got}")


def _check_states(name, t, x, width):
    expected = [x.shape[0], x.shape[1], width - 1]
    if t is not None and (not isinstance(t, Tensor) or list(t.shape) != expected or t.dtype != x.dtype):
        got = (t.dtype, list(t.shape)) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be None or a {x.dtype} tensor of shape (B, D, W - 1) = {expected}; got {got}")


@follows_autocast(LOWER)
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, seq_idx: Tensor | None = None,
                  initial_states: Tensor | None = None, return_final_states: bool = False,
                  final_states_out: Tensor | None = None, activation: str | None = None, *,
                  backend: str | None = None):
    """Causal depthwise conv1d with causal-conv1d's arguments. x (B, D, L), channel-first or
    channel-last (a (B, L, D) tensor transposed; the output keeps the layout), weight (D, W) with W
    in 1..8, bias (D,) or None, activation None or "silu" (fused; "swish" is the same).

    seq_idx (B, L) int32: the sequence of each position; sequences packed in one row never see each
    other (each starts from zeros). initial_states (B, D, W - 1): the inputs before position 0 (the
    previous chunk's final states). return_final_states: return (y, final_states (B, D, W - 1)), the
    last W - 1 inputs, written into final_states_out when given. As causal-conv1d, seq_idx excludes
    initial_states and return_final_states. Differentiable in x, weight, bias and initial_states."""
    if isinstance(seq_idx, str):
        raise TypeError("the 4th argument is seq_idx (causal-conv1d's order); pass activation=" + repr(seq_idx))
    _check(x, weight, bias, activation)
    width = weight.shape[1]
    _check_int("seq_idx", seq_idx, (x.shape[0], x.shape[2]))
    _check_states("initial_states", initial_states, x, width)
    _check_states("final_states_out", final_states_out, x, width)
    if seq_idx is not None and (initial_states is not None or return_final_states):
        raise ValueError("seq_idx excludes initial_states and return_final_states (as causal-conv1d): "
                         "a packed row holds several sequences, each starting from zeros")
    args = (x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation)
    chosen = choose(CAUSAL_CONV1D, args, {}, backend)
    if chosen == "reference":
        return causal_conv1d_ref(*args)
    y = causal_conv1d_fwd_op(x, weight.contiguous(), bias, seq_idx, initial_states, activation in SILU, chosen)
    return _finish(y, x, initial_states, width, return_final_states, final_states_out)


@follows_autocast(NONE)
def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None,
                         activation: str | None = None, cache_seqlens: Tensor | None = None,
                         conv_state_indices: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """Decoding steps of :func:`causal_conv1d`, causal-conv1d's ``causal_conv1d_update``. x (B, D)
    or (B, D, L): L new tokens; conv_state (B_pool, D, S) with S >= W - 1, in x's dtype, **updated in
    place**: linear, it holds the last S inputs, oldest first (zeros at the start of a sequence);
    with cache_seqlens (B,) int32 it is a circular buffer whose slot cache_seqlens[b] mod S takes
    the first new token. conv_state_indices (B,) int32 picks each batch row's state in the pool
    (B_pool rows; a negative index is a padding slot: y = 0 and no state changes). Returns y shaped
    like x. Feeding a sequence in pieces gives the full-sequence result piece by piece.

    Not differentiable: the result never requires grad (it runs under ``torch.no_grad()``); train
    with :func:`causal_conv1d`."""
    _check(x, weight, bias, activation, x_dims=(2, 3), x_shape="(B, D) or (B, D, L)")
    width = weight.shape[1]
    _check_int("cache_seqlens", cache_seqlens, x.shape[:1])
    _check_int("conv_state_indices", conv_state_indices, x.shape[:1])
    pool = conv_state.shape[0] if isinstance(conv_state, Tensor) and conv_state.dim() == 3 else -1
    if not (isinstance(conv_state, Tensor) and conv_state.dim() == 3 and conv_state.dtype == x.dtype
            and conv_state.shape[1] == x.shape[1] and conv_state.shape[2] >= width - 1
            and (conv_state_indices is not None or pool == x.shape[0])):
        got = (conv_state.dtype, list(conv_state.shape)) if isinstance(conv_state, Tensor) else conv_state
        raise ValueError(f"conv_state must be a {x.dtype} tensor of shape (B, D, S) = ({x.shape[0]} (any pool "
                         f"size with conv_state_indices), {x.shape[1]}, S >= W - 1 = {width - 1}); got {got!r}")
    if cache_seqlens is not None and conv_state.shape[2] == 0:
        raise ValueError("a circular buffer (cache_seqlens) needs conv_state of length S >= 1")
    args = (x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
    with torch.no_grad():
        chosen = choose(CAUSAL_CONV1D_UPDATE, args, {}, backend)
        if chosen == "reference":
            return causal_conv1d_update_ref(*args)
        x3 = x.unsqueeze(-1) if x.dim() == 2 else x
        y = causal_conv1d_update_op(x3, conv_state, weight.contiguous(), bias, activation in SILU,
                                    cache_seqlens, conv_state_indices, chosen)
    return y.view(x.shape)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, x, weight, bias=None, seq_idx=None, initial_states=None, *rest):
    return dtype_reasons(x, weight, bias, initial_states)  # seq_idx is int32 (checked by the op)


def _update_supports(backend, x, conv_state, weight, bias=None, *rest):
    return dtype_reasons(x, conv_state, weight, bias)


def _randn(gen, device, dtype, *shape, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def _int32(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def conv_args(x, weight, bias=None, activation=None, seq_idx=None, initial_states=None, final_states=False):
    """causal_conv1d's positional arguments (causal-conv1d's order)."""
    return (x, weight, bias, seq_idx, initial_states, final_states, None, activation)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(5)
    r = lambda *s, scale=1.0: _randn(gen, device, dtype, *s, scale=scale)  # noqa: E731
    yield Sample("w4_silu", conv_args(r(2, 5, 7), r(5, 4, scale=0.5), r(5), "silu"), {}, (0, 1, 2))
    yield Sample("w1_len1_batch1", conv_args(r(1, 3, 1), r(3, 1)), {}, (0, 1))
    yield Sample("w8_len123", conv_args(r(2, 3, 123), r(3, 8, scale=0.4), r(3)), {}, (0, 1, 2))
    yield Sample("channel_last_w3", conv_args(r(2, 9, 6).transpose(1, 2), r(6, 3), r(6), "silu"), {}, (0, 1, 2))
    yield Sample("strided_w2", conv_args(r(2, 8, 20)[:, ::2, 3:16], r(4, 2), None, "silu"), {}, (0, 1))
    yield Sample("len_below_width", conv_args(r(1, 4, 3), r(4, 6, scale=0.4), r(4), "silu"), {}, (0, 1, 2))
    # packed rows: sequences of 3, 1, 5 and 4 tokens; of 13; ids need not start at 0
    seq = _int32([[0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3], [7] * 13], device)
    yield Sample("packed_seq_idx_w4", conv_args(r(2, 5, 13), r(5, 4, scale=0.5), r(5), "silu", seq), {}, (0, 1, 2))
    strided_seq = seq.repeat_interleave(2, dim=1)[:, ::2]                     # same ids, stride 2
    yield Sample("packed_channel_last_w3", conv_args(r(2, 13, 6).transpose(1, 2), r(6, 3), None, None, strided_seq),
                 {}, (0, 1))
    yield Sample("initial_final_states_w4", conv_args(r(2, 5, 9), r(5, 4, scale=0.5), r(5), "silu", None,
                                                      r(2, 5, 3), True), {}, (0, 1, 2, 4))
    yield Sample("initial_states_channel_last", conv_args(r(2, 11, 6).transpose(1, 2), r(6, 3), r(6), None, None,
                                                          r(2, 6, 2)), {}, (0, 1, 2, 4))
    yield Sample("final_states_len_below_width", conv_args(r(1, 3, 2), r(3, 6, scale=0.4), None, "silu", None,
                                                           r(1, 3, 5), True), {}, (0, 1, 4))


def _update_samples(device, dtype):
    gen = torch.Generator().manual_seed(6)
    r = lambda *s: _randn(gen, device, dtype, *s)  # noqa: E731
    yield Sample("w4_silu", (r(2, 5), r(2, 5, 3), r(5, 4), r(5), "silu"))
    yield Sample("w1_batch1", (r(1, 3, 1), r(1, 3, 0), r(3, 1), None, None))
    yield Sample("w8_odd_d", (r(3, 7, 1), r(3, 7, 7), r(7, 8), r(7), None))
    yield Sample("strided_state", (r(2, 6), r(2, 6, 9)[..., 2:5], r(6, 4), None, "silu"))
    yield Sample("three_tokens_long_state", (r(2, 5, 3), r(2, 5, 6), r(5, 4), r(5), "silu"))
    yield Sample("circular_cache_seqlens", (r(3, 4, 2), r(3, 4, 5), r(4, 4), r(4), "silu", _int32([0, 3, 9], device)))
    yield Sample("pool_indices_padding", (r(3, 6), r(5, 6, 3), r(6, 4), r(6), None, None, _int32([4, -1, 1], device)))
    yield Sample("circular_pool_w3_strided_ints", (r(2, 5, 4), r(4, 5, 6), r(5, 3), None, "silu",
                                                   _int32([4, 0, 7], device)[::2], _int32([2, 9, 0, 9], device)[::2]))


def _bench_cases(device, dtype, quick):
    """Mamba-130m/370m mixer shapes (d_inner 1536/2048, W = 4, SiLU), channel-first and channel-last;
    packed rows (seq_idx, sequences of 1/8 of the row) and chunked prefill (initial + final states)."""
    gen = torch.Generator().manual_seed(0)
    b, length = (8, 2048) if device.type == "cuda" else (1, 1024)
    for d in (1536,) if quick else (1536, 2048):
        x = _randn(gen, device, dtype, b, d, length)
        w, bias = _randn(gen, device, dtype, d, 4), _randn(gen, device, dtype, d)
        yield Sample(f"{b}x{d}x{length}_w4", conv_args(x, w, bias, "silu"), {}, (0, 1, 2))
        if not quick:
            xt = _randn(gen, device, dtype, b, length, d).transpose(1, 2)
            yield Sample(f"{b}x{d}x{length}_w4_channel_last", conv_args(xt, w, bias, "silu"), {}, (0, 1, 2))
        # quick too: the CI compile check then builds the seq_idx / initial-state specializations
        # for the GPU (the interpreter accepts code that Triton's codegen rejects)
        seq = (torch.arange(length, device=device, dtype=torch.int32) // (length // 8)).expand(b, -1)
        yield Sample(f"{b}x{d}x{length}_w4_seq_idx", conv_args(x, w, bias, "silu", seq), {}, (0, 1, 2))
        init = _randn(gen, device, dtype, b, d, 3)
        yield Sample(f"{b}x{d}x{length}_w4_initial_final_states",
                     conv_args(x, w, bias, "silu", None, init, True), {}, (0, 1, 2, 4))


def _update_bench_cases(device, dtype, quick):
    """Batched decode (Mamba-370m d_inner): one token; and 4 tokens into a pool of circular buffers."""
    gen = torch.Generator().manual_seed(0)
    b, d = (64, 2048) if device.type == "cuda" else (8, 2048)
    yield Sample(f"{b}x{d}_w4", (_randn(gen, device, dtype, b, d), _randn(gen, device, dtype, b, d, 3),
                                 _randn(gen, device, dtype, d, 4), _randn(gen, device, dtype, d), "silu"))
    if not quick:
        lens = torch.randint(0, 100, (b,), generator=gen, dtype=torch.int32).to(device)
        rows = torch.randperm(2 * b, generator=gen)[:b].to(device=device, dtype=torch.int32)
        yield Sample(f"{b}x{d}x4_w4_circular_pool", (
            _randn(gen, device, dtype, b, d, 4), _randn(gen, device, dtype, 2 * b, d, 8),
            _randn(gen, device, dtype, d, 4), _randn(gen, device, dtype, d), "silu", lens, rows))


def _cost(sample):
    x, w, seq_idx, init = sample.args[0], sample.args[1], sample.args[3], sample.args[4]
    e, s = x.numel(), x.element_size()
    # initial states: read by the forward; read and their gradient written by the backward (the final
    # states are a slice of x taken outside the kernels)
    idx = seq_idx.numel() * 4 if seq_idx is not None else 0
    init = init.numel() * s if init is not None else 0
    return Cost(fwd_bytes=2 * e * s + w.numel() * s + idx + init,
                bwd_bytes=3 * e * s + 2 * w.numel() * s + idx + 2 * init,
                fwd_flops=2 * e * w.shape[1], bwd_flops=4 * e * w.shape[1])


def _update_cost(sample):
    """At least: y written; for each served batch entry (a negative conv_state_indices entry is a
    padding slot: nothing read, its state untouched) x read, the W - 1 newest state slots read and
    the L new tokens' slots written (at most S)."""
    x, state, w = sample.args[0], sample.args[1], sample.args[2]
    indices = sample.args[6] if len(sample.args) > 6 else sample.kwargs.get("conv_state_indices")
    s = x.element_size()
    tokens = x.shape[2] if x.dim() == 3 else 1
    served = x.shape[0]
    if indices is not None:
        try:
            served = int((indices >= 0).sum())
        except RuntimeError:   # dlkern perf's fake tensors hold no values (its bench cases have no pad slots)
            pass
    per_row = x.shape[1] * (tokens + (w.shape[1] - 1) + min(tokens, state.shape[-1]))
    return Cost(fwd_bytes=(x.numel() + served * per_row) * s, bwd_bytes=0, fwd_flops=2 * x.numel() * w.shape[1])


CAUSAL_CONV1D = register_op(OpSpec(
    name="causal_conv1d", family="conv", fn=causal_conv1d, reference=causal_conv1d_ref, supports=_supports,
    samples=_samples, bench_cases=_bench_cases, cost=_cost, torch_equivalent=causal_conv1d_ref,
    launchers=("causal_conv1d_fwd", "causal_conv1d_bwd"),
))

CAUSAL_CONV1D_UPDATE = register_op(OpSpec(
    name="causal_conv1d_update", family="conv", fn=causal_conv1d_update, reference=causal_conv1d_update_ref,
    supports=_update_supports, samples=_update_samples, bench_cases=_update_bench_cases, cost=_update_cost,
    torch_equivalent=causal_conv1d_update_ref, launchers=("causal_conv1d_update",),
))
