"""torch.autocast: every op follows torch's policy for its torch equivalent on every backend
(dlkern/autocast.py), and half inputs with fp32 parameters (mixed precision without autocast)
run on the kernel backends as torch runs them."""
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import dlkern
import dlkern.nn.functional as DF
from dlkern.autocast import FP32_ON_CUDA, LOWER, NONE, cast_args
from dlkern.backend import availability, reasons_against
from numerics import assert_close_to_reference, clone_inputs, run_with_grads, to_double

CPU = torch.device("cpu")
HALF = (torch.bfloat16, torch.float16)
BACKENDS = ("reference", "triton", "cuda")


def _need(backend):
    reasons = availability(backend, CPU) if backend != "reference" else []
    if reasons:
        pytest.skip("; ".join(reasons))


# ---------------------------------------------------------------------------------------------
# The policy table against torch's own lists
# ---------------------------------------------------------------------------------------------
# dlkern op -> the aten op whose autocast policy it follows (None: no torch equivalent).
ATEN_EQUIVALENT = {
    "layer_norm": "layer_norm", "add_layer_norm": "layer_norm", "rms_norm": "rms_norm",
    "add_rms_norm": "rms_norm", "group_norm": "group_norm", "group_norm_silu": "group_norm",
    "batch_norm": "batch_norm", "instance_norm": "instance_norm", "weight_norm": "_weight_norm",
    "depthwise_conv2d": "conv2d", "dilated_conv1d": "conv1d", "causal_conv1d": "conv1d",
    "wavenet_layer": "conv1d", "scaled_dot_product_attention": "scaled_dot_product_attention",
    "flash_attn_varlen": "scaled_dot_product_attention",
    "flash_attn_with_kvcache": "scaled_dot_product_attention",
}


def _header_list(text, macro):
    body = text.split(f"#define {macro}(_)", 1)[1].split("#define", 1)[0]
    return set(re.findall(r"_\((\w+)", body))


def test_cuda_policy_matches_torchs_header():
    header = pathlib.Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip(f"torch ships no {header} here (a build without C++ headers)")
    text = header.read_text()
    lower, fp32 = _header_list(text, "AT_FORALL_LOWER_PRECISION_FP"), _header_list(text, "AT_FORALL_FP32")
    checked = 0
    for op in dlkern.all_ops():
        aten = ATEN_EQUIVALENT.get(op.name)
        policy = op.fn.autocast_policy
        if op.family == "optim":
            continue
        if aten is None:
            assert policy == NONE, f"{op.name}: no torch equivalent, so autocast must leave it alone; got {policy}"
            continue
        expected = "lower" if aten in lower else "fp32" if aten in fp32 else None
        assert policy.get("cuda") == expected, f"{op.name} ({aten}): cuda policy {policy.get('cuda')} != torch's {expected}"
        checked += 1
    assert checked >= 10


def test_cpu_policy_matches_torch():
    """CPU autocast casts convolutions and attention only: norms keep the dtypes they are given."""
    x = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", torch.bfloat16):
        assert F.layer_norm(x.bfloat16(), (6,), torch.randn(6)).dtype == torch.bfloat16
        assert F.group_norm(x, 2).dtype == torch.float32
        assert F.conv2d(x, torch.randn(4, 1, 3, 3), groups=4).dtype == torch.bfloat16
    assert LOWER["cpu"] == "lower" and "cpu" not in FP32_ON_CUDA
    # cast_args mirrors torch's eligibility: float64 and integer tensors are never cast.
    args, kw = cast_args(FP32_ON_CUDA, "cuda", (x.half(), x.double(), torch.ones(2, dtype=torch.long)), {"w": x.bfloat16()})
    assert [a.dtype for a in args] + [kw["w"].dtype] == [torch.float32, torch.float64, torch.long, torch.float32]


# ---------------------------------------------------------------------------------------------
# Every op under CPU autocast, every backend: the reference on the arguments torch's policy
# casts, forward and gradients, with the op's output dtypes
# ---------------------------------------------------------------------------------------------
def _cases():
    for op in dlkern.all_ops():
        if op.family == "optim":
            continue
        for backend in BACKENDS:
            if backend == "reference" or backend in op.backends:
                for dtype in HALF:
                    yield pytest.param(op, backend, dtype, id=f"{op.name}-{backend}-{str(dtype)[6:]}")


def _first_sample(op):
    for s in op.samples(CPU, torch.float32):
        tensors = [a for a in s.args if isinstance(a, torch.Tensor)]
        if all(t.numel() > 0 for t in tensors) and sum(t.numel() for t in tensors) < 20000:
            return s
    pytest.fail(f"{op.name} has no small non-empty sample")


@pytest.mark.parametrize("op,backend,dtype", list(_cases()))
def test_op_under_cpu_autocast(op, backend, dtype):
    _need(backend)
    sample = _first_sample(op)
    policy = op.fn.autocast_policy

    def cast(*a):  # what torch's policy hands the op; the reference then runs without autocast
        with torch.autocast("cpu", dtype):
            return cast_args(policy, "cpu", a, {})[0]
    cast_sample = cast(*sample.args)
    compute_dtype = next(a.dtype for a in cast_sample if isinstance(a, torch.Tensor) and a.is_floating_point())
    if backend != "reference":
        reasons = reasons_against(op, backend, cast_sample, sample.kwargs)
        if reasons:  # e.g. bf16 tl.dot under the interpreter: refused by name, never served
            with torch.autocast("cpu", dtype), pytest.raises(dlkern.BackendError):
                op.fn(*sample.args, backend=backend, **sample.kwargs)
            return
    def under_autocast(*a, **k):  # the forward under autocast; the backward outside it, as in training
        with torch.autocast("cpu", dtype):
            return op.fn(*a, **k)
    args = clone_inputs(sample.args, sample.grad_inputs)
    outs, grads, cot = run_with_grads(under_autocast, args, sample.grad_inputs, backend=backend, **sample.kwargs)
    ref = lambda *a, **k: op.reference(*cast(*a), **k)  # noqa: E731
    low_outs, low_grads, _ = run_with_grads(ref, clone_inputs(sample.args, sample.grad_inputs),
                                            sample.grad_inputs, cot, **sample.kwargs)
    exact_outs, exact_grads, _ = run_with_grads(op.reference, clone_inputs(to_double(sample.args), sample.grad_inputs),
                                                sample.grad_inputs, cot, **sample.kwargs)
    for k, (o, e, low) in enumerate(zip(outs, exact_outs, low_outs)):
        assert o.dtype == low.dtype, f"output {k}: dtype {o.dtype} != torch's policy's {low.dtype}"
        assert_close_to_reference(f"output {k}", o, e, low, compute_dtype, op.floor_factor)
    for i, g, e, low in zip(sample.grad_inputs, grads, exact_grads, low_grads):
        if e is not None:
            assert g.dtype == args[i].dtype, f"grad of arg {i}: dtype {g.dtype} != its leaf's {args[i].dtype}"
            assert_close_to_reference(f"grad of arg {i}", g, e, low, compute_dtype, op.floor_factor)


# ---------------------------------------------------------------------------------------------
# Half inputs with fp32 parameters, with and without autocast, against torch itself
# ---------------------------------------------------------------------------------------------
def _torch_and_dlkern():
    return {
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (w.numel(),), w, b),
                       lambda x, w, b, be: DF.layer_norm(x, (w.numel(),), w, b, backend=be), (3, 5, 40), 40),
        "rms_norm": (lambda x, w, b: F.rms_norm(x, (w.numel(),), w, 1e-6),
                     lambda x, w, b, be: DF.rms_norm(x, (w.numel(),), w, 1e-6, backend=be), (3, 5, 40), 40),
        "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b),
                       lambda x, w, b, be: DF.group_norm(x, 2, w, b, backend=be), (2, 6, 5, 5), 6),
        "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
                       lambda x, w, b, be: DF.batch_norm(x, None, None, w, b, True, backend=be), (3, 6, 5, 5), 6),
        "instance_norm": (lambda x, w, b: F.instance_norm(x, None, None, w, b),
                          lambda x, w, b, be: DF.instance_norm(x, None, None, w, b, backend=be), (2, 6, 5, 5), 6),
    }


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("dtype", HALF, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(_torch_and_dlkern()))
def test_half_input_fp32_parameters_as_torch(name, backend, dtype, autocast):
    """Output dtype and gradient dtypes as torch's; errors (against torch in fp64) within twice
    torch's own error in the same dtypes (tests/numerics.py)."""
    _need(backend)
    fn_t, fn_d, xshape, c = _torch_and_dlkern()[name]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(xshape, generator=gen).to(dtype)
    w0, b0 = 1 + 0.1 * torch.randn(c, generator=gen), 0.1 * torch.randn(c, generator=gen)
    cot = torch.randn(xshape, generator=gen, dtype=torch.float64)

    def run(fn, x_dtype, p_dtype, use_autocast):
        x, w, b = (t.to(d, copy=True).requires_grad_() for t, d in ((x0, x_dtype), (w0, p_dtype), (b0, p_dtype)))
        with torch.autocast("cpu", dtype, enabled=use_autocast):
            y = fn(x, w, b)
        torch.autograd.backward(y, cot.to(y.dtype))
        return y, x.grad, w.grad, b.grad

    got = run(lambda x, w, b: fn_d(x, w, b, backend), dtype, torch.float32, autocast)
    low = run(fn_t, dtype, torch.float32, autocast)
    exact = run(fn_t, torch.float64, torch.float64, False)
    for what, g, l, e in zip(("output", "grad of x", "grad of weight", "grad of bias"), got, low, exact):
        if l is None:
            assert g is None, f"{what}: torch gives none"
            continue
        assert g.dtype == l.dtype, f"{what}: dtype {g.dtype}, torch's {l.dtype}"
        assert_close_to_reference(what, g, e, l, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv_and_attention_under_autocast_as_torch(backend):
    _need(backend)
    x = torch.randn(2, 4, 9, 9)
    w = torch.randn(4, 1, 3, 3)
    q = torch.randn(1, 2, 8, 16)
    with torch.autocast("cpu", torch.float16):
        y = DF.conv2d(x, w, None, 1, 1, 1, 4, backend=backend)
        yt = F.conv2d(x, w, None, 1, 1, 1, 4)
        a = DF.scaled_dot_product_attention(q, q, q, backend=backend)
        at = F.scaled_dot_product_attention(q, q, q)
    assert (y.dtype, a.dtype) == (yt.dtype, at.dtype) == (torch.float16, torch.float16)
    torch.testing.assert_close(y, yt, rtol=4e-3, atol=4e-3 * yt.abs().max().item())
    torch.testing.assert_close(a, at, rtol=4e-3, atol=4e-3)
