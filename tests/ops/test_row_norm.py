"""LayerNorm/RMSNorm specifics the generic registry tests do not cover: argument errors, modules
and patching, gradients handed over as expanded tensors, very long rows, partial use of the fused
residual outputs, empty batches and determinism."""
import pytest
import torch

import dlkern
from dlkern.backend import availability

F = dlkern.nn.functional
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if not availability(b, DEVICE)]
needs_kernels = pytest.mark.skipif(not KERNEL_BACKENDS, reason="no kernel backend can run here")


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: F.layer_norm(torch.ones(2, 4, dtype=torch.int32), (4,)), TypeError, "input must be a floating-point"),
    (lambda: F.layer_norm([1.0, 2.0], (2,)), TypeError, "input must be a torch.Tensor"),
    (lambda: F.layer_norm(torch.randn(2, 4), (5,)), ValueError, r"normalized_shape \[5\] must match"),
    (lambda: F.layer_norm(torch.randn(2, 4), "4"), TypeError, "normalized_shape must be an int or a sequence"),
    (lambda: F.layer_norm(torch.randn(2, 4), (4,), torch.ones(3)), ValueError, r"weight must have shape normalized_shape=\[4\]"),
    (lambda: F.layer_norm(torch.randn(2, 4), (4,), None, torch.ones(4, dtype=torch.int64)), TypeError, "bias must be floating point"),
    (lambda: F.rms_norm(torch.randn(2, 4), (4,), torch.ones(4, device="meta")), ValueError, "weight must be on the input's device"),
    (lambda: F.add_rms_norm(torch.randn(2, 4), torch.randn(2, 5), (4,)), ValueError, "residual must have the input's shape"),
    (lambda: F.add_layer_norm(torch.randn(2, 4), torch.randn(2, 4).half(), (4,)), ValueError, "residual must match input's device and dtype"),
])
def test_bad_arguments_name_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


# --------------------------------------------------------------------------- modules and patch
@pytest.mark.parametrize("kwargs", [{}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}])
def test_layer_norm_module_is_torch_compatible(kwargs):
    ours, theirs = dlkern.nn.LayerNorm((3, 8), **kwargs), torch.nn.LayerNorm((3, 8), **kwargs)
    assert isinstance(ours, torch.nn.LayerNorm)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_rms_norm_module_is_torch_compatible():
    ours, theirs = dlkern.nn.RMSNorm(16), torch.nn.RMSNorm(16)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 16)
    torch.testing.assert_close(ours(x), theirs(x))


class _MyLayerNorm(torch.nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


def _toy_model():
    return torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.GELU(),
                               torch.nn.Linear(32, 32), torch.nn.RMSNorm(32), _MyLayerNorm(32))


@pytest.mark.parametrize("backend", ["reference"] + KERNEL_BACKENDS)
def test_patch_swaps_in_place_and_preserves_outputs(backend):
    torch.manual_seed(0)
    model = _toy_model().to(DEVICE)
    x = torch.randn(6, 32, device=DEVICE)
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    params = list(model.parameters())
    patched = dlkern.patch(model)
    assert patched is model
    assert type(model[1]) is dlkern.nn.LayerNorm and type(model[4]) is dlkern.nn.RMSNorm
    assert type(model[5]) is _MyLayerNorm, "a user subclass keeps its own forward"
    assert all(a is b for a, b in zip(params, model.parameters())), "parameters are shared, not copied"
    with dlkern.use_backend(backend):
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_patch_rejects_non_modules():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dlkern.patch("not a model")


# --------------------------------------------------------------------------- kernel edge cases
@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_expanded_gradient_from_sum(backend):
    """``y.sum().backward()`` hands the backward a stride-0 gradient."""
    x = torch.randn(3, 5, 40, device=DEVICE, requires_grad=True)
    w = torch.randn(40, device=DEVICE, requires_grad=True)
    F.layer_norm(x, (40,), w, None, backend=backend).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    torch.nn.functional.layer_norm(x2, (40,), w2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_rows_longer_than_any_block(backend, norm):
    n = 65536 + 3
    x = (torch.randn(2, n, dtype=torch.float64) * 3 + 5).float().to(DEVICE).requires_grad_()
    w = torch.rand(n, device=DEVICE).requires_grad_()
    fn = (lambda b, *a: F.layer_norm(*a, backend=b)) if norm == "layer" else (lambda b, *a: F.rms_norm(*a, backend=b))
    y = fn(backend, x, (n,), w)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yd = fn("reference", xd, (n,), wd)
    gxd, gwd = torch.autograd.grad(yd, (xd, wd), g.double())
    torch.testing.assert_close(y.double(), yd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx.double(), gxd, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw.double(), gwd, rtol=1e-4, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("used", ["normed", "sum"])
def test_fused_residual_with_one_output_unused(backend, used):
    x = torch.randn(4, 24, device=DEVICE, requires_grad=True)
    r = torch.randn(4, 24, device=DEVICE, requires_grad=True)
    normed, s = F.add_rms_norm(x, r, (24,), backend=backend)
    out = normed if used == "normed" else s
    gx, gr = torch.autograd.grad(out.pow(2).sum(), (x, r))
    normed_ref, s_ref = F.add_rms_norm(x, r, (24,), backend="reference")
    gx_ref, _ = torch.autograd.grad((normed_ref if used == "normed" else s_ref).pow(2).sum(), (x, r))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gr, gx_ref, rtol=1e-4, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_batch(backend):
    x = torch.randn(0, 3, 16, device=DEVICE, requires_grad=True)
    w = torch.ones(16, device=DEVICE, requires_grad=True)
    y = F.layer_norm(x, (16,), w, None, backend=backend)
    assert y.shape == x.shape
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w))


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backward_is_deterministic(backend):
    x = torch.randn(64, 300, device=DEVICE, requires_grad=True)
    w = torch.randn(300, device=DEVICE, requires_grad=True)
    b = torch.randn(300, device=DEVICE, requires_grad=True)
    g = torch.randn(64, 300, device=DEVICE)
    runs = [torch.autograd.grad(F.layer_norm(x, (300,), w, b, backend=backend), (x, w, b), g) for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_long_rows_several_per_program_with_residual_and_bias(backend):
    """The looped backward (N > 8192) with several rows per program: coefficients parked per
    row, dweight/dbias accumulated per column chunk over the program's rows, residual gradient."""
    m, n = 9, 8192 + 5
    x = (torch.randn(m, n, dtype=torch.float64) * 2 + 1).float().to(DEVICE).requires_grad_()
    r = torch.randn(m, n, device=DEVICE, requires_grad=True)
    w = torch.rand(n, device=DEVICE).requires_grad_()
    b = torch.randn(n, device=DEVICE, requires_grad=True)
    y, s = F.add_layer_norm(x, r, (n,), w, b, backend=backend)
    gy, gs = torch.randn_like(y), torch.randn_like(s)
    got = torch.autograd.grad((y, s), (x, r, w, b), (gy, gs))
    leaves = [t.detach().double().requires_grad_() for t in (x, r, w, b)]
    yd, sd = F.add_layer_norm(leaves[0], leaves[1], (n,), leaves[2], leaves[3], backend="reference")
    want = torch.autograd.grad((yd, sd), leaves, (gy.double(), gs.double()))
    for name, a, e in zip(("dx", "dresidual", "dweight", "dbias"), got, want):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4, msg=name)
