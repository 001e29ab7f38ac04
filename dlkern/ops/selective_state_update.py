"""``selective_state_update``: one decoding step of the selective scan (``mamba_ssm``'s), in place on
the state, in the single-head layout (state (batch, dim, N)) or mamba_ssm's multi-head layout
(state (batch, nheads, dim, N), B and C shared by the heads of a group), optionally on the rows
``state_batch_indices`` of a pool of states (a serving cache). The multi-head layout is the
single-head one over nheads * dim channels (head h, channel p -> h * dim + p; a group of B/C covers
nheads / ngroups heads, so the channel groups coincide), so both run the same kernels.
Oracle: ``selective_state_update_ref``; one in-place custom op; a Triton and a CUDA kernel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern import backend as _backend
from dlkern.autocast import NONE, follows_autocast
from dlkern.backend import choose
from dlkern.registry import Cost, OpSpec, Sample, register_op

MAX_STATE = 256   # largest N the kernels take
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _flat_heads(t: Tensor | None, lead: int) -> Tensor | None:
    """(..., nheads, dim[, N]) with ``lead`` leading dims -> channels nheads * dim (a view when possible)."""
    return t.flatten(lead, lead + 1) if t is not None else None


def _single_head(state, x, dt, A, B, C, D, z, dt_bias):
    """The multi-head layout as the single-head one (state: maybe a copy, see the caller)."""
    return (_flat_heads(state, 1), _flat_heads(x, 1), _flat_heads(dt, 1), _flat_heads(A, 0), B, C,
            _flat_heads(D, 0) if D is not None and D.dim() == 2 else D, _flat_heads(z, 1),
            _flat_heads(dt_bias, 0) if dt_bias is not None and dt_bias.dim() == 2 else dt_bias)


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                               dt_softplus: bool = False, state_batch_indices: Tensor | None = None) -> Tensor:
    """Reference decoding step: one step of :func:`selective_scan_ref`. **Updates ``state`` in
    place** (rounded to its dtype) and returns out (batch, dim) in x's dtype.

    state: (batch, dim, N); x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or (batch, G, N)
    with G dividing dim; D, dt_bias: (dim,). Multi-head: state (batch, nheads, dim, N); x, dt, z
    (batch, nheads, dim); A (nheads, dim, N); B, C (batch, G, N) with G dividing nheads; D, dt_bias
    (nheads, dim). ``state_batch_indices`` (batch,) int: row b updates
    state[state_batch_indices[b]] (state's first dimension is then the pool's size; distinct
    indices). Math in fp32 (fp64 for fp64 inputs)."""
    if state_batch_indices is not None:
        rows = state_batch_indices.long()
        picked = state[rows]
        out = selective_state_update_ref(picked, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
        state[rows] = picked
        return out
    if state.dim() == 4:
        flat = state.flatten(1, 2)   # a copy when the heads do not merge: written back below
        out = selective_state_update_ref(flat, *_single_head(None, x, dt, A, B, C, D, z, dt_bias)[1:],
                                         dt_softplus).unflatten(1, x.shape[1:])
        if flat._base is None:   # a copy
            state.copy_(flat.unflatten(1, state.shape[1:3]))
        return out
    dim = state.shape[1]
    f = torch.promote_types(x.dtype, torch.float32)
    per_channel = lambda t: (t[:, None] if t.dim() == 2 else  # noqa: E731  -> (batch, dim or 1, N)
                             t.repeat_interleave(dim // t.shape[1], dim=1)).to(f)
    dtf = dt.to(f) + (dt_bias.to(f) if dt_bias is not None else 0)
    if dt_softplus:
        dtf = F.softplus(dtf)
    xf = x.to(f)
    h = torch.exp(dtf[..., None] * A.to(f)) * state.to(f) + (dtf * xf)[..., None] * per_channel(B)
    state.copy_(h)
    out = (h * per_channel(C)).sum(-1)
    if D is not None:
        out = out + xf * D.to(f)
    if z is not None:
        out = out * F.silu(z.to(f))
    return out.to(x.dtype)


@torch.library.custom_op("dlkern::selective_state_update", mutates_args=("state",))
def selective_state_update_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
                              dt_softplus: bool, state_batch_indices: Optional[Tensor], backend: str) -> Tensor:
    """Single-head layout; B, C (batch, G, N); dt, z, B, C in x's dtype; A, D, dt_bias fp32;
    state_batch_indices int32 or None; ``backend``: triton or cuda."""
    return _backend.launchers(backend, x.device).selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                                        dt_softplus, state_batch_indices)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, backend):
    return x.new_empty(x.shape)


def _check_state_update(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices):
    if state_batch_indices is not None:
        idx = state_batch_indices
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int32, torch.int64) or idx.device != x.device \
                or tuple(idx.shape) != (x.shape[0],):
            raise ValueError(f"state_batch_indices must be an int32/int64 (batch,) = ({x.shape[0]},) tensor on "
                             f"x's device; got {getattr(idx, 'shape', idx)}")
        if idx.device.type != "cuda" and idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < state.shape[0]):
            raise ValueError(f"state_batch_indices must index state's {state.shape[0]} rows")
    if state.dim() == 4:   # multi-head
        if x.dim() != 3 or x.shape[1:] != state.shape[1:3] or A.dim() != 3 or A.shape != state.shape[1:]:
            raise ValueError(f"expected multi-head state (batch, nheads, dim, N), x and dt (batch, nheads, dim), A "
                             f"(nheads, dim, N); got state {list(state.shape)}, x {list(x.shape)}, A {list(A.shape)}")
        nheads = state.shape[1]
        for name, t in (("B", B), ("C", C)):
            if t.dim() == 3 and nheads % t.shape[1] != 0:
                raise ValueError(f"{name}'s groups {t.shape[1]} must divide nheads = {nheads}")
        for name, t in (("D", D), ("dt_bias", dt_bias)):
            if t is not None and t.dim() == 2 and tuple(t.shape) != tuple(state.shape[1:3]):
                raise ValueError(f"{name} must be (nheads, dim) = {tuple(state.shape[1:3])}; got {list(t.shape)}")
        state, x, dt, A, B, C, D, z, dt_bias = _single_head(state, x, dt, A, B, C, D, z, dt_bias)
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name} must be a real floating-point tensor; got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else ""))
    if state.dim() != 3 or x.shape[1] != state.shape[1] or dt.shape != x.shape or A.shape != state.shape[1:] or \
            (state_batch_indices is None and x.shape[0] != state.shape[0]):
        raise ValueError(f"expected state (batch, dim, N), x and dt (batch, dim), A (dim, N); got state "
                         f"{list(state.shape)}, x {list(x.shape)}, dt {list(dt.shape)}, A {list(A.shape)}")
    batch, (dim, N) = x.shape[0], state.shape[1:]
    for name, t in (("B", B), ("C", C)):
        if not ((t.dim() == 2 and tuple(t.shape) == (batch, N)) or
                (t.dim() == 3 and t.shape[0] == batch and t.shape[2] == N and t.shape[1] >= 1
                 and dim % t.shape[1] == 0)):
            raise ValueError(f"{name} must be (batch, N) = ({batch}, {N}) or (batch, G, N) with G dividing "
                             f"dim = {dim}; got shape {list(t.shape)}")
    if (B.shape[1] if B.dim() == 3 else 1) != (C.shape[1] if C.dim() == 3 else 1):
        raise ValueError(f"B and C must have the same number of groups; got shapes {list(B.shape)} and "
                         f"{list(C.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {list(x.shape)}; got {list(z.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be (dim,) = ({dim},); got shape {list(t.shape)}")


@follows_autocast(NONE)
def selective_state_update(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                           dt_softplus: bool = False, state_batch_indices: Tensor | None = None, *,
                           backend: str | None = None) -> Tensor:
    """One decoding step of the scan (``mamba_ssm``'s ``selective_state_update``). **Updates
    ``state`` in place** with the new state and returns out (batch, dim) in x's dtype.

    state: (batch, dim, N), fp32 or x's dtype on the kernel backends; x, dt, z: (batch, dim);
    A: (dim, N); B, C: (batch, N) or (batch, G, N) with G dividing dim; D, dt_bias: (dim,).
    Multi-head (mamba_ssm's layout): state (batch, nheads, dim, N); x, dt, z (batch, nheads, dim);
    A (nheads, dim, N); B, C (batch, G, N) with G dividing nheads; D, dt_bias (nheads, dim); out
    (batch, nheads, dim). ``state_batch_indices`` (batch,) int32/int64: row b reads and writes
    state[state_batch_indices[b]] of a pool of states (distinct indices; the pool's size is
    state's first dimension). dt, z, B and C are read in x's dtype; A, D and dt_bias in fp32; math
    in fp32. Inference only: runs under ``torch.no_grad()``.
    """
    _check_state_update(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    with torch.no_grad():
        chosen = choose(SELECTIVE_STATE_UPDATE, args, {}, backend)
        if chosen == "reference":
            return selective_state_update_ref(*args)
        heads = state.dim() == 4
        flat = state
        if heads:   # (the kernels take one stride per dimension: heads that do not merge run on a copy)
            flat, x, dt, A, B, C, D, z, dt_bias = _single_head(state, x, dt, A, B, C, D, z, dt_bias)
        xt = x.dtype
        as3 = lambda X: (X.unsqueeze(1) if X.dim() == 2 else X).to(xt)  # noqa: E731  (batch, G, N)
        opt = lambda t, dtype: t.to(dtype) if t is not None else None  # noqa: E731
        out = selective_state_update_op(flat, x, dt.to(xt), A.float(), as3(B), as3(C), opt(D, torch.float32),
                                        opt(z, xt), opt(dt_bias, torch.float32), bool(dt_softplus),
                                        opt(state_batch_indices, torch.int32), chosen)
        if heads:
            if flat._base is None:
                state.copy_(flat.unflatten(1, state.shape[1:3]))
            out = out.unflatten(1, state.shape[1:3])
        return out




# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _update_supports(backend, state, x, *rest, **kw):
    reasons = []
    # (every kernel takes the multi-head layout and state_batch_indices: nothing to refuse there)
    if x.dtype not in KERNEL_DTYPES:
        reasons.append(f"x dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    if state.dtype not in (x.dtype, torch.float32):
        reasons.append(f"state dtype {state.dtype} must be float32 or x's dtype {x.dtype}")
    if state.shape[-1] > MAX_STATE:
        reasons.append(f"N = {state.shape[-1]} is larger than {MAX_STATE}, the most the {backend} kernel takes")
    return reasons


def _update_inputs(batch, dim, N, *, groups=1, device="cpu", dtype=torch.float32, state_dtype=None, seed=0):
    """(state, x, dt, A, B, C, D, z, dt_bias) as a Mamba layer decodes them: raw dt for softplus,
    B and C (batch, G, N) (or (batch, N) for G = 0)."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=gen)  # noqa: E731
    state, x, z = r(batch, dim, N), r(batch, dim), r(batch, dim)
    dt = r(batch, dim) * 0.5 - 2.0
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1) * (0.5 + torch.rand(dim, 1, generator=gen))
    B, C = (r(batch, N), r(batch, N)) if groups == 0 else (r(batch, groups, N), r(batch, groups, N))
    D, bias = r(dim), r(dim) * 0.1
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return (state.to(device=device, dtype=state_dtype or dtype), *(to(t) for t in (x, dt, A, B, C, D, z, bias)))


def _update_samples(device, dtype):
    mk = lambda *a, **k: _update_inputs(*a, device=device, dtype=dtype, **k)  # noqa: E731
    yield Sample("all_options_G1", mk(2, 6, 4, seed=21), {"dt_softplus": True})
    yield Sample("grouped_G3_odd_N", mk(3, 9, 5, groups=3, seed=22), {"dt_softplus": True})
    s, x, dt, A, B, C, D, z, bias = mk(1, 5, 3, groups=0, seed=23)
    yield Sample("batch1_BC_2d_no_options", (s, x, dt.abs() * 0.1, A, B, C))
    s, x, dt, A, B, C, D, z, bias = mk(2, 7, 16, groups=7, state_dtype=torch.float32, seed=24)
    yield Sample("fp32_state_strided", (s.transpose(0, 1).contiguous().transpose(0, 1), x[:, :], dt, A, B, C, D,
                                        z, bias), {"dt_softplus": True})
    s, x, dt, A, B, C, D, z, bias = mk(2, 16, 8, seed=25)
    yield Sample("strided_views", (torch.cat([s, s], 2)[..., ::2], torch.cat([x, x], 1)[:, 1::2], dt, A, B, C,
                                   None, z[:, :], bias), {"dt_softplus": True})
    # mamba_ssm's multi-head layout: 3 heads of 2 channels, one B/C group per head
    s, x, dt, A, B, C, D, z, bias = mk(2, 6, 4, groups=3, seed=26)
    heads = lambda t, lead: t.unflatten(lead, (3, 2))  # noqa: E731
    yield Sample("multi_head_3x2_G3", (heads(s, 1), heads(x, 1), heads(dt, 1), heads(A, 0), B, C, heads(D, 0),
                                       heads(z, 1), heads(bias, 0)), {"dt_softplus": True})
    # a pool of 5 states, the batch's 3 rows in rows 4, 0, 2
    s, x, dt, A, B, C, D, z, bias = mk(3, 4, 8, groups=2, seed=27)
    pool = torch.cat([s, s[:2]]).contiguous()
    rows = torch.tensor([4, 0, 2], dtype=torch.int32, device=device)
    yield Sample("state_pool_indices", (pool, x, dt, A, B, C, D, z, bias),
                 {"dt_softplus": True, "state_batch_indices": rows})


def _update_bench_cases(device, dtype, quick):
    """Decode shapes: batch 64, d_inner 4096 (Mamba-2.8b's 2 x 2560 rounded), N 16, fp32 state."""
    batch, dim = (64, 4096) if device.type == "cuda" else (8, 1024)
    yield Sample(f"b{batch}_d{dim}_N16", _update_inputs(batch, dim, 16, device=device, dtype=dtype,
                                                        state_dtype=torch.float32), {"dt_softplus": True})


def _update_cost(sample):
    """The batch rows' states read and written (with state_batch_indices: only the selected rows of
    the pool), A read; x, dt, z, out (batch, dim) and B, C once per batch row."""
    state, x, A, B, C = (sample.args[i] for i in (0, 1, 3, 4, 5))
    s = x.element_size()
    row_states = x.shape[0] * (state.numel() // max(state.shape[0], 1))
    return Cost(fwd_bytes=2 * row_states * state.element_size() + A.numel() * A.element_size()
                + 4 * x.numel() * s + (B.numel() + C.numel()) * s, bwd_bytes=0,
                fwd_flops=6.0 * state.numel())


SELECTIVE_STATE_UPDATE = register_op(OpSpec(
    name="selective_state_update", family="ssm", fn=selective_state_update, reference=selective_state_update_ref,
    backends=("triton", "cuda"), auto_order=("triton", "cuda"), supports=_update_supports,
    samples=_update_samples, bench_cases=_update_bench_cases, cost=_update_cost,
    torch_equivalent=selective_state_update_ref, launchers=("selective_state_update",),
))
