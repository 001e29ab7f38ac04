"""Variable-length (packed) attention, FlashAttention's ``flash_attn_varlen_func`` interface: the
sequences of a batch are concatenated along the token dim, no padding exists and none is computed.

q (total_q, Hq, D), k/v (total_k, Hkv, D) with Hkv dividing Hq (GQA/MQA); ``cu_seqlens_q/k`` (B + 1,)
int32 prefix sums of the lengths (sequence s owns rows [cu[s], cu[s + 1])); ``max_seqlen_q/k`` their
longest lengths (they size the kernel grids). Sequences of length 0 are allowed on either side.

``causal=True`` aligns the diagonal bottom-right per sequence, as FlashAttention >= 2.1: query i of
a sequence with Lq queries and Lk keys sees keys j <= i + Lk - Lq (the queries are the last Lq
positions: chunked prefill, decoding). A query that sees no key (Lk = 0, or i + Lk - Lq < 0) returns
zeros and gets zero gradients, like ``scaled_dot_product_attention``'s fully masked rows.

The arguments are checked on the host (one device-to-host copy of cu_seqlens): lengths that do not
match the tensors or exceed ``max_seqlen`` would otherwise give a silent wrong answer. The check
is skipped while tracing (fake tensors, torch.compile) and during CUDA graph capture.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import torch
from torch import Tensor

from dlkern import backend as _backend
from dlkern.autocast import LOWER, follows_autocast
from dlkern.backend import choose
from dlkern.ops.attention import HEAD_DIM_MAX, attention_ref
from dlkern.registry import Cost, OpSpec, Sample, register_op


SEQUENCES_MAX = 65535   # the kernels' grids have one dimension of sequences


# ---------------------------------------------------------------------------------------------
# Custom ops around the launchers
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("dlkern::attention_varlen_fwd", mutates_args=())
def attention_varlen_fwd_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                            max_seqlen_q: int, max_seqlen_k: int, scale: Tensor, is_causal: bool,
                            deterministic: bool, backend: str) -> tuple[Tensor, Tensor]:
    # deterministic: read by the backward only (saved with the forward's inputs)
    return _backend.launchers(backend, q.device).attention_varlen_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal)


@torch.library.custom_op("dlkern::attention_varlen_bwd", mutates_args=())
def attention_varlen_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                            cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                            scale: Tensor, is_causal: bool, deterministic: bool,
                            backend: str) -> tuple[Tensor, Tensor, Tensor]:
    # The CUDA backward has one (deterministic) path; the Triton one takes the switch.
    extra = {} if backend == "cuda" else {"deterministic": deterministic}
    return _backend.launchers(backend, q.device).attention_varlen_bwd(
        do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal, **extra)


@attention_varlen_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal, deterministic, backend):
    total, hq, d = q.shape
    return q.new_empty(total, hq, d), q.new_empty(hq, total, dtype=torch.float32)


@attention_varlen_bwd_op.register_fake
def _(do, q, k, v, o, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, is_causal,
      deterministic, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, is_causal, deterministic, backend = inputs
    ctx.save_for_backward(q, k, v, cu_q, cu_k, scale, *output)
    ctx.args = (max_q, max_k)
    ctx.is_causal, ctx.deterministic, ctx.backend = is_causal, deterministic, backend


def _backward(ctx, do, _dlse):
    q, k, v, cu_q, cu_k, scale, o, lse = ctx.saved_tensors
    deterministic = ctx.deterministic or torch.are_deterministic_algorithms_enabled()
    dq, dk, dv = attention_varlen_bwd_op(do, q, k, v, o, lse, cu_q, cu_k, *ctx.args, scale, ctx.is_causal,
                                         deterministic, ctx.backend)
    return dq, dk, dv, None, None, None, None, None, None, None, None


attention_varlen_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Reference: one dense attention per sequence
# ---------------------------------------------------------------------------------------------
def flash_attn_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                          causal=False, scale=None):
    """Reference (the oracle of the tests): ``attention_ref`` on each unpacked sequence, causal
    bottom-right, concatenated. Differentiable; fp64 inputs give an fp64 answer."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for s in range(len(cq) - 1):
        qs, ks, vs = (t[c[s]:c[s + 1]].transpose(0, 1) for t, c in ((q, cq), (k, ck), (v, ck)))
        outs.append(attention_ref(qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=True,
                                  causal_alignment="bottom_right").transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(0, q.shape[1], v.shape[2])


# ---------------------------------------------------------------------------------------------
# Checks and the public function
# ---------------------------------------------------------------------------------------------
def traced(tensors) -> bool:
    """No values to read: fake tensors (dlkern perf, torch.compile's tracing) or a CUDA graph capture."""
    from torch._subclasses.fake_tensor import is_fake
    if torch.compiler.is_compiling() or any(is_fake(t) for t in tensors):
        return True
    return any(t.is_cuda for t in tensors) and torch.cuda.is_current_stream_capturing()


def _check(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 3:
            raise ValueError(f"{name} must be a floating-point tensor (total, heads, head_dim); got "
                             + (f"shape {list(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__))
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must have the same dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {list(k.shape)} and {list(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must have the same head dim; got {q.shape[2]} and {k.shape[2]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads and k/v {k.shape[1]}: the query heads must be a multiple")
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(cu, Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"{name} must be a 1-D int32 tensor of batch + 1 offsets")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device}, q on {q.device}")
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1); got "
                         f"{cu_q.numel()} and {cu_k.numel()}")
    for name, m in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if not isinstance(m, int) or m < 0:
            raise ValueError(f"{name} must be a non-negative int; got {m!r}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None; got {type(scale).__name__}")
    if traced((q, cu_q, cu_k)):
        return
    for name, cu, total, m in (("q", cu_q, q.shape[0], max_q), ("k", cu_k, k.shape[0], max_k)):
        offsets = cu.tolist()
        lengths = [b - a for a, b in zip(offsets, offsets[1:])]
        if offsets[0] != 0 or offsets[-1] != total or min(lengths, default=0) < 0:
            raise ValueError(f"cu_seqlens_{name} must rise from 0 to {name}.shape[0] = {total}; got {offsets}")
        if max(lengths, default=0) > m:
            raise ValueError(f"max_seqlen_{name} = {m} but a sequence has {max(lengths)} tokens")


def head_scales(heads, head_dim, scale, device):
    """The kernels' (heads,) fp32 softmax scale: ``scale`` or 1/sqrt(head_dim) for every head."""
    return torch.full((heads,), scale if scale is not None else 1.0 / math.sqrt(head_dim), dtype=torch.float32,
                      device=device)


def _supports(backend, q, k, v, *args, **kwargs):
    reasons = []
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        reasons.append(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    if q.shape[-1] > HEAD_DIM_MAX:
        reasons.append(f"head dim {q.shape[-1]} > {HEAD_DIM_MAX}")
    cu_q = args[0] if args else kwargs.get("cu_seqlens_q")
    if isinstance(cu_q, Tensor) and cu_q.numel() - 1 > SEQUENCES_MAX:
        reasons.append(f"{cu_q.numel() - 1} sequences > {SEQUENCES_MAX} (one grid dimension)")
    return reasons


@follows_autocast(LOWER)
def flash_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                      scale: Optional[float] = None, backend: Optional[str] = None,
                      deterministic: Optional[bool] = None) -> Tensor:
    """Attention over packed sequences (see the module docstring) -> (total_q, Hq, D).
    ``deterministic=True`` (or ``torch.use_deterministic_algorithms(True)``) makes the Triton
    backward bitwise reproducible."""
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    chosen = choose(FLASH_ATTN_VARLEN, args, {}, backend)
    if chosen == "reference":
        return flash_attn_varlen_ref(*args, causal=causal, scale=scale)
    out, _ = attention_varlen_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                     head_scales(q.shape[1], q.shape[2], scale, q.device),
                                     bool(causal), bool(deterministic), chosen)
    return out


# ---------------------------------------------------------------------------------------------
# Registry entry
# ---------------------------------------------------------------------------------------------
def packed(lengths_q, lengths_k, hq, hkv, d, device, dtype, gen):
    """Random packed q, k, v and their cu_seqlens / max_seqlen for the given lengths."""
    r = lambda *s: torch.randn(s, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    cu = lambda ls: torch.tensor([0, *itertools.accumulate(ls)], dtype=torch.int32, device=device)  # noqa: E731
    q, k, v = r(sum(lengths_q), hq, d), r(sum(lengths_k), hkv, d), r(sum(lengths_k), hkv, d)
    return q, k, v, cu(lengths_q), cu(lengths_k), max(lengths_q, default=0), max(lengths_k, default=0)


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(11)
    p = lambda lq, lk, hq, hkv, d: packed(lq, lk, hq, hkv, d, device, dtype, gen)  # noqa: E731
    yield Sample("small", p([3, 4], [3, 4], 2, 2, 16), {}, (0, 1, 2))
    yield Sample("odd_gqa_causal_empty_seq", p([5, 0, 13, 1], [5, 0, 13, 1], 4, 2, 16), {"causal": True}, (0, 1, 2))
    # Lq != Lk per sequence, bottom-right: 7 queries on 4 keys (3 rows see nothing), 0 queries on 5
    # keys (zero dK/dV), a sequence with no keys (zero output)
    yield Sample("cross_bottom_right", p([3, 7, 0, 2], [9, 4, 5, 0], 2, 1, 32), {"causal": True}, (0, 1, 2))
    yield Sample("batch1_d40_scale", p([19], [19], 2, 2, 40), {"scale": 0.3}, (0, 1, 2))
    # a view into a wider buffer (token stride 3·H·D): what qkv-packed projections hand over
    q, k, v, cq, ck, mq, mk = p([6, 11], [6, 11], 3, 3, 16)
    qkv = torch.stack([q, k, v], dim=1)
    yield Sample("strided_qkv_view", (qkv[:, 0], qkv[:, 1], qkv[:, 2], cq, ck, mq, mk), {"causal": True}, (0, 1, 2))


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    # lengths of a realistic packed batch: a spread, not powers of two
    if device.type == "cpu":
        shapes = [([200, 37, 111], 4, 4, 64, True)]
    else:
        lens = [1900, 411, 3000, 777, 1024, 130, 605, 345]   # 8192 tokens
        shapes = [(lens, 16, 16, 64, True)] if quick else [
            (lens, 16, 16, 64, True), (lens, 16, 16, 128, True), (lens, 32, 8, 128, True), (lens, 16, 16, 64, False)]
    for lens, hq, hkv, d, causal in shapes:
        args = packed(lens, lens, hq, hkv, d, device, dtype, gen)
        name = f"n{len(lens)}t{sum(lens)}h{hq}kv{hkv}d{d}" + ("_causal" if causal else "")
        sample = Sample(name, args, {"causal": causal}, (0, 1, 2))
        sample.lengths = (lens, lens)   # read by the cost without the tensors (dlkern perf fakes them)
        yield sample


def visible_pairs(lengths_q, lengths_k, causal):
    """(query, key) pairs that attention computes: per sequence Lq·Lk, or bottom-right causal."""
    total = 0
    for lq, lk in zip(lengths_q, lengths_k):
        if not causal:
            total += lq * lk
        else:  # row i sees min(Lk, max(0, i + Lk - Lq + 1)) keys
            total += sum(min(lk, max(0, i + lk - lq + 1)) for i in range(lq))
    return total


def sequence_lengths(sample):
    """(query lengths, key lengths) of a sample's packed batch (a bench case carries them: under
    ``dlkern perf`` its tensors are fake and hold no values)."""
    if hasattr(sample, "lengths"):
        return sample.lengths
    def lengths(cu):
        c = cu.tolist()
        return [b - a for a, b in zip(c, c[1:])]
    return lengths(sample.args[3]), lengths(sample.args[4])


def _cost(sample):
    q, k, v = sample.args[:3]
    lengths_q, lengths_k = sequence_lengths(sample)
    causal = sample.kwargs.get("causal", False)
    pairs = visible_pairs(lengths_q, lengths_k, causal)
    flops = 4 * q.shape[1] * q.shape[2] * pairs
    # q rows that see no key (no keys, or above the bottom-right diagonal) need not be read; o is
    # written for every row
    seeing = sum(0 if lk == 0 else (min(lq, lk) if causal else lq) for lq, lk in zip(lengths_q, lengths_k))
    io = (q.numel() + seeing * q.shape[1] * q.shape[2] + k.numel() + v.numel()) * q.element_size()
    # backward minimum: read q, k, v, o, dO, write dq, dk, dv once each (2 x io)
    return Cost(fwd_bytes=io, bwd_bytes=2 * io, fwd_flops=flops, bwd_flops=2.5 * flops)


FLASH_ATTN_VARLEN = register_op(OpSpec(
    name="flash_attn_varlen", family="attention", fn=flash_attn_varlen, reference=flash_attn_varlen_ref,
    backends=("triton", "cuda"), auto_order=("triton", "cuda"), supports=_supports, samples=_samples,
    bench_cases=_bench_cases, cost=_cost, launchers=("attention_varlen_fwd", "attention_varlen_bwd"),
    uses_tl_dot=True, floor_factor=4.0,
))
