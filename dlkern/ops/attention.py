"""Scaled dot-product attention: a drop-in for ``torch.nn.functional.scaled_dot_product_attention``
with a softmax temperature (float or learnable per head), bottom-right causal alignment, bias
gradients, GQA and in-kernel dropout, on the fused Triton and CUDA kernels (FlashAttention-2 style:
O(L) memory, nothing of size Lq x Lk is stored unless a bias needs its gradient).

Semantics beyond torch's (documented in the README):
* a query row whose keys are all masked returns zeros and gets zero gradients (never NaN);
* ``is_causal`` may be combined with ``attn_mask`` (torch rejects the pair);
* ``temperature`` T divides the scores: softmax(q·kᵀ·scale / T + mask);
* ``causal_alignment="bottom_right"`` aligns the causal diagonal to the last key (KV-cache decoding).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import LOWER, follows_autocast
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.ops.peers import flash_attn_sdpa
from dlkern.registry import Cost, OpSpec, Sample, register_op

ALIGNMENTS = ("top_left", "bottom_right")
# torch's own function, taken at import: dlkern.patch_sdpa() may replace the module attribute.
TORCH_SDPA = F.scaled_dot_product_attention
HEAD_DIM_MAX = 256


# ---------------------------------------------------------------------------------------------
# Custom ops around the launchers (one per launcher; the backend is already chosen)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::attention_fwd", mutates_args=())
def attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: Tensor,
                     dropout_p: float, seed: int, is_causal: bool, bottom_right: bool,
                     deterministic: bool, backend: str) -> tuple[Tensor, Tensor]:
    # deterministic: read by the backward only (it is saved with the forward's inputs)
    return _backend.launchers(backend, q.device).attention_fwd(
        q, k, v, bias, scale, dropout_p, seed, is_causal, bottom_right)


@torch.library.custom_op("dlkern::attention_bwd", mutates_args=())
def attention_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                     bias: Optional[Tensor], scale: Tensor, dropout_p: float, seed: int,
                     is_causal: bool, bottom_right: bool, bias_grad: bool,
                     deterministic: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # The CUDA backward has one (deterministic) path; the Triton one takes the switch.
    extra = {} if backend == "cuda" else {"deterministic": deterministic}
    dq, dk, dv, ds = _backend.launchers(backend, q.device).attention_bwd(
        do, q, k, v, o, lse, bias, scale, dropout_p, seed, is_causal, bottom_right, bias_grad, **extra)
    return dq, dk, dv, (ds if ds is not None else q.new_empty(0, dtype=torch.float32))


@attention_fwd_op.register_fake
def _(q, k, v, bias, scale, dropout_p, seed, is_causal, bottom_right, deterministic, backend):
    B, H, L, D = q.shape
    return q.new_empty(B, H, L, D), q.new_empty(B, H, L, dtype=torch.float32)


@attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, bias, scale, dropout_p, seed, is_causal, bottom_right, bias_grad, deterministic,
      backend):
    ds_shape = (*q.shape[:3], k.shape[2]) if bias_grad else (0,)
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(ds_shape, dtype=torch.float32))


def _setup(ctx, inputs, output):
    q, k, v, bias, scale, dropout_p, seed, is_causal, bottom_right, deterministic, backend = inputs
    ctx.save_for_backward(q, k, v, bias, scale, *output)
    ctx.args = (dropout_p, seed, is_causal, bottom_right)
    ctx.backend = backend
    ctx.deterministic = deterministic


def _backward(ctx, do, _dlse):
    q, k, v, bias, scale, o, lse = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    # deterministic as asked at the forward, or as torch.use_deterministic_algorithms says now
    deterministic = ctx.deterministic or torch.are_deterministic_algorithms_enabled()
    dq, dk, dv, ds = attention_bwd_op(do, q, k, v, o, lse, bias, scale, *ctx.args, bias_grad, deterministic,
                                      ctx.backend)
    dbias = ds.to(bias.dtype) if bias_grad else None
    dscale = None
    if ctx.needs_input_grad[4]:
        # s = scale_h · q·k, so dL/dscale_h = Σ dS·(q·k) = Σ_{b,i} q_i · dq_i / scale_h.
        dscale = (q.float() * dq.float()).sum(dim=(0, 2, 3)) / scale
    return dq, dk, dv, dbias, dscale, None, None, None, None, None, None


attention_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def _scale_per_head(query, scale, temperature, heads):
    """(Hq,) fp32 softmax scale per head: scale / temperature (differentiable in temperature)."""
    base = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    if isinstance(temperature, Tensor):
        return base / temperature.float().reshape(heads)
    return torch.full((heads,), base / temperature, dtype=torch.float32, device=query.device)


def _causal_keep(lq, lk, alignment, device):
    """(Lq, Lk) bool: True where query i may see key j."""
    offset = lk - lq if alignment == "bottom_right" else 0
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(offset)


def attention_ref(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, *, temperature=1.0, causal_alignment="top_left"):
    """Reference (explicit math, the oracle of the tests). query (*, Hq, Lq, D), key/value
    (*, Hkv, Lk, D); attn_mask bool (True = attend) or additive float, broadcastable to
    (*, Hq, Lq, Lk). Scores in fp32 (fp64 for fp64 inputs); the probabilities are rounded to the
    input dtype before the product with value, as the kernels do. Dropout uses torch's RNG.
    Leading dims broadcast as in torch (2-D inputs, one shared key/value head; see _broadcast)."""
    query, key, value, enable_gqa, out_shape = _broadcast(query, key, value, enable_gqa)
    hq, hkv = query.shape[-3], key.shape[-3]
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    k, v = key, value
    if hq != hkv:
        k, v = k.repeat_interleave(hq // hkv, -3), v.repeat_interleave(hq // hkv, -3)
    s = torch.matmul(query.to(acc), k.to(acc).transpose(-2, -1))
    s = s * _scale_per_head(query, scale, temperature, hq).to(acc).view(hq, 1, 1)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.to(acc)
    if is_causal:
        s = s.masked_fill(~_causal_keep(s.shape[-2], s.shape[-1], causal_alignment, s.device), float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_zeros(*s.shape[:-1], 1)  # no keys: output 0
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # all-masked rows: exp(-inf) = 0
    e = torch.exp(s - m)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    if dropout_p > 0:
        p = torch.dropout(p, dropout_p, train=True)
    return torch.matmul(p.to(value.dtype), v).reshape(out_shape[:-1] + (value.shape[-1],))


def _torch_path(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, temperature,
                causal_alignment):
    """The reference *path* (CPU default): torch's own SDPA, with dlkern's extras translated into
    its arguments (a per-head temperature scales q; causal + mask or bottom-right become a mask)."""
    hq = query.shape[-3]
    if isinstance(temperature, Tensor):
        query = query * _scale_per_head(query, scale, temperature, hq).to(query.dtype).view(hq, 1, 1)
        scale = 1.0
    elif temperature != 1.0:
        scale = (scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])) / temperature
    lq, lk = query.shape[-2], key.shape[-2]
    if is_causal and (attn_mask is not None or (causal_alignment == "bottom_right" and lq != lk)):
        keep = _causal_keep(lq, lk, causal_alignment, query.device)
        attn_mask = keep if attn_mask is None else (
            attn_mask & keep if attn_mask.dtype == torch.bool else attn_mask.masked_fill(~keep, float("-inf")))
        is_causal = False
    return TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


# ---------------------------------------------------------------------------------------------
# Checks and the public function
# ---------------------------------------------------------------------------------------------
def _check(query, key, value, attn_mask, dropout_p, scale, enable_gqa, temperature, causal_alignment):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else ""))
        if t.dim() < 3:
            raise ValueError(f"{name} must have at least 3 dims (*, heads, length, head_dim); got shape {list(t.shape)}")
    if not (key.dtype == value.dtype == query.dtype):
        raise ValueError(f"query, key and value must have the same dtype; got {query.dtype}, {key.dtype}, {value.dtype}")
    if key.shape[:-2] != value.shape[:-2] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must agree in every dim but the last; got {list(key.shape)} and {list(value.shape)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must have the same head dim; got {query.shape[-1]} and {key.shape[-1]}")
    hq, hkv = query.shape[-3], key.shape[-3]
    if hq != hkv and not (enable_gqa and hq % hkv == 0):
        raise ValueError(f"query has {hq} heads and key/value {hkv}: that needs enable_gqa=True and "
                         f"query heads divisible by key/value heads")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1]; got {dropout_p!r}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None; got {type(scale).__name__}")
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}; got {causal_alignment!r}")
    if isinstance(temperature, Tensor):
        if temperature.numel() != hq or not temperature.is_floating_point():
            raise ValueError(f"temperature must be a float or a floating tensor of {hq} values (one per "
                             f"query head); got shape {list(temperature.shape)}, dtype {temperature.dtype}")
    elif not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a positive float or a per-head tensor; got {temperature!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor) or not (attn_mask.dtype == torch.bool or attn_mask.is_floating_point()):
            raise TypeError("attn_mask must be a bool tensor (True = attend) or a float tensor added to the scores")
        target = (*query.shape[:-1], key.shape[-2])
        try:
            torch.broadcast_shapes(attn_mask.shape, target)
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {list(attn_mask.shape)} does not broadcast to {list(target)}") from None


def _supports(backend, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False, **kwargs):
    reasons = []
    if query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        reasons.append(f"dtype {query.dtype} is not supported (float32, float16, bfloat16)")
    if value.shape[-1] != query.shape[-1]:
        reasons.append(f"value head dim {value.shape[-1]} differs from query's {query.shape[-1]}")
    if query.shape[-1] > HEAD_DIM_MAX:
        reasons.append(f"head dim {query.shape[-1]} > {HEAD_DIM_MAX}")
    return reasons


def _to_bias(attn_mask, shape):
    """The mask as an fp32 additive bias expanded (stride 0, not copied) to (B, Hq, Lq, Lk)."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=torch.float32, device=attn_mask.device)
        bias = bias.masked_fill(~attn_mask, float("-inf"))
    else:
        bias = attn_mask.float()
    while bias.dim() < len(shape):
        bias = bias.unsqueeze(0)
    return bias.expand(shape)


@follows_autocast(LOWER)
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, temperature=1.0, causal_alignment: str = "top_left",
                                 backend: Optional[str] = None, deterministic: Optional[bool] = None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` plus ``temperature`` and
    ``causal_alignment`` (see the module docstring). query (*, Hq, Lq, D), key/value (*, Hkv, Lk, D)
    -> (*, Hq, Lq, D). ``deterministic=True`` (or ``torch.use_deterministic_algorithms(True)``)
    makes the Triton backward bitwise reproducible (a separate dQ pass instead of fp32 atomics)."""
    query, key, value, enable_gqa, out_shape = _broadcast(query, key, value, enable_gqa)
    if isinstance(dropout_p, (int, float)) and dropout_p == 1.0:
        # torch drops every weight: zeros, with zero gradients for query, key and value
        _check(query, key, value, attn_mask, 0.0, scale, enable_gqa, temperature, causal_alignment)
        zero = (query.sum() + key.sum() + value.sum()) * 0.0
        return zero.expand(out_shape[:-1] + (value.shape[-1],)).contiguous()
    _check(query, key, value, attn_mask, dropout_p, scale, enable_gqa, temperature, causal_alignment)
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, temperature,
                      causal_alignment, backend, bool(deterministic)).reshape(out_shape[:-1] + (value.shape[-1],))


def _broadcast(query, key, value, enable_gqa):
    """torch's broadcasting of SDPA's leading dims, made explicit: inputs of 2 dims (L, E) or of
    different ranks, batch dims of size 1, and one key/value head shared by all query heads (or one
    query head against several) without ``enable_gqa``. Returns views of 3 dims or more with equal batch
    dims, the ``enable_gqa`` that serves them, and the output shape torch gives."""
    if not all(isinstance(t, Tensor) for t in (query, key, value)):
        return query, key, value, enable_gqa, tuple(getattr(query, "shape", ()))
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims (*, length, head_dim); got shape {list(t.shape)}")
    rank = max(query.dim(), key.dim(), value.dim())
    out_rank = rank
    q, k, v = (t.reshape((1,) * (max(rank, 3) - t.dim()) + tuple(t.shape)) for t in (query, key, value))
    try:
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except RuntimeError:
        raise ValueError(f"the batch dims of query {list(query.shape)}, key {list(key.shape)} and value "
                         f"{list(value.shape)} do not broadcast") from None
    hq, hkv = q.shape[-3], k.shape[-3]
    if hq != hkv and not enable_gqa:
        if hkv == 1:
            enable_gqa = True  # one shared key/value head: exactly grouped-query attention
        elif hq == 1:
            q = q.expand(*q.shape[:-3], hkv, *q.shape[-2:])
    q, k, v = (t.expand(*batch, *t.shape[-3:]) for t in (q, k, v))
    out_shape = (*batch, q.shape[-3], q.shape[-2], q.shape[-1])
    return q, k, v, enable_gqa, out_shape[len(out_shape) - out_rank:]


def _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, temperature,
               causal_alignment, backend, deterministic=False):
    args = (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    chosen = choose(ATTENTION, args, {}, backend)
    if chosen == "reference" and _backend.forward_ad_active([t for t in args if isinstance(t, Tensor)]):
        # torch's SDPA has no forward-AD formula on CPU; the explicit math has one
        return attention_ref(*args, temperature=temperature, causal_alignment=causal_alignment)
    if chosen == "reference":
        return _torch_path(*args, temperature, causal_alignment)
    *batch, hq, lq, d = query.shape
    hkv, lk = key.shape[-3], key.shape[-2]
    q = query.reshape(-1, hq, lq, d)
    k, v = key.reshape(-1, hkv, lk, d), value.reshape(-1, hkv, lk, d)
    bias = _to_bias(attn_mask, (*batch, hq, lq, lk))
    if bias is not None and bias.dim() != 4:
        bias = bias.reshape(-1, hq, lq, lk)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item()) if dropout_p > 0 else 0
    scales = _scale_per_head(query, scale, temperature, hq)
    out, _ = attention_fwd_op(q, k, v, bias, scales, float(dropout_p), seed, bool(is_causal),
                              causal_alignment == "bottom_right", deterministic, chosen)
    return out.reshape(*batch, hq, lq, d)


# ---------------------------------------------------------------------------------------------
# Registry entry
# ---------------------------------------------------------------------------------------------
def _samples(device, dtype):
    gen = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    qkv = lambda b, hq, hkv, lq, lk, d: (r(b, hq, lq, d), r(b, hkv, lk, d), r(b, hkv, lk, d))  # noqa: E731
    yield Sample("basic", qkv(2, 3, 3, 17, 17, 16), {}, (0, 1, 2))
    yield Sample("causal_odd", (*qkv(1, 2, 2, 37, 37, 32), None, 0.0, True), {}, (0, 1, 2))
    yield Sample("cross_lq9_lk33_d64", qkv(2, 2, 2, 9, 33, 64), {}, (0, 1, 2))
    yield Sample("gqa_causal", (*qkv(1, 4, 2, 20, 20, 16), None, 0.0, True, None, True), {}, (0, 1, 2))
    yield Sample("mqa_bottom_right_d80", (*qkv(1, 2, 1, 5, 23, 80), None, 0.0, True, None, True),
                 {"causal_alignment": "bottom_right"}, (0, 1, 2))
    pad = torch.ones(2, 1, 1, 19, dtype=torch.bool, device=device)
    pad[0, ..., 15:] = False
    yield Sample("key_padding_bool", (*qkv(2, 2, 2, 11, 19, 32), pad), {}, (0, 1, 2))
    yield Sample("bias_grad_scale", (*qkv(2, 3, 3, 13, 13, 16), r(1, 3, 13, 13), 0.0, False, 0.3),
                 {}, (0, 1, 2, 3))
    yield Sample("batch1_len1_d96", qkv(1, 1, 1, 1, 1, 96), {}, (0, 1, 2))
    yield Sample("d256", qkv(1, 1, 1, 8, 8, 256), {}, (0, 1, 2))
    q, k, v = (t.transpose(1, 2) for t in (r(2, 12, 2, 16), r(2, 12, 2, 16), r(2, 12, 2, 16)))
    yield Sample("strided_bshd_view", (q, k, v), {}, (0, 1, 2))
    # torch's broadcasting: a 3-D query against 4-D key/value, one key/value head for several query
    # heads without enable_gqa, 2-D (L, E) inputs
    yield Sample("q3d_kv4d", (r(2, 7, 16), r(3, 2, 9, 16), r(3, 2, 9, 16)), {}, (0, 1, 2))
    yield Sample("one_kv_head_no_gqa", (r(2, 3, 6, 16), r(2, 1, 10, 16), r(2, 1, 10, 16)), {}, (0, 1, 2))
    yield Sample("two_d_causal", (r(12, 16), r(12, 16), r(12, 16), None, 0.0, True), {}, (0, 1, 2))
    yield Sample("zero_keys", qkv(1, 2, 2, 3, 0, 16), {}, (0, 1, 2))
    yield Sample("empty_batch", qkv(0, 2, 2, 5, 5, 16), {}, (0, 1, 2))


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    shapes = [(1, 4, 256, 64, True)] if device.type == "cpu" else (
        [(4, 16, 2048, 64, True)] if quick else
        [(4, 16, 2048, 64, False), (4, 16, 2048, 64, True), (2, 16, 4096, 128, True), (8, 12, 1024, 64, False)])
    for b, h, n, d, causal in shapes:
        q, k, v = (torch.randn(b, h, n, d, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        yield Sample(f"b{b}h{h}n{n}d{d}" + ("_causal" if causal else ""), (q, k, v, None, 0.0, causal), {}, (0, 1, 2))


def _cost(sample):
    q, k, v, _, out_shape = _broadcast(*sample.args[:3], False)
    causal = len(sample.args) > 5 and sample.args[5]
    *_, lq, d = out_shape
    b, hq = math.prod(out_shape[:-3]), (out_shape[-3] if len(out_shape) > 2 else 1)
    lk = k.shape[-2]
    flops = 4 * b * hq * lq * lk * d * (0.5 if causal else 1.0)
    s = q.element_size()
    q0, k0, v0 = sample.args[:3]  # the bytes of the tensors as given (broadcast dims are not read twice)
    io = (q0.numel() + math.prod(out_shape) + k0.numel() + v0.numel()) * s
    # backward minimum: read q, k, v, o, dO and write dq, dk, dv, each once (2 x io). K and V read
    # a second time (a separate dQ kernel) is the deterministic path's extra, not the minimum.
    return Cost(fwd_bytes=io, bwd_bytes=2 * io, fwd_flops=flops, bwd_flops=2.5 * flops)


ATTENTION = register_op(OpSpec(
    name="scaled_dot_product_attention", family="attention", fn=scaled_dot_product_attention,
    reference=attention_ref, supports=_supports, samples=_samples, bench_cases=_bench_cases,
    cost=_cost, torch_equivalent=TORCH_SDPA, peers={"flash_attn": flash_attn_sdpa},
    launchers=("attention_fwd", "attention_bwd"), uses_tl_dot=True, floor_factor=4.0,
))
