"""flash_attn_varlen and flash_attn_with_kvcache. flash_attn_varlen against an independent formulation (one dense attention over all packed tokens
with a block-diagonal, bottom-right causal mask, fp64), memory outside the sequences never read,
the causal convention, the deterministic backward and the argument checks; the paged decode against
attention over the sequences' keys before paging. The registry's samples
(tests/test_ops.py) cover the dtypes against the op's own per-sequence reference."""
import pytest
import torch

import dlkern
from dlkern.backend import availability
from dlkern.ops.attention_paged import flash_attn_with_kvcache, paged_cache
from dlkern.ops.attention_varlen import flash_attn_varlen, packed

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in ("triton", "cuda") if b in dlkern.get_op("flash_attn_varlen").backends]


def _need(backend):
    reasons = availability(backend, DEVICE)
    if reasons:
        pytest.skip("; ".join(reasons))


def _dense_masked(q, k, v, lengths_q, lengths_k, causal, scale):
    """All packed queries against all packed keys; the mask keeps each sequence's own keys (bottom-
    right causal within it). Rows that see no key give 0."""
    seg_q = torch.repeat_interleave(torch.arange(len(lengths_q)), torch.tensor(lengths_q))
    seg_k = torch.repeat_interleave(torch.arange(len(lengths_k)), torch.tensor(lengths_k))
    pos_q = torch.cat([torch.arange(n) for n in lengths_q])
    pos_k = torch.cat([torch.arange(n) for n in lengths_k])
    keep = seg_q[:, None] == seg_k[None, :]
    if causal:
        shift = (torch.tensor(lengths_k) - torch.tensor(lengths_q))[seg_q]
        keep &= pos_k[None, :] <= (pos_q + shift)[:, None]
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    s = s.masked_fill(~keep.to(s.device), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)   # rows with no key: 0
    return torch.einsum("hqk,khd->qhd", p, vv)


def _grads(fn, tensors, cot):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, leaves, cot))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_matches_block_diagonal_dense_attention(backend, causal):
    _need(backend)
    lq, lk = [4, 0, 9, 3, 1], [6, 3, 9, 0, 1]    # Lq < Lk, Lq = 0, Lq = Lk, no keys, single token
    q, k, v, cq, ck, mq, mk = packed(lq, lk, 4, 2, 16, DEVICE, torch.float32, torch.Generator().manual_seed(3))
    cot = torch.randn(q.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got = _grads(lambda a, b, c: flash_attn_varlen(a, b, c, cq, ck, mq, mk, causal=causal, scale=0.7,
                                                   backend=backend), (q, k, v), cot)
    exact = _grads(lambda a, b, c: _dense_masked(a, b, c, lq, lk, causal, 0.7), [t.double() for t in (q, k, v)],
                   cot.double())
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
        torch.testing.assert_close(g.double(), e, atol=2e-5, rtol=2e-5, msg=name)
    no_keys = got[0][sum(lq[:3]):sum(lq[:4])]
    assert no_keys.numel() and no_keys.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_never_reads_outside_the_sequences(backend):
    """q/k/v as views into buffers whose other elements are NaN (an extra head, rows after the last
    sequence): any read of them would turn an output or gradient into NaN."""
    _need(backend)
    lq, lk = [5, 0, 7], [3, 6, 7]
    q, k, v, cq, ck, mq, mk = packed(lq, lk, 2, 1, 16, DEVICE, torch.float32, torch.Generator().manual_seed(5))

    def padded_view(t):
        buf = torch.full((t.shape[0] + 5, t.shape[1] + 1, t.shape[2]), float("nan"), device=DEVICE)
        buf[:t.shape[0], :t.shape[1]] = t
        return buf[:t.shape[0], :t.shape[1]]
    cot = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    fn = lambda a, b, c: flash_attn_varlen(a, b, c, cq, ck, mq, mk, causal=True, backend=backend)  # noqa: E731
    views = [padded_view(t) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    leaves = [t.detach().requires_grad_() for t in views]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, cot)
    want = _grads(fn, (q, k, v), cot)
    for name, g, e in zip(("out", "dq", "dk", "dv"), (out, *grads), want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, e, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_is_bottom_right_per_sequence(backend):
    """2 queries on 5 keys: query 0 sees keys 0..3, query 1 all five (FlashAttention-2's convention).
    4 queries on 2 keys: queries 0 and 1 see nothing (0), query 2 sees key 0, query 3 both."""
    _need(backend)
    q, k, v, cq, ck, mq, mk = packed([2, 4], [5, 2], 1, 1, 16, DEVICE, torch.float32,
                                     torch.Generator().manual_seed(8))
    out = flash_attn_varlen(q, k, v, cq, ck, mq, mk, causal=True, backend=backend)

    def row(qi, ks, vs):
        p = torch.softmax((ks[:, 0] @ qi[0]) / 4.0, dim=0)
        return p @ vs[:, 0]
    torch.testing.assert_close(out[0, 0], row(q[0], k[:4], v[:4]))
    torch.testing.assert_close(out[1, 0], row(q[1], k[:5], v[:5]))
    assert out[2:4].abs().max() == 0
    torch.testing.assert_close(out[4, 0], v[5, 0])
    torch.testing.assert_close(out[5, 0], row(q[5], k[5:7], v[5:7]))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "triton"])
def test_deterministic_backward(backend):
    """The separate dQ pass is bitwise reproducible and agrees with the atomic one."""
    _need(backend)
    args = packed([9, 17], [9, 17], 2, 2, 16, DEVICE, torch.float32, torch.Generator().manual_seed(9))
    cot = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    run = lambda det: _grads(lambda a, b, c: flash_attn_varlen(  # noqa: E731
        a, b, c, *args[3:], causal=True, backend=backend, deterministic=det), args[:3], cot)
    first, second, atomic = run(True), run(True), run(False)
    for a, b, c in zip(first, second, atomic):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c)


def test_argument_checks():
    q, k, v, cq, ck, mq, mk = packed([3, 4], [3, 4], 2, 2, 16, DEVICE, torch.float32, torch.Generator())
    with pytest.raises(ValueError, match="max_seqlen_q = 3 but a sequence has 4"):
        flash_attn_varlen(q, k, v, cq, ck, 3, mk)
    with pytest.raises(ValueError, match="must rise from 0"):
        flash_attn_varlen(q, k, v, cq.flip(0).contiguous(), ck, mq, mk)
    with pytest.raises(ValueError, match="must rise from 0 to q.shape"):
        flash_attn_varlen(q[:-1], k, v, cq, ck, mq, mk)
    with pytest.raises(ValueError, match="int32"):
        flash_attn_varlen(q, k, v, cq.long(), ck, mq, mk)
    with pytest.raises(ValueError, match="multiple"):
        flash_attn_varlen(q, k[:, :1].repeat(1, 3, 1), v[:, :1].repeat(1, 3, 1), cq, ck, mq, mk)


# ---------------------------------------------------------------------------------------------
# Paged-KV decode
# ---------------------------------------------------------------------------------------------
PAGED_BACKENDS = [b for b in ("triton", "cuda") if b in dlkern.get_op("flash_attn_with_kvcache").backends]


@pytest.mark.parametrize("backend", PAGED_BACKENDS)
@pytest.mark.parametrize("lq,causal,splits", [(1, False, 0), (3, True, 1), (3, True, 4)])
def test_paged_decode_matches_contiguous_attention(backend, lq, causal, splits):
    """Against plain softmax attention over each sequence's keys as they were before paging (the
    cache's spare pages are NaN and its unused block-table slots -1: never read)."""
    _need(backend)
    _check_paged(backend, [0, 2, 23, 40], lq, causal, splits, seed=12)


@pytest.mark.parametrize("backend", PAGED_BACKENDS)
@pytest.mark.parametrize("causal,splits", [(False, 1), (True, 3), (False, 0)])
def test_paged_decode_split_over_many_key_tiles(backend, causal, splits):
    """Caches of several key tiles (32 keys on CUDA, 16 under the interpreter) cut into key ranges:
    ranges that see no key (past a sequence's end, an empty sequence) weigh nothing in the merge."""
    _need(backend)
    _check_paged(backend, [0, 5, 97, 150], 2, causal, splits, seed=14)


def _check_paged(backend, lengths, lq, causal, splits, seed):
    args, keys, values = paged_cache(lengths, lq, 4, 2, 16, 8, DEVICE, torch.float32,
                                     torch.Generator().manual_seed(seed))
    got = flash_attn_with_kvcache(*args, causal=causal, num_splits=splits, backend=backend)
    q = args[0].double()
    for b, n in enumerate(lengths):
        k, v = keys[b].double().repeat_interleave(2, 1), values[b].double().repeat_interleave(2, 1)
        s = torch.einsum("qhd,khd->hqk", q[b], k.to(DEVICE)) / 4.0
        if causal:   # the queries are the last lq positions
            s = s.masked_fill(torch.arange(n)[None, :] > torch.arange(lq)[:, None] + n - lq, float("-inf"))
        want = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1).nan_to_num(0.0), v.to(DEVICE))
        torch.testing.assert_close(got[b].double(), want, atol=2e-5, rtol=2e-5)
    assert got[0].abs().max() == 0   # an empty cache: zeros


@pytest.mark.parametrize("backend", PAGED_BACKENDS)
def test_paged_decode_is_forward_only(backend):
    _need(backend)
    args, _, _ = paged_cache([5], 1, 2, 2, 16, 4, DEVICE, torch.float32, torch.Generator().manual_seed(13))
    q = args[0].requires_grad_()
    with pytest.raises(dlkern.BackendError, match="forward-only"):
        flash_attn_with_kvcache(q, *args[1:], backend=backend)


def test_paged_argument_checks():
    (q, kc, vc, lens, table), _, _ = paged_cache([5, 9], 1, 2, 2, 16, 4, DEVICE, torch.float32, torch.Generator())
    with pytest.raises(ValueError, match="cache_seqlens must lie in"):
        flash_attn_with_kvcache(q, kc, vc, lens * 10, table)
    bad = table.clone()
    bad[1, 0] = kc.shape[0]
    with pytest.raises(ValueError, match="names pages outside"):
        flash_attn_with_kvcache(q, kc, vc, lens, bad)
    with pytest.raises(ValueError, match="int32"):
        flash_attn_with_kvcache(q, kc, vc, lens, table.long())
