"""Packed sequences (``seq_idx`` / ``cu_seqlens``) and the initial state of the selective scan,
against independent formulations: per-sequence runs of the unpacked pieces (the oracle on each
sequence alone, the first one from ``initial_state``), and a scan run in two chunks handing its
last state to the second as ``initial_state`` against the one-shot scan. Forward and every
gradient (initial_state's included) on every path: the default CPU path (the C++ kernel), Triton
(interpreted here) and CUDA (the emulation build here)."""
import pytest
import torch

import dlkern
from dlkern.ops.selective_scan import make_inputs, selective_scan, selective_scan_ref
from numerics import assert_close_to_reference

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
CUDA_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # cpu: the emulation build
UNAVAILABLE = {b: "; ".join(dlkern.backend.availability(b, CUDA_DEVICE)) for b in ("triton", "cuda")}
PATHS = [pytest.param(None, id="default"),
         *(pytest.param(b, id=b, marks=pytest.mark.skipif(bool(UNAVAILABLE[b]), reason=UNAVAILABLE[b] or "ok"))
           for b in ("triton", "cuda"))]


def _seq_idx(lengths_per_row):
    """Sequence ids (batch, L) from each row's sequence lengths (ids need not start at 0)."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(r), dtype=torch.int32) + 3 * i, torch.tensor(r))
                        for i, r in enumerate(lengths_per_row)])


def _grads(fn, leaves, seed=7):
    """(outputs, {name: gradient}) of sum(out * cotangent) over the outputs, for the leaves given."""
    leaves = [a.detach().clone().requires_grad_(True) if a is not None else None for a in leaves]
    outs = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    present = [(n, a) for n, a in zip(ARG_NAMES, leaves) if a is not None]
    grads = torch.autograd.grad(outs, [a for _, a in present], cots)
    return outs, {n: g for (n, _), g in zip(present, grads)}


def _per_sequence(lengths_per_row, softplus):
    """The oracle run on each sequence alone (the row's first from initial_state, the others from
    zero), outputs concatenated back into rows; the last state is each row's last sequence's."""
    def run(u, delta, A, B, C, D, z, bias, h0):
        rows, lasts = [], []
        for b, lengths in enumerate(lengths_per_row):
            outs, start = [], 0
            for k, n in enumerate(lengths):
                sl = lambda t: t[b:b + 1, ..., start:start + n] if t is not None and t.dim() >= 3 else t  # noqa: E731
                o, last = selective_scan_ref(sl(u), sl(delta), A, sl(B), sl(C), D, sl(z), bias, softplus, True,
                                             h0[b:b + 1] if (k == 0 and h0 is not None) else None)
                outs.append(o)
                start += n
            rows.append(torch.cat(outs, -1))
            lasts.append(last)
        return torch.cat(rows), torch.cat(lasts)
    return run


# (rows' sequence lengths, N, options): boundaries at a chunk's start (64), inside a thread's
# items, sequences of length 1, a row with one sequence, a boundary past the CUDA backward's
# 128-step block chunk.
CASES = {
    "two_rows": ([[10, 54, 1, 5], [70]], 4, dict()),
    "grouped_boundary_at_64_129": ([[64, 65, 1]], 3, dict(groups=2)),
    "time_invariant_BC": ([[3, 1, 1, 30], [20, 15]], 2, dict(variable_B=False, variable_C=False)),
}


def _inputs(case, dtype=torch.float32, device="cpu"):
    lengths, N, opts = CASES[case]
    L = sum(lengths[0])
    args = list(make_inputs(len(lengths), 4, L, N, seed=L + N, device=device, dtype=dtype, **opts))
    h0 = torch.randn(len(lengths), 4, N, generator=torch.Generator().manual_seed(L)).to(device=device, dtype=dtype)
    return lengths, args + [h0], _seq_idx(lengths).to(device)


@pytest.mark.parametrize("case", CASES)
def test_reference_packed_equals_per_sequence_runs(case):
    lengths, args, seq_idx = _inputs(case, torch.float64)
    packed = lambda *a: selective_scan_ref(*a[:8], True, True, a[8], seq_idx)  # noqa: E731
    outs, grads = _grads(packed, args)
    e_outs, e_grads = _grads(_per_sequence(lengths, True), args)
    for o, e in zip(outs, e_outs):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
    for name in e_grads:
        torch.testing.assert_close(grads[name], e_grads[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("case", CASES)
def test_packed_matches_per_sequence_runs(case, backend):
    lengths, args, seq_idx = _inputs(case, device=CUDA_DEVICE if backend == "cuda" else "cpu")
    kw = dict(backend=backend) if backend else {}
    outs, grads = _grads(lambda *a: selective_scan(*a[:8], True, True, a[8], seq_idx, **kw), args)
    exact = [a.cpu().double() for a in args]
    e_outs, e_grads = _grads(_per_sequence(lengths, True), exact)
    l_outs, l_grads = _grads(lambda *a: selective_scan_ref(*a[:8], True, True, a[8], seq_idx.cpu()),
                             [a.cpu() for a in args])
    for k, (o, e, lo) in enumerate(zip(outs, e_outs, l_outs)):
        assert_close_to_reference(f"output {k}", o, e, lo, torch.float32)
    assert grads.keys() == e_grads.keys()
    for name in grads:
        assert_close_to_reference(f"grad of {name}", grads[name], e_grads[name], l_grads[name], torch.float32)


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("split", [1, 100])
def test_chunked_scan_with_initial_state_equals_one_shot(backend, split):
    """Two calls, the second from the first's last state, = one call: outputs, last state and every
    gradient (the second call's d initial_state flows back into the first call's last state)."""
    device = CUDA_DEVICE if backend == "cuda" else "cpu"
    args = list(make_inputs(2, 3, 150, 5, groups=3, seed=split, device=device))
    args.append(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1)).to(device))
    kw = dict(backend=backend) if backend else {}

    def chunked(*a):
        head = [t[..., :split] if t is not None and t.dim() >= 3 else t for t in a[:8]]
        tail = [t[..., split:] if t is not None and t.dim() >= 3 else t for t in a[:8]]
        o1, h1 = selective_scan(*head, True, True, a[8], **kw)
        o2, h2 = selective_scan(*tail, True, True, h1, **kw)
        return torch.cat([o1, o2], -1), h2

    outs, grads = _grads(chunked, args)
    one_shot = lambda *a: selective_scan_ref(*a[:8], True, True, a[8])  # noqa: E731
    e_outs, e_grads = _grads(one_shot, [a.cpu().double() for a in args])
    l_outs, l_grads = _grads(one_shot, [a.cpu() for a in args])
    for k, (o, e, lo) in enumerate(zip(outs, e_outs, l_outs)):
        assert_close_to_reference(f"output {k}", o, e, lo, torch.float32)
    for name in e_grads:
        assert_close_to_reference(f"grad of {name}", grads[name], e_grads[name], l_grads[name], torch.float32)


def test_cu_seqlens_equals_seq_idx():
    lengths, args, seq_idx = _inputs("grouped_boundary_at_64_129")
    cu = torch.tensor([0, 64, 129, 130], dtype=torch.int32)
    a = selective_scan(*args[:8], True, True, args[8], cu_seqlens=cu)
    b = selective_scan(*args[:8], True, True, args[8], seq_idx)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("bad, match", [
    (dict(seq_idx=torch.zeros(2, 9, dtype=torch.int32)), "seq_idx must be"),
    (dict(seq_idx=torch.zeros(2, 10, dtype=torch.int64)), "int32"),
    (dict(cu_seqlens=torch.tensor([0, 10], dtype=torch.int32)), "batch-1"),
    (dict(initial_state=torch.zeros(2, 3, 4)), "initial_state must be"),
])
def test_bad_packing_arguments_raise(bad, match):
    args = make_inputs(2, 3, 10, 5, seed=3)
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(*args, **bad)


def test_cu_seqlens_must_cover_the_row():
    args = make_inputs(1, 3, 10, 5, seed=3)
    with pytest.raises(ValueError, match="rise from 0"):
        selective_scan(*args, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("cu", [[0, 64, 129, 130], [0, 0, 3, 70, 130]], ids=["chunk_aligned", "empty_and_long"])
def test_varlen_states_equal_per_sequence_final_states(backend, cu):
    """return_varlen_states: every sequence's final state (from the stored chunk states and a
    replay of the steps after them) = the oracle run on that sequence alone."""
    device = CUDA_DEVICE if backend == "cuda" else "cpu"
    args = list(make_inputs(1, 4, 130, 3, groups=2, seed=len(cu), device=device))
    h0 = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(2)).to(device)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=device)
    kw = dict(backend=backend) if backend else {}
    with torch.no_grad():
        out, states = selective_scan(*args, True, False, h0, cu_seqlens=cu_t, return_varlen_states=True, **kw)
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    exact = [a.cpu().double() for a in args] + [h0.cpu().double()]
    e_out, _ = _per_sequence([[n for n in lengths if n]], True)(*exact)
    finals = []
    for k, (a, b) in enumerate(zip(cu, cu[1:])):
        sl = lambda t: t[..., a:b] if t is not None and t.dim() >= 3 else t  # noqa: E731
        finals.append(selective_scan_ref(*[sl(t) for t in exact[:8]], True, True, exact[8] if a == 0 else None)[1][0]
                      if b > a else torch.zeros(4, 3, dtype=torch.float64))
    assert states.shape == (len(cu) - 1, 4, 3)
    torch.testing.assert_close(out.cpu().double(), e_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(states.cpu().double(), torch.stack(finals), rtol=1e-4, atol=1e-5)


def test_varlen_states_are_forward_only():
    args = [a.requires_grad_(True) for a in make_inputs(1, 2, 10, 3, seed=1)]
    with pytest.raises(ValueError, match="forward only"):
        selective_scan(*args, True, cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32), return_varlen_states=True)
