"""Generic numerics: every registered op x kernel backend x dtype x sample input, forward and every
gradient, against the op's reference run in fp64 (tolerance from the reference's own error in the
low precision). An op registered in dlkern/ops gets these tests for free."""
import pytest
import torch

import dlkern
from dlkern.backend import availability
from numerics import (as_tuple, assert_close_to_reference, clone_inputs, run_with_grads,
                      to_double)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_CPU = torch.device("cpu")


def _cases():
    for op in dlkern.all_ops():
        names = [s.name for s in op.samples(_CPU, torch.float32)]
        for backend in op.backends:
            for dtype in op.dtypes:
                for name in names:
                    yield pytest.param(op, backend, dtype, name,
                                       id=f"{op.name}-{backend}-{str(dtype)[6:]}-{name}")


def _skip_reason(op, backend, dtype):
    reasons = availability(backend, DEVICE)
    if reasons:
        return "; ".join(reasons)
    return None


def _interpreter_refuses(op, backend, dtype):
    """Triton's interpreter computes bf16 tl.dot wrongly: the triton backend refuses such inputs."""
    return backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16 and op.uses_tl_dot


@pytest.mark.parametrize("op,backend,dtype,sample_name", list(_cases()))
def test_matches_reference(op, backend, dtype, sample_name):
    reason = _skip_reason(op, backend, dtype)
    if reason:
        pytest.skip(reason)
    sample = next(s for s in op.samples(DEVICE, dtype) if s.name == sample_name)
    if _interpreter_refuses(op, backend, dtype) and not any(
            isinstance(a, torch.Tensor) and a.numel() == 0 for a in sample.args):  # empty: the reference runs
        with pytest.raises(dlkern.BackendError, match="interpreter .* computes tl.dot with bfloat16 operands wrongly"):
            op.fn(*sample.args, backend=backend, **sample.kwargs)
        return
    args = clone_inputs(sample.args, sample.grad_inputs)
    outs, grads, cot = run_with_grads(op.fn, args, sample.grad_inputs, backend=backend, **sample.kwargs)

    exact_args = clone_inputs(to_double(sample.args), sample.grad_inputs)
    exact_outs, exact_grads, _ = run_with_grads(op.reference, exact_args, sample.grad_inputs, cot, **sample.kwargs)
    low_args = clone_inputs(sample.args, sample.grad_inputs)
    low_outs, low_grads, _ = run_with_grads(op.reference, low_args, sample.grad_inputs, cot, **sample.kwargs)

    assert len(outs) == len(exact_outs)
    for k, (o, e, l) in enumerate(zip(outs, exact_outs, low_outs)):
        assert o.dtype == l.dtype, f"output {k}: dtype {o.dtype} != reference dtype {l.dtype}"
        assert_close_to_reference(f"output {k}", o, e, l, dtype, op.floor_factor)
    for i, g, e, l in zip(sample.grad_inputs, grads, exact_grads, low_grads):
        assert (g is None) == (e is None), f"grad of arg {i}: presence differs from the reference"
        if e is not None:
            assert g.dtype == args[i].dtype, f"grad of arg {i}: dtype {g.dtype} != input dtype {args[i].dtype}"
            assert_close_to_reference(f"grad of arg {i}", g, e, l, dtype, op.floor_factor)


@pytest.mark.parametrize("op", dlkern.all_ops(), ids=lambda op: op.name)
def test_reference_gradcheck(op):
    """The reference itself is differentiable and its analytic gradients are right (fp64)."""
    samples = list(op.samples(_CPU, torch.float64))
    if not any(s.grad_inputs for s in samples):
        pytest.skip(f"{op.name} is not differentiable (its samples check no gradient)")
    small = [s for s in samples if s.grad_inputs and s.args[0].numel() <= 400]
    assert small, f"{op.name} has no sample small enough for gradcheck"
    for sample in small[:2]:  # two are enough to check the formula; each costs seconds
        args = clone_inputs(to_double(sample.args), sample.grad_inputs)
        fn = lambda *diff: as_tuple(op.reference(*_place(args, sample.grad_inputs, diff), **sample.kwargs))  # noqa: E731
        assert torch.autograd.gradcheck(fn, tuple(args[i] for i in sample.grad_inputs)), sample.name


def _place(args, idx, values):
    args = list(args)
    for i, v in zip(idx, values):
        args[i] = v
    return args
