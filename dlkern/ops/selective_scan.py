"""Selective scan (Mamba's S6 recurrence) with ``mamba_ssm``'s ``selective_scan_fn`` API, and the
one-token ``selective_state_update`` used for decoding.

For batch b, channel d, state n and time t (math in fp32 whatever the input dtype)::

    dt_t = delta_t + delta_bias            (softplus'd when delta_softplus)
    h_t  = exp(dt_t A[d, n]) h_{t-1} + dt_t B[n, t] u_t
    y_t  = sum_n C[n, t] h_t + D u_t;      out_t = y_t silu(z_t) when z is given

Implementations: ``selective_scan_ref`` is the plain sequential recurrence, the oracle the tests
compare everything with. On CPU tensors the default path (the ``reference`` backend) runs the C++
kernel in ``dlkern._C_cpu`` (the oracle when that build is missing); ``triton`` and ``cuda`` run
the kernels. All three kernel paths share one pair of custom ops whose ``impl`` argument names the
launcher module; the forward stores the state at the end of every 64-step chunk so the backward
recomputes the states inside a chunk instead of storing every step. ``selective_state_update``
(oracle: ``selective_state_update_ref``) has one in-place custom op, a Triton and a CUDA kernel.
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
@torch.library.custom_op("dlkern::selective_scan_fwd", mutates_args=())
def selective_scan_fwd_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                          z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                          impl: str) -> tuple[Tensor, Tensor]:
    out, states = _launchers(impl, u.device).selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out, states


@torch.library.custom_op("dlkern::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                          delta_softplus: bool, states: Tensor, dlast: Optional[Tensor], impl: str
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _launchers(impl, u.device).selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias,
                                                           delta_softplus, states, dlast)
    return tuple(grads)


@selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl):
    batch, dim, L = u.shape
    n_chunks = (L + CHUNK - 1) // CHUNK
    return u.new_empty(batch, dim, L), u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=torch.float32)


@selective_scan_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, dlast, impl):
    f32 = torch.float32
    dim = u.shape[1]
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape, dtype=f32),
            B.new_empty(B.shape, dtype=f32), C.new_empty(C.shape, dtype=f32),
            u.new_empty(dim, dtype=f32) if D is not None else u.new_empty(0, dtype=f32),
            u.new_empty(u.shape) if z is not None else u.new_empty(0),
            u.new_empty(dim, dtype=f32) if delta_bias is not None else u.new_empty(0, dtype=f32))


def _setup(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, impl = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.delta_softplus, ctx.impl = delta_softplus, impl


def _backward(ctx, dout, dstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    dlast = dstates[:, :, -1] if dstates is not None else None
    du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_bwd_op(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states, dlast, ctx.impl)
    return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.to(D.dtype) if D is not None else None, dz if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None, None, None)


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


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """Reference: the sequential recurrence, one step at a time, in fp32 (fp64 for fp64 inputs).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L), (batch, G, N, L) with G dividing
    dim, or (dim, N); D, delta_bias: (dim,). Returns out (batch, dim, L) in u's dtype and, with
    ``return_last_state``, the last state (batch, dim, N) in fp32 (fp64 for fp64 inputs).
    """
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
    h = uf.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t, (dt_t, u_t) in enumerate(zip(dt.unbind(-1), uf.unbind(-1))):
        B_t = B0 if Bs is None else Bs[t]
        C_t = C0 if Cs is None else Cs[t]
        h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * u_t)[..., None] * B_t   # (batch, dim, N)
        ys.append((h * C_t).sum(-1))                                             # (batch, dim)
    out = torch.stack(ys, -1)
    if D is not None:
        out = out + uf * D.to(f)[:, None]
    if z is not None:
        out = out * F.silu(z.to(f))
    out = out.to(u.dtype)
    return (out, h) if return_last_state else out


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


def _cpu_path(args) -> bool:
    """Whether the reference backend runs the C++ kernel (else the oracle itself, which also serves
    the differentiation modes the kernel has no rule for: forward AD, torch.func's grad)."""
    u, A = args[0], args[2]
    return (u.device.type == "cpu" and u.dtype in KERNEL_DTYPES and A.shape[1] <= MAX_STATE
            and _ext.cpu_module() is not None
            and not _backend.autodiff_transforms([t for t in args if t is not None]))


@follows_autocast(NONE)
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, backend: str | None = None):
    """Drop-in for ``mamba_ssm``'s ``selective_scan_fn`` (shapes: :func:`selective_scan_ref`).

    Returns out (batch, dim, L) in u's dtype, and the last state (batch, dim, N, fp32) with
    ``return_last_state``. Gradients flow to every tensor argument (and through the last state).
    delta, B, C and z are computed in u's dtype; A, D and delta_bias in fp32.
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias)
    chosen = choose(SELECTIVE_SCAN, args, {}, backend)
    if chosen == "reference" and not _cpu_path(args):
        return selective_scan_ref(*args, delta_softplus, return_last_state)
    impl = "cpu" if chosen == "reference" else chosen
    dt = u.dtype
    as4 = lambda X: (X.unsqueeze(1) if X.dim() == 3 else X).to(dt)  # noqa: E731  (batch, 1, N, L)
    opt = lambda t, dtype: t.to(dtype) if t is not None else None  # noqa: E731
    out, states = selective_scan_fwd_op(u, delta.to(dt), A.float(), as4(B), as4(C), opt(D, torch.float32),
                                        opt(z, dt), opt(delta_bias, torch.float32), bool(delta_softplus), impl)
    return (out, states[:, :, -1]) if return_last_state else out


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
                               dt_softplus: bool = False) -> Tensor:
    """Reference decoding step: one step of :func:`selective_scan_ref`. **Updates ``state`` in
    place** (rounded to its dtype) and returns out (batch, dim) in x's dtype.

    state: (batch, dim, N); x, dt, z: (batch, dim); A: (dim, N); B, C: (batch, N) or (batch, G, N)
    with G dividing dim; D, dt_bias: (dim,). Math in fp32 (fp64 for fp64 inputs)."""
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
                              dt_softplus: bool, backend: str) -> Tensor:
    """B, C (batch, G, N); dt, z, B, C in x's dtype; A, D, dt_bias fp32; ``backend``: triton or cuda."""
    return _backend.launchers(backend, x.device).selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                                        dt_softplus)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    return x.new_empty(x.shape)


def _check_state_update(state, x, dt, A, B, C, D, z, dt_bias):
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name} must be a real floating-point tensor; got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if isinstance(t, Tensor) else ""))
    if state.dim() != 3 or x.shape != state.shape[:2] or dt.shape != x.shape or A.shape != state.shape[1:]:
        raise ValueError(f"expected state (batch, dim, N), x and dt (batch, dim), A (dim, N); got state "
                         f"{list(state.shape)}, x {list(x.shape)}, dt {list(dt.shape)}, A {list(A.shape)}")
    batch, dim, N = state.shape
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
                           dt_softplus: bool = False, *, backend: str | None = None) -> Tensor:
    """One decoding step of the scan (``mamba_ssm``'s ``selective_state_update``). **Updates
    ``state`` in place** with the new state and returns out (batch, dim) in x's dtype.

    state: (batch, dim, N), fp32 or x's dtype on the kernel backends; x, dt, z: (batch, dim);
    A: (dim, N); B, C: (batch, N) or (batch, G, N) with G dividing dim; D, dt_bias: (dim,).
    dt, z, B and C are read in x's dtype; A, D and dt_bias in fp32; math in fp32. Inference only:
    runs under ``torch.no_grad()``.
    """
    _check_state_update(state, x, dt, A, B, C, D, z, dt_bias)
    args = (state, x, dt, A, B, C, D, z, dt_bias)
    with torch.no_grad():
        chosen = choose(SELECTIVE_STATE_UPDATE, args, {}, backend)
        if chosen == "reference":
            return selective_state_update_ref(*args, dt_softplus)
        xt = x.dtype
        as3 = lambda X: (X.unsqueeze(1) if X.dim() == 2 else X).to(xt)  # noqa: E731  (batch, G, N)
        opt = lambda t, dtype: t.to(dtype) if t is not None else None  # noqa: E731
        return selective_state_update_op(state, x, dt.to(xt), A.float(), as3(B), as3(C), opt(D, torch.float32),
                                         opt(z, xt), opt(dt_bias, torch.float32), bool(dt_softplus), chosen)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def _supports(backend, u, delta, A, B, C, D=None, z=None, delta_bias=None, *rest, **kw):
    reasons = []
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


def _bench_cases(device, dtype, quick):
    # --quick keeps L short: on CPU the sequential reference and the log-depth peer take seconds.
    shapes = ([(2, 256, 512, 16)] if quick else [(2, 256, 2048, 16)] if device.type == "cpu"
              else [(2, 256, 2048, 16), (8, 1536, 2048, 16)])
    for batch, dim, L, N in shapes:
        u, dl, A, B, C, D, z, bias = make_inputs(batch, dim, L, N, device=device, dtype=dtype)
        yield Sample(f"b{batch}_d{dim}_L{L}_N{N}", (u, dl, A, B, C, D, z, bias), {"delta_softplus": True},
                     tuple(range(8)))


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


def _update_supports(backend, state, x, *rest, **kw):
    reasons = []
    if x.dtype not in KERNEL_DTYPES:
        reasons.append(f"x dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    if state.dtype not in (x.dtype, torch.float32):
        reasons.append(f"state dtype {state.dtype} must be float32 or x's dtype {x.dtype}")
    if state.shape[2] > MAX_STATE:
        reasons.append(f"N = {state.shape[2]} is larger than {MAX_STATE}, the most the {backend} kernel takes")
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


def _update_bench_cases(device, dtype, quick):
    """Decode shapes: batch 64, d_inner 4096 (Mamba-2.8b's 2 x 2560 rounded), N 16, fp32 state."""
    batch, dim = (64, 4096) if device.type == "cuda" else (8, 1024)
    yield Sample(f"b{batch}_d{dim}_N16", _update_inputs(batch, dim, 16, device=device, dtype=dtype,
                                                        state_dtype=torch.float32), {"dt_softplus": True})


def _update_cost(sample):
    """The state read and written, A read; x, dt, z, out (batch, dim) and B, C once per batch row."""
    state, x, A, B, C = (sample.args[i] for i in (0, 1, 3, 4, 5))
    s = x.element_size()
    return Cost(fwd_bytes=2 * state.numel() * state.element_size() + A.numel() * A.element_size()
                + 4 * x.numel() * s + (B.numel() + C.numel()) * s, bwd_bytes=0,
                fwd_flops=6.0 * state.numel())


SELECTIVE_STATE_UPDATE = register_op(OpSpec(
    name="selective_state_update", family="ssm", fn=selective_state_update, reference=selective_state_update_ref,
    backends=("triton", "cuda"), auto_order=("triton", "cuda"), supports=_update_supports,
    samples=_update_samples, bench_cases=_update_bench_cases, cost=_update_cost,
    torch_equivalent=selective_state_update_ref, launchers=("selective_state_update",),
))
