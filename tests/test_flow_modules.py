"""Flow modules (dlkern.nn): AffineCoupling with channel and checkerboard masks, ActNorm's
data-dependent initialization, InvConv1x1, Squeeze, and a multi-scale FlowSequential — inverse of
forward, log-determinant against the brute-force Jacobian, kernel backends against the reference."""
import pytest
import torch
from torch import nn

import dlkern
from dlkern.backend import availability

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference"] + [b for b in ("triton", "cuda") if not availability(b, DEVICE)]


def _small_init(module, scale=0.1):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return module


def _coupling(c, mask, parity, scale, image):
    c_a = c // 2 if mask == "channel" else c
    c_b = c - c // 2 if mask == "channel" else c
    net = nn.Conv2d(c_a, 2 * c_b, 3, padding=1) if image else nn.Linear(c_a, 2 * c_b)
    clamp = 2.0 if scale == "softclamp" else None
    return dlkern.nn.AffineCoupling(c, _small_init(net, 0.3), mask=mask, parity=parity, scale=scale, clamp=clamp)


def _glow(c=2, generator_seed=0):
    """Multi-scale: squeeze, a step (ActNorm, InvConv1x1, channel coupling), split, squeeze, a
    checkerboard step. For (B, c, 4, 4) inputs."""
    gen = torch.Generator().manual_seed(generator_seed)
    return dlkern.nn.FlowSequential(
        dlkern.nn.Squeeze(), dlkern.nn.ActNorm(4 * c), dlkern.nn.InvConv1x1(4 * c, generator=gen),
        _coupling(4 * c, "channel", 0, "sigmoid", True), dlkern.nn.Split(), dlkern.nn.Squeeze(),
        dlkern.nn.ActNorm(8 * c), dlkern.nn.InvConv1x1(8 * c, generator=gen),
        _coupling(8 * c, "checkerboard", 1, "softclamp", True),
    )


def _jacobian_logdet(fn, x):
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(xb)).reshape(-1), xb.reshape(-1))
        out.append(torch.linalg.slogdet(jac.double()).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask,parity,scale,image", [
    ("channel", 0, "exp", False), ("channel", 1, "sigmoid", True), ("checkerboard", 0, "softclamp", True),
    ("checkerboard", 1, "exp", False), ("channel", 0, "softclamp", True), ("checkerboard", 0, "sigmoid", True),
], ids=["ch-vec-exp", "ch1-img-sigmoid", "cb-img-softclamp", "cb1-vec-exp", "ch-img-softclamp", "cb-img-sigmoid"])
def test_coupling_layer_inverts_and_logdet_is_the_jacobians(backend, mask, parity, scale, image):
    torch.manual_seed(0)
    c = 3 if image else 5
    layer = _coupling(c, mask, parity, scale, image).to(DEVICE)
    x = torch.randn((2, c, 3, 4) if image else (2, c), device=DEVICE)
    with dlkern.use_backend(backend):
        y, ld = layer(x)
        x2, ld2 = layer.inverse(y)
    assert ld.shape == (2,)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld2, -ld, atol=1e-5, rtol=1e-5)
    with dlkern.use_backend("reference"):
        if backend == "reference":  # (a Jacobian through the interpreter costs minutes)
            expected = _jacobian_logdet(lambda v: layer(v)[0], x)
            torch.testing.assert_close(ld.double(), expected, atol=1e-4, rtol=1e-4)
        else:
            y_ref, ld_ref = layer(x)
            torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ld, ld_ref, atol=1e-5, rtol=1e-5)
    # the conditioning part passes unchanged
    assert (y == x).sum() >= x.numel() // 3


def test_act_norm_initializes_from_the_first_batch_only():
    layer = dlkern.nn.ActNorm(3)
    x = 3 * torch.randn(8, 3, 5, 5) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    y, ld = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(ld, torch.full((8,), 25 * layer.logscale.sum().item()))
    bias = layer.bias.detach().clone()
    layer(torch.randn(8, 3, 5, 5))
    assert torch.equal(layer.bias, bias) and bool(layer.initialized)
    fresh = dlkern.nn.ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized) and torch.equal(fresh.bias, bias)


def test_inv_conv_starts_as_a_rotation():
    layer = dlkern.nn.InvConv1x1(6, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 6, 3, 3)
    y, ld = layer(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld, torch.zeros(2), atol=1e-5, rtol=0)


def test_multiscale_flow_inverts_and_logdet_is_the_jacobians():
    torch.manual_seed(0)
    flow = _glow()
    x = torch.randn(2, 2, 4, 4)
    with dlkern.use_backend("reference"):
        flow(x)                             # first forward: ActNorm initializes
        z, ld = flow(x)
        x2 = flow.inverse(z)
        expected = _jacobian_logdet(lambda v: flow(v)[0], x)
    assert z.shape == (2, 32) and ld.shape == (2,)
    torch.testing.assert_close(x2, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_multiscale_flow_on_kernels_matches_the_reference(backend):
    """z, logdet, the inverse and the NLL's parameter gradients of the whole flow."""
    torch.manual_seed(0)
    flow = _glow().to(DEVICE)
    x = torch.randn(3, 2, 4, 4, device=DEVICE)
    flow(x)  # initialize ActNorm

    def run(b):
        with dlkern.use_backend(b):
            z, ld = flow(x)
            loss = (0.5 * z.square().sum(1) - ld).mean()
            grads = torch.autograd.grad(loss, list(flow.parameters()))
            return z.detach(), ld.detach(), flow.inverse(z.detach()), grads

    got, want = run(backend), run("reference")
    for g, w in zip(got[:3] + got[3], want[:3] + want[3]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], x, atol=1e-5, rtol=1e-5)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="mask must be one of"):
        dlkern.nn.AffineCoupling(4, nn.Identity(), mask="stripes")
    with pytest.raises(ValueError, match="x must have 4 channels"):
        dlkern.nn.AffineCoupling(4, nn.Identity())(torch.randn(2, 3))
    with pytest.raises(ValueError, match="Squeeze"):
        dlkern.nn.Squeeze()(torch.randn(1, 2, 3, 4))
    with pytest.raises(RuntimeError, match="input shape"):
        dlkern.nn.FlowSequential(dlkern.nn.Split()).inverse(torch.randn(1, 4))
