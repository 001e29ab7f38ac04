"""Selective scan: what the generic registry tests do not cover. The default CPU path (the C++
kernel in dlkern._C_cpu) against the sequential oracle in fp64 for every option; long sequences
with strongly negative A; lengths around the chunk; NaN-poisoned outputs; the last state's
gradient; ``selective_state_update`` against the full scan and, on every kernel backend, its
in-place state against the reference; argument errors; opcheck of the CPU
variant of the custom ops. The kernel backends get the registry samples through test_ops.py."""
import pytest
import torch

import dlkern
from dlkern import _ext
from dlkern.backend import availability
from dlkern.ops.selective_scan import (make_inputs, selective_scan, selective_scan_bwd_op, selective_scan_fwd_op,
                                       selective_scan_ref)
from dlkern.ops.selective_state_update import (_update_inputs, _update_samples, selective_state_update,
                                               selective_state_update_ref)
from numerics import assert_close_to_reference

needs_cpu_kernels = pytest.mark.skipif(_ext.cpu_module() is None, reason=_ext.cpu_unavailable_reason()
                                       if _ext.cpu_module() is None else "")
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _grads(fn, args, kwargs, seed=7):
    leaves = [a.detach().clone().requires_grad_(True) if a is not None else None for a in args]
    outs = fn(*leaves, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    cots = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outs]
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad(outs, present, cots)
    names = [n for n, a in zip(ARG_NAMES, leaves) if a is not None]
    return outs, dict(zip(names, grads))


def _compare_with_oracle(args, kwargs, dtype=torch.float32, backend=None):
    """The default path, or the named backend (dtype) vs the oracle in fp64, tolerance from the
    oracle run in dtype."""
    args = [a.to(dtype) if a is not None else None for a in args]
    outs, grads = _grads(lambda *a, **k: selective_scan(*a, **k, backend=backend), args, kwargs)
    exact = [a.double() if a is not None else None for a in args]
    e_outs, e_grads = _grads(selective_scan_ref, exact, kwargs)
    l_outs, l_grads = _grads(selective_scan_ref, args, kwargs)
    for k, (o, e, l) in enumerate(zip(outs, e_outs, l_outs)):
        assert_close_to_reference(f"output {k}", o, e, l, dtype)
    assert grads.keys() == e_grads.keys()
    for name in grads:
        assert grads[name].dtype == dict(zip(ARG_NAMES, args))[name].dtype
        assert_close_to_reference(f"grad of {name}", grads[name], e_grads[name], l_grads[name], dtype)


OPTION_CASES = {
    "all_options": (dict(), dict(delta_softplus=True), ()),
    "no_optionals": (dict(softplus=False), dict(), ("D", "z", "delta_bias")),
    "grouped_G2": (dict(groups=2), dict(delta_softplus=True), ()),
    "grouped_G4_last_state": (dict(groups=4), dict(delta_softplus=True, return_last_state=True), ("z",)),
    "time_invariant_BC": (dict(variable_B=False, variable_C=False), dict(delta_softplus=True), ()),
    "invariant_B_variable_C": (dict(variable_B=False, softplus=False), dict(return_last_state=True), ("D",)),
}


@needs_cpu_kernels
@pytest.mark.parametrize("case", OPTION_CASES, ids=list(OPTION_CASES))
@pytest.mark.parametrize("L", [1, 3, 64, 65, 1000])
def test_cpu_path_matches_oracle(case, L):
    opts, kwargs, drop = OPTION_CASES[case]
    args = list(make_inputs(2 if L < 1000 else 1, 8, L, 5, seed=L, **opts))
    for name in drop:
        args[ARG_NAMES.index(name)] = None
    _compare_with_oracle(args, kwargs)


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_path_half_inputs(dtype):
    _compare_with_oracle(make_inputs(2, 4, 70, 16, seed=3), dict(delta_softplus=True), dtype)


@needs_cpu_kernels
def test_cpu_path_state_size_16_batch_1():
    _compare_with_oracle(make_inputs(1, 16, 200, 16, seed=4, groups=2), dict(delta_softplus=True))


CUDA_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")   # cpu: the emulation build
CUDA_UNAVAILABLE = "; ".join(dlkern.backend.availability("cuda", CUDA_DEVICE))
# (batch, dim, L, N, make_inputs options, kwargs, dropped args, dtype). Beyond the registry
# samples: N > 32 (the block loops over n), several warps and block chunks (forward 2048 steps,
# backward 512), L not a multiple of the 16 / 4 steps a thread holds (scalar loads) and one that is
# (vector loads), variable B/C over several chunks (the backward's striped atomics).
CUDA_CASES = {
    "N64_all_options": (1, 2, 100, 64, dict(), dict(delta_softplus=True), (), torch.float32),
    "N40_grouped_G2_L130": (1, 4, 130, 40, dict(groups=2), dict(delta_softplus=True), ("z",), torch.float32),
    "L1": (2, 3, 1, 5, dict(), dict(delta_softplus=True, return_last_state=True), (), torch.float32),
    "L3_time_invariant": (1, 2, 3, 3, dict(variable_B=False, variable_C=False), dict(delta_softplus=True), (),
                          torch.float32),
    "L1000_two_chunks_last_state": (1, 2, 1000, 4, dict(groups=2), dict(delta_softplus=True, return_last_state=True),
                                    (), torch.float32),
    "L1000_invariant_B_bf16": (1, 2, 1000, 3, dict(variable_B=False, softplus=False), dict(), ("D",),
                               torch.bfloat16),
    "L517_fp16_no_optionals": (1, 1, 517, 6, dict(softplus=False), dict(), ("D", "z", "delta_bias"), torch.float16),
    "L2100_two_forward_chunks_G2": (1, 2, 2100, 3, dict(groups=2), dict(delta_softplus=True), (), torch.float32),
    "L2112_vector_bf16": (1, 2, 2112, 2, dict(), dict(delta_softplus=True), (), torch.bfloat16),
}


@pytest.mark.skipif(bool(CUDA_UNAVAILABLE), reason=CUDA_UNAVAILABLE or "available")
@pytest.mark.parametrize("case", CUDA_CASES, ids=list(CUDA_CASES))
def test_cuda_kernels_match_oracle(case):
    batch, dim, L, N, opts, kwargs, drop, dtype = CUDA_CASES[case]
    args = list(make_inputs(batch, dim, L, N, seed=L + N, device=CUDA_DEVICE, **opts))
    for name in drop:
        args[ARG_NAMES.index(name)] = None
    _compare_with_oracle(args, kwargs, dtype, backend="cuda")


def _long_strongly_negative(dim=4):
    u, delta, A, B, C, D, z, bias = make_inputs(1, dim, 4096, 8, seed=9)
    return (u, delta, A * 1000.0, B, C, D, z, bias)   # exp(dt A) underflows to 0 on most steps


@pytest.mark.parametrize("path", ["default", "triton", "cuda"])
def test_long_sequence_strongly_negative_A_stays_finite(path):
    if path != "default" and dlkern.backend.availability(path, torch.device("cpu")):
        pytest.skip("; ".join(dlkern.backend.availability(path, torch.device("cpu"))))
    args = _long_strongly_negative(dim=4 if path == "default" else 1)  # interpreter, emulator: slow
    out, last = selective_scan(*args, delta_softplus=True, return_last_state=True,
                               backend=None if path == "default" else path)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    exact_out, exact_last = selective_scan_ref(*(a.double() for a in args), delta_softplus=True,
                                               return_last_state=True)
    torch.testing.assert_close(out.double(), exact_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), exact_last, rtol=1e-4, atol=1e-4)


@needs_cpu_kernels
def test_long_sequence_gradients_finite():
    args = _long_strongly_negative()
    outs, grads = _grads(lambda *a: selective_scan(*a, delta_softplus=True), args, {})
    assert all(torch.isfinite(g).all() for g in grads.values())


@needs_cpu_kernels
def test_cpu_outputs_fully_written_under_nan_fill():
    """The C++ launchers NaN-fill every output and partial buffer (tests enable it): any element
    they skip shows up as NaN here."""
    dlkern.debug.set_debug_nan_fill(True)
    args = make_inputs(3, 6, 130, 7, seed=11, groups=3)
    packing = (torch.randn(3, 6, 7), torch.arange(390, dtype=torch.int32).reshape(3, 130) // 50)
    out, states = selective_scan_fwd_op(args[0], args[1], args[2], args[3], args[4], args[5], args[6],
                                        args[7], True, *packing, "cpu")
    grads = selective_scan_bwd_op(torch.randn_like(out), *args[:5], args[5], args[6], args[7], True,
                                  states, torch.randn(3, 6, 7), *packing, "cpu")
    assert grads[-1].shape == (3, 6, 7)   # d initial_state
    for t in (out, states, *grads):
        assert torch.isfinite(t).all()


@needs_cpu_kernels
def test_last_state_gradient_alone():
    """A loss on the last state only (dout is None in the backward)."""
    args = make_inputs(2, 4, 100, 3, seed=12)
    kw = dict(delta_softplus=True, return_last_state=True)
    leaves = [a.clone().requires_grad_(True) for a in args]
    (g,) = torch.autograd.grad(selective_scan(*leaves, **kw)[1].square().sum(), leaves[2])
    exact = [a.double().requires_grad_(True) for a in args]
    (e,) = torch.autograd.grad(selective_scan_ref(*exact, **kw)[1].square().sum(), exact[2])
    torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)


@needs_cpu_kernels
def test_cpu_path_ignores_thread_count():
    args = make_inputs(2, 8, 150, 4, seed=13)
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        results.append(_grads(lambda *a: selective_scan(*a, delta_softplus=True), args, {})[1])
    torch.set_num_threads(threads)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


@pytest.mark.parametrize("grouped", [False, True])
def test_state_update_steps_equal_the_full_scan(grouped):
    batch, dim, L, N = 2, 6, 9, 4
    u, delta, A, B, C, D, z, bias = make_inputs(batch, dim, L, N, seed=14, groups=3 if grouped else 1)
    full, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, True)
    state = torch.zeros(batch, dim, N)
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                   bias, dt_softplus=True) for t in range(L)]
    torch.testing.assert_close(torch.stack(outs, -1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


UPDATE_BACKENDS = ["triton", "cuda"]


def _need(backend):
    reasons = availability(backend, torch.device("cpu"))
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
@pytest.mark.parametrize("dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float16, torch.float16)])
@pytest.mark.parametrize("sample", [s.name for s in _update_samples(torch.device("cpu"), torch.float32)])
def test_state_update_kernels_update_the_state_in_place(backend, dtype, state_dtype, sample):
    """Output and the new state against the reference in fp64, tolerance from the reference run in
    the low precision; the state tensor is the one given (in place), NaN-poisoned outputs."""
    _need(backend)
    args, kwargs = next((s.args, s.kwargs) for s in _update_samples(torch.device("cpu"), torch.float32)
                        if s.name == sample)
    low = [a.to(dtype) if a is not None else None for a in args]
    low[0] = args[0].to(state_dtype)
    state = torch.empty_strided(args[0].shape, args[0].stride(), dtype=state_dtype).copy_(low[0])
    ptr = state.data_ptr()
    out = selective_state_update(state, *low[1:], **kwargs, backend=backend)
    assert state.data_ptr() == ptr and out.dtype == dtype and state.dtype == state_dtype
    exact = [a.double() if a is not None else None for a in low]
    e_out = selective_state_update_ref(*exact, **kwargs)
    l_state = low[0].clone()
    l_out = selective_state_update_ref(l_state, *low[1:], **kwargs)
    assert_close_to_reference("out", out, e_out, l_out, dtype)
    assert_close_to_reference("state", state, exact[0], l_state, state_dtype)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_state_update_kernels_decode_a_sequence(backend):
    """Token by token with the kernel equals the full scan (fp32 state carried across 9 steps)."""
    _need(backend)
    batch, dim, L, N = 2, 6, 9, 4
    u, delta, A, B, C, D, z, bias = make_inputs(batch, dim, L, N, seed=14, groups=3)
    full, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, True)
    state = torch.zeros(batch, dim, N)
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                   bias, dt_softplus=True, backend=backend) for t in range(L)]
    torch.testing.assert_close(torch.stack(outs, -1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


def test_state_update_refuses_what_the_kernels_cannot_compute():
    state, x, dt, A, B, C, D, z, bias = _update_inputs(1, 2, 3, dtype=torch.float32, state_dtype=torch.float16)
    with pytest.raises(dlkern.BackendError, match="state dtype"):
        selective_state_update(state, x, dt, A, B, C, backend="triton")
    with pytest.raises(ValueError, match="z must have"):
        selective_state_update(state, x, dt, A, B, C, z=z[:, :1])


def test_scan_then_decode_continues_the_sequence():
    """Prefill with return_last_state, then decode with the state: same as one longer scan."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 12, 3, seed=15)
    full = selective_scan(u, delta, A, B, C, D, z, bias, True)
    _, state = selective_scan(u[..., :10], delta[..., :10], A, B[..., :10], C[..., :10], D, z[..., :10],
                              bias, True, True)
    state = state.clone()
    for t in (10, 11):
        out = selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                     bias, True)
        torch.testing.assert_close(out, full[..., t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (dict(u=torch.randn(2, 3)), "u must be"),
    (dict(delta=torch.randn(2, 3, 6)), "delta must have u's shape"),
    (dict(A=torch.randn(4, 2)), "A must be"),
    (dict(B=torch.randn(2, 2, 2, 5)), "B must be"),
    (dict(C=torch.randn(3, 5)), "C must be"),
    (dict(D=torch.randn(4)), "D must be"),
    (dict(u=torch.randint(0, 3, (2, 3, 5))), "u must be a real floating-point"),
])
def test_bad_arguments_raise(bad, match):
    args = dict(zip(ARG_NAMES, make_inputs(2, 3, 5, 2, seed=16)))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        selective_scan(*args.values())


def test_named_backend_does_not_fall_back():
    args = [a.double() for a in make_inputs(1, 2, 3, 2)]
    with pytest.raises(dlkern.BackendError, match="float64"):
        selective_scan(*args, backend="triton")


@needs_cpu_kernels
def test_opcheck_cpu_custom_ops():
    args = make_inputs(2, 4, 70, 3, seed=17, groups=2)
    seq_idx = torch.tensor([[0] * 30 + [1] * 40, [3] * 70], dtype=torch.int32)
    for packing in ((None, None), (torch.randn(2, 4, 3), seq_idx)):
        fwd_args = (*args, True, *packing, "cpu")
        torch.library.opcheck(selective_scan_fwd_op, fwd_args)
        out, states = selective_scan_fwd_op(*fwd_args)
        torch.library.opcheck(selective_scan_bwd_op, (torch.randn_like(out), *args, True, states,
                                                       torch.randn(2, 4, 3), *packing, "cpu"))


@needs_cpu_kernels
def test_compile_fullgraph_cpu_path():
    args = make_inputs(1, 4, 20, 3, seed=18)
    fn = lambda *a: selective_scan(*a, delta_softplus=True)  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    _, g_eager = _grads(fn, args, {})
    _, g_comp = _grads(compiled, args, {})
    for name in g_eager:
        torch.testing.assert_close(g_comp[name], g_eager[name])


def test_reference_path_beyond_the_cpu_kernels_state_limit():
    """N > 256 on CPU runs the oracle instead of raising from the C++ kernel."""
    u, delta, A, B, C = make_inputs(1, 1, 3, 257, seed=19)[:5]
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, delta_softplus=True),
                               selective_scan_ref(u, delta, A, B, C, delta_softplus=True))
