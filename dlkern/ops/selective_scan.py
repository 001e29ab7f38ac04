"""Selective scan (Mamba's S6 recurrence) with ``mamba_ssm``'s ``selective_scan_fn`` API, and the
one-token ``selective_state_update`` used for decoding.

For batch b, channel d, state n and time t (math in fp32 whatever the input dtype)::

    dt_t = delta_t + delta_bias            (softplus'd when delta_softplus)
    h_t  = exp(dt_t A[d, n]) h_{t-1} + dt_t B[n, t] u_t
    y_t  = sum_n C[n, t] h_t + D u_t;      out_t = y_t silu(z_t) when z is given

h_{-1} is ``initial_state`` (zero when absent). Packed sequences (``seq_idx`` (batch, L), or
``cu_seqlens`` on a batch-1 row): at a step t > 0 whose sequence id differs from step t - 1's, the
state restarts from zero, h_t = dt_t B[n, t] u_t. Every kernel computes that restart as a decay of
0 at the first step of a sequence: the affine step maps h -> a h + b then compose across a boundary
exactly as a segmented scan with a reset flag would (the map with a = 0 forgets everything before
it), so the chunked and block-level scans need no new combine operator, and the adjoint
g_{t-1} = a_t g_t stops at the boundary for the same reason.

Implementations: ``selective_scan_ref`` is the plain sequential recurrence, the oracle the tests
compare everything with. On CPU tensors the default path (the ``reference`` backend) runs the C++
kernel in ``dlkern._C_cpu`` (the oracle when that build is missing); ``triton`` and ``cuda`` run
the kernels. All three kernel paths share one pair of custom ops whose ``impl`` argument names the
launcher module; the forward stores the state at the end of every 64-step chunk so the backward
recomputes the states inside a chunk instead of storing every step. ``selective_state_update``
(dlkern/ops/selective_state_update.py) is the one-step decoding form.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.autocast import NONE, follows_autocast
from dlkern import _ext
from dlkern import backend as _backend
from dlkern.backend import choose
from dlkern.registry import Cost, OpSpec, Sample, register_op

CHUNK = 64        # steps between the states the forward stores (csrc/scan/selective_scan.h)
MAX_STATE = 256   # largest N the CPU and CUDA kernels take (CUDA: a block loops over n)
MAX_STATE_TRITON = 32   # Triton: a (64, N) tile per program
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _launchers(impl: str, device: torch.device):
    """``impl``: "cpu" (dlkern._C_cpu), "triton" or "cuda" (the backend's launcher module)."""
    return _ext.cpu_module() if impl == "cpu" else _backend.launchers(impl, device)


# ---------------------------------------------------------------------------------------------
# Custom ops (absent optional outputs are empty tensors at this level)
# ---------------------------------------------------------------------------------------------
# initial_state: (batch, dim, N) fp32, h_{-1}; seq_idx: (batch, L) int32 sequence ids (module docstring).
@torch.library.custom_op("dlkern::selective_scan_fwd", mutates_args=())
def selective_scan_fwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                          initial_state: Optional[Tensor], seq_idx: Optional[Tensor],
                          impl: str) -> tuple[Tensor, Tensor]:
    out, states = _launchers(impl, u.device).selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                                initial_state, seq_idx)
    return out, states


@torch.library.custom_op("dlkern::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                          delta_softplus: bool, states: Tensor, dlast: Optional[Tensor],
                          initial_state: Optional[Tensor], seq_idx: Optional[Tensor], impl: str
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward's gradients and, last, that of initial_state (fp32; empty without one)."""
    grads = _launchers(impl, u.device).selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias,
                                                           delta_softplus, states, dlast, initial_state, seq_idx)
    return tuple(grads)


@selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx, impl):
    batch, dim, L = u.shape
    n_chunks = (L + CHUNK - 1) // CHUNK
    return u.new_empty(batch, dim, L), u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=torch.float32)


@selective_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, dlast, initial_state, seq_idx, impl):
    f32 = torch.float32
    dim = u.shape[1]
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape, dtype=f32),
            B.new_empty(B.shape, dtype=f32), C.new_empty(C.shape, dtype=f32),
            u.new_empty(dim, dtype=f32) if D is not None else u.new_empty(0, dtype=f32),
            u.new_empty(u.shape) if z is not None else u.new_empty(0),
            u.new_empty(dim, dtype=f32) if delta_bias is not None else u.new_empty(0, dtype=f32),
            u.new_empty(initial_state.shape, dtype=f32) if initial_state is not None else u.new_empty(0, dtype=f32))


def _setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, seq_idx, impl = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1], h0, seq_idx)
    ctx.delta_softplus, ctx.impl = delta_softplus, impl


def _backward(ctx, dout, dstates):
    u, delta, A, B, C, D, z, delta_bias, states, h0, seq_idx = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    dlast = dstates[:, :, -1] if dstates is not None else None
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = selective_scan_bwd_op(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states, dlast, h0, seq_idx, ctx.impl)
    return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.to(D.dtype) if D is not None else None, dz if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None, None,
            dh0 if h0 is not None else None, None, None)


selective_scan_fwd_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------
def _per_step(X: Tensor, dim: int):
    """B or C as L tensors broadcastable to (batch, dim, N), or one tensor if time-invariant."""
    if X.dim() == 2:                                        # (dim, N)
        return None, X
    if X.dim() == 3:                                        # (batch, N, L)
        return [x[:, None] for x in X.unbind(-1)], None
    return list(X.repeat_interleave(dim // X.shape[1], dim=1).unbind(-1)), None  # (batch, G, N, L)


def seq_idx_from_cu_seqlens(cu_seqlens: Tensor, L: int) -> Tensor:
    """(S + 1,) int32 sequence starts (0, ..., L) -> (1, L) int32 sequence ids 0 .. S - 1."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.arange(lengths.numel(), dtype=torch.int32, device=cu_seqlens.device)
    return torch.repeat_interleave(ids, lengths, output_size=L)[None]


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Tensor | None = None,
                       seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
                       return_varlen_states: bool = False):
    """Reference: the sequential recurrence, one step at a time, in fp32 (fp64 for fp64 inputs).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L), (batch, G, N, L) with G dividing
    dim, or (dim, N); D, delta_bias: (dim,); initial_state: (batch, dim, N), the state before step 0
    (so with packed sequences, that of each row's first sequence; later ones start from zero);
    seq_idx: (batch, L) int32 sequence ids, the state restarting from zero where the id changes;
    cu_seqlens: (S + 1,) int32 starts of S sequences packed in one row (batch 1; 0 first, L last).
    Returns out (batch, dim, L) in u's dtype and, with ``return_last_state``, the state after each
    row's last step (batch, dim, N) in fp32 (fp64 for fp64 inputs): with packed sequences, the
    final state of each row's last sequence. ``return_varlen_states`` (with cu_seqlens) appends the
    final state of every sequence, (S, dim, N) (an empty sequence's is zero).
    """
    ends = {}   # step -> the sequences ending there
    if cu_seqlens is not None:
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, u.shape[2])
        for k, (a, b) in enumerate(zip(cu_seqlens.tolist(), cu_seqlens.tolist()[1:])):
            if b > a:
                ends.setdefault(b - 1, []).append(k)
    f = torch.promote_types(u.dtype, torch.float32)
    batch, dim, L = u.shape
    uf, dt = u.to(f), delta.to(f)
    if delta_bias is not None:
        dt = dt + delta_bias.to(f)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Af = A.to(f)
    Bs, B0 = _per_step(B.to(f), dim)
    Cs, C0 = _per_step(C.to(f), dim)
    h = initial_state.to(f) if initial_state is not None else uf.new_zeros(batch, dim, A.shape[1])
    # keep[:, t]: 0 where step t starts a new sequence (the state restarts from zero)
    keep = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(f)[:, :, None, None] if seq_idx is not None else None
    ys = []
    finals = [uf.new_zeros(dim, A.shape[1])] * (cu_seqlens.numel() - 1 if cu_seqlens is not None else 0)
    for t, (dt_t, u_t) in enumerate(zip(dt.unbind(-1), uf.unbind(-1))):
        B_t = B0 if Bs is None else Bs[t]
        C_t = C0 if Cs is None else Cs[t]
        if keep is not None and t > 0:
            h = h * keep[:, t - 1]
        h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * u_t)[..., None] * B_t   # (batch, dim, N)
        ys.append((h * C_t).sum(-1))                                             # (batch, dim)
        for k in ends.get(t, ()):
            finals[k] = h[0]
    out = torch.stack(ys, -1)
    if D is not None:
        out = out + uf * D.to(f)[:, None]
    if z is not None:
        out = out * F.silu(z.to(f))
    out = out.to(u.dtype)
    result = (out, h) if return_last_state else (out,)
    if return_varlen_states:
        result += (torch.stack(finals),)
    return result if len(result) > 1 else out


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _check(u, delta, A, B, C, D, z, delta_bias):
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name} must be a real floating-point tensor; got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else ""))
    if u.dim() != 3 or u.shape[2] < 1:
        raise ValueError(f"u must be (batch, dim, L) with L >= 1; got shape {list(u.shape)}")
    batch, dim, L = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {list(u.shape)}; got {list(t.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, N) = ({dim}, N); got shape {list(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 2 and tuple(t.shape) == (dim, N)) or \
             (t.dim() == 3 and tuple(t.shape) == (batch, N, L)) or \
             (t.dim() == 4 and t.shape[0] == batch and tuple(t.shape[2:]) == (N, L) and t.shape[1] >= 1
              and dim % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"{name} must be (batch, N, L) = ({batch}, {N}, {L}), (batch, G, N, L) with G "
                             f"dividing dim = {dim}, or time-invariant (dim, N) = ({dim}, {N}); got "
                             f"shape {list(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be (dim,) = ({dim},); got shape {list(t.shape)}")


def _check_packing(u, A, initial_state, seq_idx, cu_seqlens):
    batch, dim, L = u.shape
    if initial_state is not None:
        if not isinstance(initial_state, Tensor) or not initial_state.is_floating_point() or \
                tuple(initial_state.shape) != (batch, dim, A.shape[1]):
            raise ValueError(f"initial_state must be a floating-point (batch, dim, N) = ({batch}, {dim}, "
                             f"{A.shape[1]}) tensor; got {getattr(initial_state, 'shape', initial_state)}")
    if seq_idx is not None and cu_seqlens is not None:
        raise ValueError("give seq_idx or cu_seqlens, not both")
    for name, t, shape in (("seq_idx", seq_idx, (batch, L)), ("cu_seqlens", cu_seqlens, None)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dtype != torch.int32 or t.device != u.device:
            raise TypeError(f"{name} must be an int32 tensor on u's device {u.device}; got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must be (batch, L) = {shape}; got shape {list(t.shape)}")
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or batch != 1:
            raise ValueError(f"cu_seqlens must be (S + 1,) with S >= 1 on a batch-1 packed row; got shape "
                             f"{list(cu_seqlens.shape)} with batch {batch}")
        if cu_seqlens.device.type != "cuda":   # (on a GPU the check would synchronize: the contract stands)
            c = cu_seqlens.tolist()
            if c[0] != 0 or c[-1] != L or any(b < a for a, b in zip(c, c[1:])):
                raise ValueError(f"cu_seqlens must rise from 0 to L = {L}; got {c}")


def _check_varlen_states(args):
    if args[12] is None:
        raise ValueError("return_varlen_states needs cu_seqlens")
    if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args):
        raise ValueError("return_varlen_states is forward only (as mamba_ssm's): run it under torch.no_grad() or "
                         "on inputs that do not require grad")


@torch.no_grad()
def _varlen_states(u, delta, A, B, C, delta_bias, softplus, h0, cu_seqlens, states):
    """Each sequence's final state from the forward's stored states (every backend stores the state
    after every CHUNK-th step): from the last stored state inside the sequence (or from its start:
    zero, or h0 for the one at step 0) replay the < CHUNK remaining steps, all sequences at once."""
    f = torch.float32
    L, N = u.shape[2], A.shape[1]
    cu = cu_seqlens.long()
    start, end = cu[:-1], cu[1:]                                           # (S,), end exclusive
    stored = (end // CHUNK) * CHUNK                                        # first step after the last stored state
    from_stored = (stored > start) & (stored > 0)
    t0 = torch.where(from_stored, stored, start)
    h = torch.zeros(start.numel(), u.shape[1], N, dtype=f, device=u.device)
    k = (stored // CHUNK - 1).clamp(min=0)
    h = torch.where(from_stored[:, None, None], states[0, :, k].transpose(0, 1), h)     # (S, dim, N)
    if h0 is not None:
        h = torch.where(((start == 0) & ~from_stored & (end > 0))[:, None, None], h0[0].to(f), h)
    dt = delta[0].to(f) + (delta_bias.to(f)[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if softplus else dt                               # (dim, L)
    uf = u[0].to(f)
    # variable B as (dim or 1, N, L); time-invariant B (dim, N) as it is
    Bv = (B[0][None] if B.dim() == 3 else B[0].repeat_interleave(u.shape[1] // B.shape[1], 0)).to(f) \
        if B.dim() >= 3 else None
    for j in range(CHUNK):
        t = t0 + j
        live = t < end
        if not bool(live.any()):
            break
        tc = t.clamp(max=L - 1)
        dt_t, u_t = dt[:, tc].T, uf[:, tc].T                                # (S, dim)
        B_t = Bv[..., tc].permute(2, 0, 1) if Bv is not None else B.to(f)[None]   # (S, dim or 1, N)
        h_new = torch.exp(dt_t[..., None] * A.to(f)) * h + (dt_t * u_t)[..., None] * B_t
        h = torch.where(live[:, None, None], h_new, h)
    return h


def _cpu_path(args) -> bool:
    """Whether the reference backend runs the C++ kernel (else the oracle itself, which also serves
    the differentiation modes the kernel has no rule for: forward AD, torch.func's grad)."""
    u, A = args[0], args[2]
    tensors = [t for t in args if isinstance(t, Tensor)]
    return (u.device.type == "cpu" and u.dtype in KERNEL_DTYPES and A.shape[1] <= MAX_STATE
            and _ext.cpu_module() is not None
            and not _backend.autodiff_transforms(tensors))


@follows_autocast(NONE)
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: Tensor | None = None,
                   seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
                   return_varlen_states: bool = False, *, backend: str | None = None):
    """Drop-in for ``mamba_ssm``'s ``selective_scan_fn`` (shapes: :func:`selective_scan_ref`), plus
    an initial state and packed sequences (``seq_idx`` or ``cu_seqlens``: the state restarts from
    zero at each sequence start).

    Returns out (batch, dim, L) in u's dtype, and the last state (batch, dim, N, fp32) with
    ``return_last_state`` (with packed sequences, the final state of each row's last sequence), and
    with ``return_varlen_states`` (cu_seqlens only; forward only, as mamba_ssm's: no input may
    require grad) the final state of every sequence, (S, dim, N) fp32.
    Gradients flow to every tensor argument, initial_state included (and through the last state).
    delta, B, C and z are computed in u's dtype; A, D, delta_bias and initial_state in fp32.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    _check_packing(u, A, initial_state, seq_idx, cu_seqlens)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, seq_idx,
            cu_seqlens)
    if return_varlen_states:
        _check_varlen_states(args)
    chosen = choose(SELECTIVE_SCAN, args, {}, backend)
    if chosen == "reference" and not _cpu_path(args):
        return selective_scan_ref(*args, return_varlen_states)
    impl = "cpu" if chosen == "reference" else chosen
    dt = u.dtype
    as4 = lambda X: (X.unsqueeze(1) if X.dim() == 3 else X).to(dt)  # noqa: E731  (batch, 1, N, L)
    opt = lambda t, dtype: t.to(dtype) if t is not None else None  # noqa: E731
    if cu_seqlens is not None:
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, u.shape[2])
    out, states = selective_scan_fwd_op(u, delta.to(dt), A.float(), as4(B), as4(C), opt(D, torch.float32),
                                        opt(z, dt), opt(delta_bias, torch.float32), bool(delta_softplus),
                                        opt(initial_state, torch.float32),
                                        seq_idx.contiguous() if seq_idx is not None else None, impl)
    result = (out, states[:, :, -1]) if return_last_state else (out,)
    if return_varlen_states:
        result += (_varlen_states(u, delta, A, B, C, delta_bias, delta_softplus, initial_state, cu_seqlens,
                                  states),)
    return result if len(result) > 1 else out


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, u, delta, A, B, C, D=None, z=None, delta_bias=None, *rest, **kw):
    reasons = []
    # (every kernel takes initial_state, seq_idx and cu_seqlens: nothing to refuse there)
    if u.dtype not in KERNEL_DTYPES:
        reasons.append(f"u dtype {u.dtype} is not supported (float32, float16, bfloat16)")
    max_state = MAX_STATE_TRITON if backend == "triton" else MAX_STATE
    if A.dim() == 2 and A.shape[1] > max_state:
        reasons.append(f"N = {A.shape[1]} is larger than {max_state}, the most the {backend} kernel takes")
    return reasons


def make_inputs(batch, dim, L, N, *, groups=1, variable_B=True, variable_C=True, device="cpu",
                dtype=torch.float32, seed=0, softplus=True):
    """Inputs shaped like a Mamba layer's: (u, delta, A, B, C, D, z, delta_bias). delta is the raw
    pre-softplus value when ``softplus`` (else already positive); A = -exp(A_log) as Mamba's init."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=gen)  # noqa: E731
    u, z = r(batch, dim, L), r(batch, dim, L)
    delta = r(batch, dim, L) * 0.5 - 2.0 if softplus else torch.rand(batch, dim, L, generator=gen) * 0.2 + 0.01
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1) * (0.5 + torch.rand(dim, 1, generator=gen))
    bc = lambda variable: (r(dim, N) if not variable else  # noqa: E731
                           r(batch, N, L) if groups == 1 else r(batch, groups, N, L))
    B, C = bc(variable_B), bc(variable_C)
    D, bias = r(dim), r(dim) * 0.1
    to = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return tuple(to(t) for t in (u, delta, A, B, C, D, z, bias))


def _samples(device, dtype):
    # Small: the emulated CUDA and interpreted Triton runs cost about (threads x steps) each. The
    # two first are the reference's gradcheck samples (cheap); the last crosses a chunk boundary.
    mk = lambda *a, **k: make_inputs(*a, device=device, dtype=dtype, **k)  # noqa: E731
    u, dl, A, B, C, D, z, bias = mk(2, 3, 7, 4, seed=1)
    yield Sample("all_options", (u, dl, A, B, C, D, z, bias), {"delta_softplus": True}, tuple(range(8)))
    u, dl, A, B, C, D, z, bias = mk(2, 3, 5, 2, variable_B=False, variable_C=False, seed=3)
    yield Sample("time_invariant_last_state", (u, dl, A, B, C, D, None, bias),
                 {"delta_softplus": True, "return_last_state": True}, (0, 1, 2, 3, 4, 5, 7))
    u, dl, A, B, C, D, z, bias = mk(1, 2, 1, 5, variable_C=False, seed=4)
    yield Sample("L1_mixed_BC", (u, dl, A, B, C, None, z), {"delta_softplus": True}, (0, 1, 2, 3, 4, 6))
    u, dl, A, B, C, D, z, bias = mk(1, 4, 70, 3, groups=2, softplus=False, seed=2)
    yield Sample("grouped_L70_batch1", (u, dl, A, B, C), {}, tuple(range(5)))
    # packed rows (ids need not start at 0; one- and two-step sequences) from an initial state
    u, dl, A, B, C, D, z, bias = mk(2, 3, 20, 4, groups=3, seed=5)
    h0 = make_inputs(2, 3, 1, 4, seed=6, device=device, dtype=dtype)[0].expand(2, 3, 4).contiguous()
    seq_idx = torch.tensor([[0] * 7 + [1] * 13, [4] * 5 + [5] + [6] * 2 + [7] * 12], dtype=torch.int32, device=device)
    yield Sample("packed_seq_idx_initial_state", (u, dl, A, B, C, D, z, bias, True, True, h0, seq_idx),
                 {}, (*range(8), 10))
    u, dl, A, B, C, D, z, bias = mk(1, 2, 9, 3, variable_B=False, seed=7)
    cu = torch.tensor([0, 4, 5, 9], dtype=torch.int32, device=device)
    yield Sample("cu_seqlens_invariant_B", (u, dl, A, B, C, D, None, bias, True), {"cu_seqlens": cu},
                 (0, 1, 2, 3, 4, 5, 7))


def _bench_cases(device, dtype, quick):
    # --quick keeps L short: on CPU the sequential reference and the log-depth peer take seconds.
    shapes = ([(2, 256, 512, 16)] if quick else [(2, 256, 2048, 16)] if device.type == "cpu"
              else [(2, 256, 2048, 16), (8, 1536, 2048, 16)])
    for batch, dim, L, N in shapes:
        u, dl, A, B, C, D, z, bias = make_inputs(batch, dim, L, N, device=device, dtype=dtype)
        yield Sample(f"b{batch}_d{dim}_L{L}_N{N}", (u, dl, A, B, C, D, z, bias), {"delta_softplus": True},
                     tuple(range(8)))
    # the first shape's batch packed into one row of 8 sequences (cu_seqlens), from an initial state
    batch, dim, L, N = shapes[0]
    u, dl, A, B, C, D, z, bias = make_inputs(1, dim, batch * L, N, device=device, dtype=dtype)
    cu = torch.linspace(0, batch * L, 9, device=device).round().to(torch.int32)
    h0 = torch.zeros(1, dim, N, device=device, dtype=dtype)
    yield Sample(f"packed8_d{dim}_L{batch * L}_N{N}", (u, dl, A, B, C, D, z, bias, True, False, h0),
                 {"cu_seqlens": cu}, (*range(8), 10))


def _cost(sample):
    """PERF.md: bytes of u, delta, z (if given), out and B, C (bwd: each read and its gradient
    written, plus dout read); one exp per (b, d, t, n) and ~6 flops around it."""
    u, B, C = sample.args[0], sample.args[3], sample.args[4]
    z = sample.args[6] if len(sample.args) > 6 else sample.kwargs.get("z")
    batch, dim, L = u.shape
    N, s = sample.args[2].shape[1], u.element_size()
    bc = (B.numel() * B.element_size() + C.numel() * C.element_size())
    streams = 3 + (1 if z is not None else 0)     # u, delta, (z), out
    return Cost(fwd_bytes=streams * u.numel() * s + bc, bwd_bytes=2 * streams * u.numel() * s + 2 * bc,
                fwd_flops=8.0 * batch * dim * L * N, bwd_flops=20.0 * batch * dim * L * N)


def _peer_logdepth():
    from dlkern.bench.baselines import selective_scan_logdepth
    return selective_scan_logdepth


def _peer_mamba_ssm():
    from dlkern.ops.peers import mamba_ssm_selective_scan
    return mamba_ssm_selective_scan()


SELECTIVE_SCAN = register_op(OpSpec(
    name="selective_scan", family="ssm", fn=selective_scan, reference=selective_scan_ref,
    backends=("triton", "cuda"), auto_order=("triton", "cuda"), supports=_supports, samples=_samples, bench_cases=_bench_cases,
    cost=_cost, peers={"torch_logdepth": _peer_logdepth, "mamba_ssm": _peer_mamba_ssm},
    launchers=("selective_scan_fwd", "selective_scan_bwd"),
))


