"""Differentiation beyond first-order ``torch.autograd``, for every registered op: forward-mode AD
(``jacfwd``, ``forward_ad.make_dual``), ``torch.func``'s reverse-mode transforms and double backward.
The default path (the reference on CPU) gives the reference's Jacobian in every mode; a kernel
backend asked for by name refuses with an error naming the op and ``backend="reference"`` (its
kernels have a reverse-mode formula only). Never a zero tangent."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import dlkern
from dlkern.backend import availability
from numerics import as_tuple, to_double

_CPU = torch.device("cpu")
FIX = r'backend="reference"'


def _size(sample):
    return sum(a.numel() for a in sample.args if isinstance(a, torch.Tensor))


def _sample(op, dtype=torch.float32):
    """A small differentiable sample: Jacobians are (outputs x inputs) matrices."""
    samples = [s for s in op.samples(_CPU, dtype) if s.grad_inputs]
    fits = [s for s in samples if 20 <= _size(s) <= 600]
    return (fits or sorted(samples, key=_size) or [None])[0]


def _as_fn(fn, sample, **kwargs):
    """``f(*differentiated inputs) -> floating outputs``, on fresh copies of the other arguments
    (some ops update running statistics in place)."""
    def f(*diff):
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
        for i, v in zip(sample.grad_inputs, diff):
            args[i] = v
        return tuple(o for o in as_tuple(fn(*args, **sample.kwargs, **kwargs)) if o.is_floating_point())
    return f


def _inputs(sample, double=False):
    args = to_double(sample.args) if double else sample.args
    return tuple(args[i].detach().clone() for i in sample.grad_inputs)


def _differentiable_ops():
    return [op for op in dlkern.all_ops() if _sample(op) is not None]


def _assert_jacobian(name, got, exact):
    flat_got = torch.cat([j.reshape(-1) for row in got for j in row]).double()
    flat_exact = torch.cat([j.reshape(-1) for row in exact for j in row])
    assert flat_exact.abs().max() > 0, "the sample's Jacobian is zero: choose another sample"
    err = (flat_got - flat_exact).abs().max().item()
    assert err <= 1e-4 * max(1.0, flat_exact.abs().max().item()), f"{name}: max error {err:.3e}"


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("op", _differentiable_ops(), ids=lambda op: op.name)
def test_jacfwd_equals_jacrev_equals_reference(op, backend):
    sample = _sample(op)
    f = _as_fn(op.fn, sample, backend=backend)
    diff = _inputs(sample)
    argnums = tuple(range(len(diff)))
    exact = torch.autograd.functional.jacobian(_as_fn(op.reference, to_double_sample(sample)),
                                               _inputs(sample, double=True))
    _assert_jacobian("jacrev", torch.func.jacrev(f, argnums)(*diff), exact)
    # also where torch's own op has no forward-AD formula (CPU SDPA, _weight_norm): dlkern's has
    _assert_jacobian("jacfwd", torch.func.jacfwd(f, argnums)(*diff), exact)


def to_double_sample(sample):
    return type(sample)(sample.name, to_double(sample.args), sample.kwargs, sample.grad_inputs)


def _kernel_cases():
    for op in _differentiable_ops():
        for backend in op.backends:
            yield pytest.param(op, backend, id=f"{op.name}-{backend}")


def _skip_unavailable(backend):
    reasons = availability(backend, _CPU)
    if reasons:
        pytest.skip("; ".join(reasons))


def _make_dual(f, diff):
    with fwAD.dual_level():
        duals = [fwAD.make_dual(d, torch.randn_like(d)) for d in diff]
        return [fwAD.unpack_dual(o).tangent for o in f(*duals)]


@pytest.mark.parametrize("op,backend", list(_kernel_cases()))
def test_kernel_backend_refuses_what_its_kernels_cannot_differentiate(op, backend):
    _skip_unavailable(backend)
    sample = _sample(op)
    f = _as_fn(op.fn, sample, backend=backend)
    diff = _inputs(sample)
    total = lambda *d: sum(o.sum() for o in f(*d))  # noqa: E731
    batched = (diff[0].unsqueeze(0).expand(2, *diff[0].shape).clone(),) + diff[1:]
    transforms = {
        "jacfwd": lambda: torch.func.jacfwd(f)(*diff),
        "make_dual": lambda: _make_dual(f, diff),
        "jacrev": lambda: torch.func.jacrev(f)(*diff),
        "grad": lambda: torch.func.grad(total)(*diff),
        "vmap(grad)": lambda: torch.func.vmap(torch.func.grad(total), (0,) + (None,) * (len(diff) - 1))(*batched),
    }
    for name, run in transforms.items():
        with pytest.raises(dlkern.BackendError, match=rf"dlkern\.{op.name}: .*{FIX}"):
            run()
            pytest.fail(f"{name} ran on backend {backend!r}")


@pytest.mark.parametrize("op,backend", list(_kernel_cases()))
def test_double_backward_on_kernel_backend_names_the_fix(op, backend):
    _skip_unavailable(backend)
    sample = _sample(op)
    diff = [d.requires_grad_() for d in _inputs(sample)]
    outs = _as_fn(op.fn, sample, backend=backend)(*diff)
    grads = torch.autograd.grad([o.square().sum() for o in outs if o.requires_grad], diff,
                                create_graph=True, allow_unused=True)
    second = sum(g.square().sum() for g in grads if g is not None and g.requires_grad)
    assert isinstance(second, torch.Tensor), "no gradient of the first backward is differentiable"
    with pytest.raises(dlkern.BackendError, match=rf"dlkern\..*{op.name}.*double backward.*{FIX}"):
        second.backward()
