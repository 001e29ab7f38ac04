"""The generative and self-supervised models' own mathematics (the registry-driven tests in
test_models.py cover parity, learning and resume): planar flow and i-ResNet invert and their
log-determinants equal the exact Jacobian's (torch.autograd, float64, reference path); the IAF
posterior's density goes through its flow's log-determinant; IWAE's bound is never below the
ELBO; DCGAN's single loss gives each player only its own gradient; NT-Xent; the sample grid."""
import math

import pytest
import torch
from torch.autograd.functional import jacobian

import dlkern
from dlkern.models import create_model, get_task
from dlkern.models.realnvp import standard_normal_log_prob
from dlkern.models.simclr import nt_xent
from dlkern.train import save_samples, train


@pytest.fixture(autouse=True)
def _reference_backend():
    with dlkern.use_backend("reference"):
        yield


def moons(n):
    return get_task("moons").batch_for_step(0, 0, n, "cpu")[0].double()


def perturbed(model, x, scale=0.2):
    """``model`` after ActNorm's data-dependent initialization on ``x``, every parameter moved."""
    model.train()(x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def check_flow(model, x, inverse_atol):
    """decode(encode(x)) == x, and log p(x) = log N(z) + log|det ∂z/∂x| with the autograd Jacobian."""
    z, logdet = model.encode(x)
    torch.testing.assert_close(model.decode(z), x, rtol=0, atol=inverse_atol)
    assert logdet.abs().min() > 1e-2                                       # the layers do act
    log_p = model(x)
    for i in range(4):
        J = jacobian(lambda v: model.encode(v[None])[0][0], x[i])          # (2, 2)
        expected = standard_normal_log_prob(z[i:i + 1])[0] + torch.linalg.slogdet(J).logabsdet
        torch.testing.assert_close(log_p[i], expected, rtol=1e-8, atol=1e-8)
    assert model.sample(5).shape == (5, 2)


def test_planar_flow_inverse_and_jacobian_logdet():
    torch.manual_seed(0)
    x = moons(16)
    model = perturbed(create_model("planar_flow", n_layers=6, actnorm_every=3).double(), x, scale=0.5)
    check_flow(model, x, inverse_atol=1e-9)


def test_planar_constraint_keeps_every_layer_invertible():
    """wᵀû > -1 for any u, w — also for u pointing against w, where the raw layer folds."""
    layer = create_model("planar_flow", n_layers=1).flow.layers[1].double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 2.0], dtype=torch.float64))
        layer.u.copy_(-10 * layer.w)
    assert layer.w @ layer.u_hat() > -1
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None] * layer.w[None]   # along w: the folding line
    y, logdet = layer(x)
    assert torch.isfinite(logdet).all()
    assert (torch.diff(y @ layer.w) > 0).all()                              # still increasing along w
    torch.testing.assert_close(layer.inverse(y)[0], x, rtol=0, atol=1e-9)


def test_iresnet_inverse_power_series_and_lipschitz():
    torch.manual_seed(0)
    x = moons(16)
    model = create_model("iresnet", n_blocks=3, hidden=16, coeff=0.9, eval_terms=60).double()
    model = perturbed(model, x)
    blocks = [layer for layer in model.flow.layers if hasattr(layer, "g_and_jacobian")]
    for block in blocks:                             # converge the power iterations, then check Lip < 1
        for layer in (block.l1, block.l2, block.l3):
            layer.power_iteration(200)
            assert torch.linalg.matrix_norm(layer.normalized_weight(), ord=2) <= layer.coeff + 1e-9
        g, j = block.g_and_jacobian(x)
        auto = torch.stack([jacobian(lambda v: block.g_and_jacobian(v[None])[0][0], x[i]) for i in range(3)])
        torch.testing.assert_close(j[:3], auto, rtol=1e-10, atol=1e-12)     # the closed-form Jacobian
    check_flow(model, x, inverse_atol=1e-8)          # 60 series terms: truncation below 1e-8
    short = create_model("iresnet", n_blocks=3, hidden=16, coeff=0.9, eval_terms=4).double()
    short.load_state_dict(model.state_dict())
    short.eval()
    gap = (short.encode(x)[1] - model.encode(x)[1]).abs().max()
    assert 0 < gap < 0.2                             # truncation: a small bias, not an error


@pytest.mark.parametrize("n_terms", [1, 2, 3, 10, 33])
def test_iresnet_power_series_by_doubling(n_terms):
    """The doubled powers sum the same series as one matmul per term, and converge to log det."""
    from dlkern.models.iresnet import power_series_logdet
    torch.manual_seed(0)
    j = torch.randn(7, 3, 3, dtype=torch.float64)
    j = 0.8 * j / torch.linalg.matrix_norm(j, ord=2)[:, None, None]     # ‖J‖₂ = 0.8: the series converges
    expected, power = torch.zeros(7, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    for k in range(1, n_terms + 1):
        power = power @ j
        expected += (-1) ** (k + 1) * torch.diagonal(power, dim1=-2, dim2=-1).sum(-1) / k
    torch.testing.assert_close(power_series_logdet(j, n_terms), expected, rtol=1e-12, atol=1e-12)
    exact = torch.linalg.slogdet(torch.eye(3, dtype=torch.float64) + j)[1]
    torch.testing.assert_close(power_series_logdet(j, 200), exact, rtol=0, atol=1e-12)


def test_iwae_bound_is_at_least_the_elbo():
    torch.manual_seed(0)
    x = get_task("digits_density").batch_for_step(0, 0, 8, "cpu")[0]
    for name in ("vae", "vae_iaf"):
        model = create_model(name, tiny=True).eval()
        elbo, iwae = model.bounds(x, 16)
        assert elbo.shape == iwae.shape == (8,)
        assert (iwae >= elbo).all() and (iwae - elbo).max() > 1e-3
        assert model.sample(4).shape == (4, 1, 16, 16)
    details = model.details((x,), "cpu", n=8)
    assert details["IWAE-4 bits/dim"] <= details["ELBO bits/dim"]


def test_iaf_posterior_density_is_the_flows_change_of_variables():
    """log q(z_T|x) = log N(z_0; μ, σ) - log|det ∂z_T/∂z_0| with the autograd Jacobian, which is
    triangular after one step (autoregressive) and a product of such maps after two."""
    torch.manual_seed(0)
    model = create_model("vae_iaf", tiny=True, flow_steps=2).double().eval()
    x = get_task("digits_density").batch_for_step(0, 0, 2, "cpu")[0].double()
    with torch.no_grad():
        for p in model.steps.parameters():           # the MADE outputs start at zero: move them
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype))
    mu, log_sigma, h = model.encoder(x)
    torch.manual_seed(5)
    z, log_q = model.posterior(x, 1)                 # (1, B, L), (1, B)
    torch.manual_seed(5)
    eps = torch.randn(1, *mu.shape, dtype=mu.dtype)

    def flow(z0, made_steps, hb):
        for i, made in enumerate(made_steps):
            z0 = z0.flip(1) if i else z0
            z0 = dlkern.nn.functional.affine_coupling(z0, made(z0, hb), scale="sigmoid")[0]
        return z0

    for b in range(2):
        z0 = mu[b] + log_sigma[b].exp() * eps[0, b]
        torch.testing.assert_close(flow(z0[None], model.steps, h[b:b + 1])[0], z[0, b])
        J = jacobian(lambda v: flow(v[None], model.steps, h[b:b + 1])[0], z0)
        log_q0 = standard_normal_log_prob(eps[0, b:b + 1])[0] - log_sigma[b].sum()
        torch.testing.assert_close(log_q[0, b], log_q0 - torch.linalg.slogdet(J).logabsdet, rtol=1e-9, atol=1e-9)
        J1 = jacobian(lambda v: flow(v[None], model.steps[:1], h[b:b + 1])[0], z0)
        assert torch.equal(J1, torch.tril(J1)) and (J1.diagonal() > 0).all()   # z'_i depends on z_{<=i}


def test_dcgan_loss_gives_each_player_its_own_gradient():
    """gan_loss's gradients are those of the two players' losses taken apart: D's from L_D alone
    (real vs detached fake), G's from the non-saturating L_G through D."""
    torch.manual_seed(0)
    model = create_model("dcgan", tiny=True)
    real, z = get_task("digits_gan").batch_for_step(0, 0, 6, "cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.gan_loss(real, z).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.load_state_dict(state)                     # BatchNorm statistics as before
    model.zero_grad()
    D, G = model.discriminator, model.generator
    fake = G(z)
    d_loss = torch.nn.functional.softplus(-D(real)).mean() + torch.nn.functional.softplus(D(fake.detach())).mean()
    d_grads = torch.autograd.grad(d_loss, list(D.parameters()))
    g_loss = torch.nn.functional.softplus(-D(fake)).mean()
    g_grads = torch.autograd.grad(g_loss, list(G.parameters()))
    for (n, _), g in zip(D.named_parameters(), d_grads):
        torch.testing.assert_close(got["discriminator." + n], g)
    for (n, _), g in zip(G.named_parameters(), g_grads):
        torch.testing.assert_close(got["generator." + n], g)


def test_dcgan_learns_to_fool_a_digit_classifier():
    """The tiny DCGAN's samples move from the score of noise towards digits in 150 steps (the loss
    of a GAN need not fall, so test_models' learning test does not apply)."""
    task = get_task("digits_gan")
    torch.manual_seed(0)
    before = task.evaluate(create_model("dcgan", tiny=True, width=8), "cpu")
    result = train("dcgan", tiny=True, config={"width": 8}, steps=150, batch_size=32, lr=2e-3, device="cpu",
                   backend="reference", progress=False, log=lambda *a: None)
    assert result["metric"] > before + 0.5, (before, result["metric"])


def test_gan_chance_is_the_gaussian_baseline_and_real_digits_pass():
    task = get_task("digits_gan")
    assert task.chance == pytest.approx(task.gaussian_baseline(), abs=0.02)
    assert task.real_score() > task.target > task.chance


def test_nt_xent_matches_a_per_view_loop():
    gen = torch.Generator().manual_seed(0)
    p1, p2 = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    z = torch.nn.functional.normalize(torch.cat([p1, p2]), dim=1)
    losses = []
    for i in range(10):
        partner = (i + 5) % 10
        logits = torch.stack([z[i] @ z[j] / 0.5 for j in range(10) if j != i])
        target = partner - (partner > i)
        losses.append(-torch.log_softmax(logits, 0)[target])
    torch.testing.assert_close(nt_xent(p1, p2, 0.5), torch.stack(losses).mean())
    assert nt_xent(p1, p1 + 0, 0.05) < nt_xent(p1, p2, 0.05)               # aligned views score better


@pytest.mark.parametrize("name, kind", [("planar_flow", "points"), ("dcgan", "images"), ("vae", "images")])
def test_sample_png(name, kind, tmp_path):
    pytest.importorskip("matplotlib", reason="the sample plot needs matplotlib")
    model = create_model(name, tiny=True)
    rng = torch.get_rng_state()
    message = save_samples(model, tmp_path / "samples.png", seed=0)
    assert torch.equal(torch.get_rng_state(), rng)   # the training RNG stream is untouched
    assert message.startswith("samples:") and (tmp_path / "samples.png").stat().st_size > 1000
    assert (model.sample(4).dim() == 2) == (kind == "points")


def test_linear_probe_beats_chance_on_random_features():
    """The probe itself: a frozen random-init tiny encoder is already far above 10 % (so SimCLR's
    target sits well above it, README), and the score is deterministic."""
    task = get_task("digits_contrastive")
    torch.manual_seed(0)
    model = create_model("simclr", tiny=True)
    first = task.evaluate(model, "cpu")
    assert 0.3 < first < 1 and task.evaluate(model, "cpu") == first
    assert math.isclose(task.chance, 0.1)
