"""``selective_state_update`` in mamba_ssm's multi-head layout and on a pool of states
(``state_batch_indices``), against an independent formulation: a loop over heads (and over the
batch's pool rows) of the single-head oracle in fp64. Every path: reference, Triton (interpreted
here), CUDA (the emulation build here); the new state in place and the output."""
import pytest
import torch

import dlkern
from dlkern.ops.selective_state_update import selective_state_update, selective_state_update_ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # cpu: interpreter / emulation
UNAVAILABLE = {b: "; ".join(dlkern.backend.availability(b, DEVICE)) for b in ("triton", "cuda")}
BACKENDS = [pytest.param("reference", id="reference"),
            *(pytest.param(b, id=b, marks=pytest.mark.skipif(bool(UNAVAILABLE[b]), reason=UNAVAILABLE[b] or "ok"))
              for b in ("triton", "cuda"))]


def heads_inputs(batch, nheads, dim, N, groups, *, pool=None, seed=0, dtype=torch.float32, device="cpu"):
    """(state, x, dt, A, B, C, D, z, dt_bias) in the multi-head layout; state has ``pool`` rows."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=gen)  # noqa: E731
    state = r(pool or batch, nheads, dim, N)
    x, z, dt = r(batch, nheads, dim), r(batch, nheads, dim), r(batch, nheads, dim) * 0.5 - 2.0
    A = -torch.rand(nheads, dim, N, generator=gen) * 2 - 0.1
    B, C = r(batch, groups, N), r(batch, groups, N)
    D, bias = r(nheads, dim), r(nheads, dim) * 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (state, x, dt, A, B, C, D, z, bias))


def per_head_loop(state, x, dt, A, B, C, D, z, dt_bias, rows):
    """The single-head oracle head by head, on state rows ``rows`` (fp64); returns (new state, out)."""
    state = state.double().clone()
    nheads, groups = x.shape[1], B.shape[1]
    out = torch.empty(x.shape, dtype=torch.float64)
    for h in range(nheads):
        g = h // (nheads // groups)
        s = state[rows, h]   # (batch, dim, N), a copy
        out[:, h] = selective_state_update_ref(s, x[:, h].double(), dt[:, h].double(), A[h].double(),
                                               B[:, g].double(), C[:, g].double(), D[h].double(), z[:, h].double(),
                                               dt_bias[h].double(), True)
        state[rows, h] = s
    return state, out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 4, 3, 5, 2), (1, 3, 8, 16, 1), (3, 6, 2, 4, 6)],
                         ids=["G2_odd_N", "batch1_G1_N16", "G_equals_heads"])
def test_multi_head_equals_per_head_loop(backend, shape):
    args = heads_inputs(*shape, seed=sum(shape), device=DEVICE)
    state = args[0].clone()
    out = selective_state_update(state, *args[1:], dt_softplus=True, backend=backend)
    e_state, e_out = per_head_loop(*[a.cpu() for a in args], rows=torch.arange(shape[0]))
    assert out.shape == args[1].shape
    torch.testing.assert_close(out.cpu().double(), e_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.cpu().double(), e_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads", [False, True], ids=["single_head", "multi_head"])
def test_state_batch_indices_update_their_pool_rows_only(backend, heads):
    args = heads_inputs(3, 2, 4, 8, 1, pool=5, seed=3, device=DEVICE)
    rows = torch.tensor([4, 0, 2], dtype=torch.int32)
    e_state, e_out = per_head_loop(*[a.cpu() for a in args], rows=rows.long())
    if not heads:   # one head: the (batch, dim, N) layout
        args = (args[0][:, 0], args[1][:, 0], args[2][:, 0], args[3][0], args[4], args[5], args[6][0], args[7][:, 0],
                args[8][0])
        e_state, e_out = e_state[:, 0], e_out[:, 0]
    pool = args[0].clone()
    out = selective_state_update(pool, *args[1:], dt_softplus=True, state_batch_indices=rows.to(DEVICE),
                                 backend=backend)
    torch.testing.assert_close(out.cpu().double(), e_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pool.cpu().double(), e_state, rtol=1e-5, atol=1e-5)
    assert torch.equal(pool[[1, 3]], args[0][[1, 3]])   # rows no one indexes are untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_head_state_whose_heads_do_not_merge_is_updated_in_place(backend):
    """A (batch, nheads, dim, N) view with heads and channels not mergeable into one stride."""
    args = heads_inputs(2, 3, 4, 4, 3, seed=5, device=DEVICE)
    storage = args[0].transpose(1, 2).contiguous()   # (batch, dim, nheads, N)
    state = storage.transpose(1, 2)                  # (batch, nheads, dim, N) view, not mergeable
    out = selective_state_update(state, *args[1:], dt_softplus=True, backend=backend)
    e_state, e_out = per_head_loop(*[a.cpu() for a in args], rows=torch.arange(2))
    torch.testing.assert_close(out.cpu().double(), e_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(storage.transpose(1, 2).cpu().double(), e_state, rtol=1e-5, atol=1e-5)


def test_bad_head_arguments_raise():
    state, x, dt, A, B, C, D, z, bias = heads_inputs(2, 4, 3, 5, 2)
    with pytest.raises(ValueError, match="must divide nheads"):
        selective_state_update(state, x, dt, A, B[:, :1].expand(2, 3, 5), C[:, :1].expand(2, 3, 5))
    with pytest.raises(ValueError, match="multi-head"):
        selective_state_update(state, x[:, :, :2], dt, A, B, C)
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update(state, x, dt, A, B, C, state_batch_indices=torch.tensor([0, 2], dtype=torch.int32))
