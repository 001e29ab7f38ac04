"""Decode attention over a paged KV cache (``flash_attn_with_kvcache``'s cache layout, forward only):
a serving batch whose sequences keep their keys and values in fixed-size pages of one shared pool.

q (B, Lq, Hq, D) for Lq = 1 (decode) to a few (speculative decoding, chunked prefill tails);
k_cache/v_cache (num_pages, page_size, Hkv, D), Hkv dividing Hq; block_table (B, max_pages) int32
names the pages of each sequence in order; cache_seqlens (B,) int32 the number of cached tokens L of
each sequence, the new queries' own keys included (write them into the cache first). The queries
are the last Lq positions: ``causal=True`` lets query i see keys j <= i + L - Lq (bottom-right, as
``flash_attn_varlen``). A query that sees no key (L = 0) returns zeros. Only the pages a sequence's
first L tokens occupy are read.
"""
from __future__ import annotations

import random
from typing import Optional

import torch
from torch import Tensor

from dlkern import backend as _backend
from dlkern.autocast import LOWER, follows_autocast
from dlkern.backend import choose
from dlkern.ops.attention import HEAD_DIM_MAX, attention_ref
from dlkern.ops.attention_varlen import traced, head_scales
from dlkern.registry import Cost, OpSpec, Sample, register_op

ROWS_MAX = 128   # Lq x query heads per kv head: one program holds them all


@torch.library.custom_op("dlkern::attention_paged_fwd", mutates_args=())
def attention_paged_fwd_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, cache_seqlens: Tensor,
                           scale: Tensor, is_causal: bool, num_splits: int, backend: str) -> Tensor:
    return _backend.launchers(backend, q.device).attention_paged_fwd(
        q, k_cache, v_cache, block_table, cache_seqlens, scale, is_causal, num_splits)


@attention_paged_fwd_op.register_fake
def _(q, k_cache, v_cache, block_table, cache_seqlens, scale, is_causal, num_splits, backend):
    return q.new_empty(q.shape)


def gather_cache(cache, block_table_row, length):
    """The first ``length`` tokens of one sequence from a paged cache: (length, Hkv, D)."""
    pos = torch.arange(length, device=cache.device)
    page_size = cache.shape[1]
    return cache[block_table_row[pos // page_size].long(), pos % page_size]


def flash_attn_with_kvcache_ref(q, k_cache, v_cache, cache_seqlens, block_table, *, causal=False, scale=None,
                                num_splits=0):
    """Reference: each sequence's keys gathered from its pages, then ``attention_ref`` (bottom-right).
    ``num_splits`` (a kernel parameter) changes nothing here."""
    outs = []
    for b, length in enumerate(cache_seqlens.tolist()):
        k, v = (gather_cache(c, block_table[b], length).transpose(0, 1) for c in (k_cache, v_cache))
        outs.append(attention_ref(q[b].transpose(0, 1), k, v, is_causal=causal, scale=scale, enable_gqa=True,
                                  causal_alignment="bottom_right").transpose(0, 1))
    return torch.stack(outs) if outs else q.new_zeros(q.shape)


def _check(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    if not isinstance(q, Tensor) or q.dim() != 4 or not q.is_floating_point():
        raise ValueError("q must be a floating-point tensor (batch, seqlen_q, heads, head_dim)")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, Tensor) or t.dim() != 4 or t.dtype != q.dtype:
            raise ValueError(f"{name} must be a (num_pages, page_size, kv_heads, head_dim) tensor of q's dtype")
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != q.shape[3]:
        raise ValueError(f"k_cache {list(k_cache.shape)} and v_cache {list(v_cache.shape)} must have one shape "
                         f"with q's head dim {q.shape[3]}")
    if q.shape[2] % k_cache.shape[2]:
        raise ValueError(f"q has {q.shape[2]} heads and the cache {k_cache.shape[2]}: the query heads must be a multiple")
    B = q.shape[0]
    if not isinstance(block_table, Tensor) or block_table.dtype != torch.int32 or block_table.dim() != 2 \
            or block_table.shape[0] != B:
        raise ValueError(f"block_table must be an int32 tensor (batch = {B}, max_pages)")
    if not isinstance(cache_seqlens, Tensor) or cache_seqlens.dtype != torch.int32 or cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must be an int32 tensor of shape ({B},)")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None; got {type(scale).__name__}")
    if traced((q, cache_seqlens, block_table)):
        return
    capacity = block_table.shape[1] * k_cache.shape[1]
    lengths = cache_seqlens.tolist()
    if lengths and (min(lengths) < 0 or max(lengths) > capacity):
        raise ValueError(f"cache_seqlens must lie in [0, max_pages x page_size = {capacity}]; got {lengths}")
    used = [block_table[b, :-(-n // k_cache.shape[1])] for b, n in enumerate(lengths) if n]
    if used:
        pages = torch.cat(used)
        if pages.min().item() < 0 or pages.max().item() >= k_cache.shape[0]:
            raise ValueError(f"block_table names pages outside [0, {k_cache.shape[0]}) for cached tokens")


def _supports(backend, q, k_cache, v_cache, cache_seqlens, block_table, *args, **kwargs):
    reasons = []
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        reasons.append(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    if q.shape[-1] > HEAD_DIM_MAX:
        reasons.append(f"head dim {q.shape[-1]} > {HEAD_DIM_MAX}")
    rows = q.shape[1] * (q.shape[2] // max(k_cache.shape[2], 1))
    if rows > ROWS_MAX:
        reasons.append(f"seqlen_q x (query heads per kv head) = {rows} > {ROWS_MAX} (a decode kernel; use "
                       "flash_attn_varlen for prefill)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache)):
        reasons.append("the paged decode kernels are forward-only and an input requires grad")
    return reasons


@follows_autocast(LOWER)
def flash_attn_with_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor,
                            block_table: Tensor, *, causal: bool = False, scale: Optional[float] = None,
                            num_splits: int = 0, backend: Optional[str] = None) -> Tensor:
    """Decode attention over a paged KV cache (see the module docstring) -> (B, Lq, Hq, D).
    ``num_splits``: key-range splits per (sequence, kv head); 0 chooses them to fill the GPU."""
    _check(q, k_cache, v_cache, cache_seqlens, block_table, scale)
    args = (q, k_cache, v_cache, cache_seqlens, block_table)
    chosen = choose(FLASH_ATTN_WITH_KVCACHE, args, {}, backend)
    if chosen == "reference":
        return flash_attn_with_kvcache_ref(*args, causal=causal, scale=scale)
    return attention_paged_fwd_op(q, k_cache, v_cache, block_table, cache_seqlens,
                                  head_scales(q.shape[2], q.shape[3], scale, q.device), bool(causal),
                                  int(num_splits), chosen)


# ---------------------------------------------------------------------------------------------
# Registry entry
# ---------------------------------------------------------------------------------------------
def paged_cache(lengths, lq, hq, hkv, d, page_size, device, dtype, gen, extra_pages=3):
    """q and a paged cache holding sequences of the given lengths in shuffled pages (spare pages
    and unused block-table slots point at nothing valid: NaN pages, page index -1)."""
    r = lambda *s: torch.randn(s, generator=gen).to(dtype)  # noqa: E731
    pages_per = [-(-n // page_size) for n in lengths]
    num_pages = sum(pages_per) + extra_pages
    order = list(range(num_pages))
    random.Random(hash((gen.initial_seed(), *lengths, lq, hq, page_size))).shuffle(order)  # no tensor read: perf fakes them
    k_cache = torch.full((num_pages, page_size, hkv, d), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    table = torch.full((len(lengths), max(max(pages_per, default=0), 1) + 1), -1, dtype=torch.int32)
    keys, values, used = [], [], 0
    for b, n in enumerate(lengths):
        k, v = r(n, hkv, d), r(n, hkv, d)
        keys.append(k), values.append(v)
        for p in range(pages_per[b]):
            page = int(order[used])
            used += 1
            table[b, p] = page
            rows = slice(p * page_size, min(n, (p + 1) * page_size))
            k_cache[page, :rows.stop - rows.start] = k[rows]
            v_cache[page, :rows.stop - rows.start] = v[rows]
    q = r(len(lengths), lq, hq, d)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    to = lambda t: t.to(device)  # noqa: E731
    return (to(q), to(k_cache), to(v_cache), to(seqlens), to(table)), keys, values


def _samples(device, dtype):
    gen = torch.Generator().manual_seed(21)
    c = lambda *a, **k: paged_cache(*a, device=device, dtype=dtype, gen=gen, **k)[0]  # noqa: E731
    yield Sample("decode_gqa", c([37, 5, 16], 1, 4, 2, 16, 8), {})
    yield Sample("lq3_causal_empty_seq", c([0, 21, 2], 3, 2, 2, 32, 16), {"causal": True})
    yield Sample("batch1_page5_d40_splits", c([29], 2, 2, 1, 40, 5), {"causal": True, "num_splits": 3})
    yield Sample("mqa_scale", c([9, 40], 1, 4, 1, 16, 16), {"scale": 0.25})


def _bench_cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    if device.type == "cpu":
        shapes = [([300, 77, 512], 1, 8, 2, 64, 16)]
    else:
        lens = [4000, 1500, 8000, 300, 2500, 6000, 900, 3100] * 4   # 32 sequences, 105k cached tokens
        shapes = [(lens, 1, 32, 8, 128, 64)] if quick else [
            (lens, 1, 32, 8, 128, 64), (lens, 4, 32, 8, 128, 64), (lens[:2], 1, 16, 16, 64, 16)]
    for lens, lq, hq, hkv, d, page in shapes:
        args, _, _ = paged_cache(lens, lq, hq, hkv, d, page, device, dtype, gen, extra_pages=0)
        sample = Sample(f"b{len(lens)}t{sum(lens)}q{lq}h{hq}kv{hkv}d{d}p{page}", args, {"causal": lq > 1})
        sample.lengths = lens   # read by the cost without the tensors (dlkern perf fakes them)
        yield sample


def _cost(sample):
    q, k_cache, _, seqlens, _ = sample.args
    tokens = sum(getattr(sample, "lengths", None) or seqlens.tolist())
    s = q.element_size()
    kv = 2 * tokens * k_cache.shape[2] * k_cache.shape[3] * s
    flops = 4 * tokens * q.shape[1] * q.shape[2] * q.shape[3]
    return Cost(fwd_bytes=kv + 2 * q.numel() * s, bwd_bytes=0, fwd_flops=flops)


FLASH_ATTN_WITH_KVCACHE = register_op(OpSpec(
    name="flash_attn_with_kvcache", family="attention", fn=flash_attn_with_kvcache,
    reference=flash_attn_with_kvcache_ref, backends=("triton", "cuda"), auto_order=("triton", "cuda"),
    supports=_supports, samples=_samples, bench_cases=_bench_cases, cost=_cost, launchers=("attention_paged_fwd",),
    uses_tl_dot=True, floor_factor=4.0,
))
