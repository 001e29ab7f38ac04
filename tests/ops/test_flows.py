"""Flow ops beyond the generic registry tests: invertibility for every op and scale map, the fused
log-determinant against a brute-force Jacobian, per-sample logdet shape, gradients through logdet
alone and from expanded tensors, argument errors, determinism."""
import pytest
import torch

import dlkern
from dlkern.backend import availability
from dlkern.ops.inv_conv1x1 import lu_params, lu_weight

F = dlkern.nn.functional
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference"] + [b for b in ("triton", "cuda") if not availability(b, DEVICE)]
SCALE_KW = [{"scale": "exp"}, {"scale": "sigmoid"}, {"scale": "softclamp", "clamp": 1.5}]
SHAPES = [(3, 10), (2, 3, 5, 4)]   # vectors (B, D) and images (B, C, H, W)


def _randn(*shape, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=gen)).to(DEVICE)


def _lu(c, seed=0):
    return tuple(p.to(DEVICE) for p in lu_params(c, torch.Generator().manual_seed(seed)))


# --------------------------------------------------------------------------- invertibility
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["vec", "img"])
@pytest.mark.parametrize("kw", SCALE_KW, ids=lambda k: k["scale"])
def test_affine_coupling_inverts(backend, shape, kw):
    x = _randn(*shape)
    h = _randn(shape[0], 2 * shape[1], *shape[2:], scale=0.8, seed=1)
    y, ld = F.affine_coupling(x, h, backend=backend, **kw)
    x2, ld2 = F.affine_coupling(y, h, reverse=True, backend=backend, **kw)
    assert ld.shape == ld2.shape == (shape[0],)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld2, -ld, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["vec", "img"])
def test_act_norm_and_inv_conv_invert(backend, shape):
    x = _randn(*shape)
    c = shape[1]
    bias, logscale = _randn(c, seed=2), _randn(c, scale=0.5, seed=3)
    y, ld = F.act_norm(x, bias, logscale, backend=backend)
    x2, ld2 = F.act_norm(y, bias, logscale, reverse=True, backend=backend)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld2, -ld)
    params = _lu(c)
    y, ld = F.inv_conv1x1(x, *params, backend=backend)
    x2, ld2 = F.inv_conv1x1(y, *params, reverse=True, backend=backend)
    assert ld.shape == (shape[0],)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld2, -ld)


def test_lu_weight_inverse_and_logdet():
    lower, upper, log_s, sign_s, perm = (p.double() if p.is_floating_point() else p for p in _lu(7, seed=4))
    w = lu_weight(lower, upper, log_s, sign_s, perm, dtype=torch.float64)
    w_inv = lu_weight(lower, upper, log_s, sign_s, perm, reverse=True, dtype=torch.float64)
    torch.testing.assert_close(w_inv @ w, torch.eye(7, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.slogdet(w).logabsdet, log_s.sum())


# --------------------------------------------------------------------------- logdet vs Jacobian
def _jacobian_logdet(fn, x):
    """log|det J| per sample of a map applied to x (B, ...) sample by sample, in float64."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(xb))[0].reshape(-1), xb.reshape(-1))
        out.append(torch.linalg.slogdet(jac.double()).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", SCALE_KW, ids=lambda k: k["scale"])
@pytest.mark.parametrize("reverse", [False, True])
def test_affine_coupling_logdet_is_the_jacobians(backend, kw, reverse):
    x = _randn(2, 2, 2, 2)
    h = _randn(2, 4, 2, 2, scale=0.8, seed=1)
    _, ld = F.affine_coupling(x, h, reverse=reverse, backend=backend, **kw)
    # per sample: h of that sample (the coupling's h is constant with respect to x)
    # (the Jacobian is taken through the reference: through the interpreter it costs minutes)
    fn = lambda v: F.affine_coupling(v, h[idx:idx + 1], reverse=reverse, backend="reference", **kw)  # noqa: E731
    expected = []
    for idx in range(2):
        expected.append(_jacobian_logdet(fn, x[idx:idx + 1]))
    torch.testing.assert_close(ld.double(), torch.cat(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_act_norm_and_inv_conv_logdet_is_the_jacobians(backend, reverse):
    """The backend's log-det against the Jacobian of the reference map (kernel gradients are
    checked against the reference by tests/test_ops.py)."""
    x = _randn(2, 3, 2, 3)
    bias, logscale = _randn(3, seed=2), _randn(3, scale=0.5, seed=3)
    _, ld = F.act_norm(x, bias, logscale, reverse=reverse, backend=backend)
    fn = lambda v: F.act_norm(v, bias, logscale, reverse=reverse, backend="reference")  # noqa: E731
    torch.testing.assert_close(ld.double(), _jacobian_logdet(fn, x), atol=1e-4, rtol=1e-4)
    params = _lu(3, seed=5)
    _, ld = F.inv_conv1x1(x, *params, reverse=reverse, backend=backend)
    fn = lambda v: F.inv_conv1x1(v, *params, reverse=reverse, backend="reference")  # noqa: E731
    torch.testing.assert_close(ld.double(), _jacobian_logdet(fn, x), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_gradient_through_logdet_alone_and_expanded(backend):
    """dy is materialized zeros (logdet only) or an expanded stride-0 tensor (y.sum())."""
    x = _randn(2, 3, 4, 3).requires_grad_()
    h = _randn(2, 6, 4, 3, scale=0.8, seed=1).requires_grad_()

    def grads(b, which):
        y, ld = F.affine_coupling(x, h, scale="sigmoid", backend=b)
        return torch.autograd.grad(ld.sum() if which == "logdet" else y.sum(), (x, h), allow_unused=True)

    for which in ("logdet", "y"):
        got, want = grads(backend, which), grads("reference", which)
        for g, w in zip(got, want):
            torch.testing.assert_close(g if g is not None else torch.zeros_like(w), w if w is not None else torch.zeros_like(g))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_kernels_are_deterministic(backend):
    x = _randn(3, 4, 30, 31)
    h = _randn(3, 8, 30, 31, seed=1)
    a = F.affine_coupling(x, h, backend=backend)
    b = F.affine_coupling(x, h, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: F.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), scale="tanh"), ValueError, "scale must be one of"),
    (lambda: F.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), scale="softclamp"), ValueError, "clamp must be a positive"),
    (lambda: F.affine_coupling(torch.randn(2, 3), torch.randn(2, 6), clamp=2.0), ValueError, "clamp applies to"),
    (lambda: F.affine_coupling(torch.randn(2, 3), torch.randn(2, 5)), ValueError, r"h must have shape \[2, 6\]"),
    (lambda: F.affine_coupling(torch.randn(2, 3), torch.randn(2, 6).double()), ValueError, "h must be a tensor with x's dtype"),
    (lambda: F.affine_coupling(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 6)), TypeError, "x must be a floating-point"),
    (lambda: F.act_norm(torch.randn(2, 3), torch.zeros(4), torch.zeros(3)), ValueError, r"bias must be .* shape \(C,\) = \(3,\)"),
    (lambda: F.inv_conv1x1(torch.randn(2, 3), *lu_params(4)), ValueError, "lower must be a tensor of shape"),
    (lambda: F.inv_conv1x1(torch.randn(2, 3), *lu_params(3)[:4], torch.arange(3.0)), TypeError, "perm must be an int64"),
])
def test_bad_arguments_name_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_named_backend_refuses_what_it_cannot_serve():
    x = torch.randn(2, 130, 1, 1, device=DEVICE)
    for backend in [b for b in BACKENDS if b != "reference"]:
        with pytest.raises(dlkern.BackendError, match="at most 128 channels"):
            F.inv_conv1x1(x, *_lu(130), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = torch.randn(0, 4, 3, 3, device=DEVICE, requires_grad=True)
    h = torch.randn(0, 8, 3, 3, device=DEVICE)
    for y, ld in (F.affine_coupling(x, h, backend=backend),
                  F.act_norm(x, torch.zeros(4, device=DEVICE), torch.zeros(4, device=DEVICE), backend=backend),
                  F.inv_conv1x1(x, *_lu(4), backend=backend)):
        assert y.shape == x.shape and ld.shape == (0,)
        (g,) = torch.autograd.grad(y.sum() + ld.sum(), x)
        assert g.shape == x.shape


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "triton"] or ["reference"])
def test_compile_fullgraph_matches_eager(backend):
    """A Glow step (ActNorm, 1×1 conv, channel coupling) traces without graph breaks."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 4, 3, padding=1).to(DEVICE)
    bias, logscale, params = _randn(4, seed=2), _randn(4, scale=0.3, seed=3), _lu(4)

    def step(x):
        y, ld1 = F.act_norm(x, bias, logscale)
        y, ld2 = F.inv_conv1x1(y, *params)
        yb, ld3 = F.affine_coupling(y[:, 2:], net(y[:, :2]), scale="sigmoid")
        return torch.cat([y[:, :2], yb], 1), ld1 + ld2 + ld3

    x = _randn(2, 4, 5, 3, seed=4).requires_grad_()
    with dlkern.use_backend(backend):
        eager = step(x)
        g_eager = torch.autograd.grad(eager[0].square().sum() + eager[1].sum(), x)[0]
        torch._dynamo.reset()
        out = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
        g_comp = torch.autograd.grad(out[0].square().sum() + out[1].sum(), x)[0]
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager)
