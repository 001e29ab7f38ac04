"""RealNVP and Glow: decode inverts encode, and the density is the change of variables through the
flow's exact Jacobian (torch.autograd), in float64 on the reference path. Parameters are perturbed
away from the identity initialization (zero conditioners and priors) so every layer acts."""
import pytest
import torch
from torch.autograd.functional import jacobian

import dlkern
from dlkern.models import create_model, get_task
from dlkern.models.realnvp import standard_normal_log_prob


def perturbed(model, x):
    """``model`` after ActNorm's data-dependent initialization on ``x``, every parameter moved."""
    model.train()(x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


@pytest.fixture(autouse=True)
def _reference_backend():
    with dlkern.use_backend("reference"):
        yield


def test_realnvp_inverse_and_jacobian_logdet():
    torch.manual_seed(0)
    x = get_task("moons").batch_for_step(0, 0, 16, "cpu")[0].double()
    model = perturbed(create_model("realnvp", n_couplings=4, hidden=16).double(), x)
    z, logdet = model.encode(x)
    torch.testing.assert_close(model.decode(z), x, rtol=0, atol=1e-10)
    assert model.sample(3).shape == (3, 2)
    assert logdet.abs().min() > 1e-2                    # the couplings and ActNorms do act
    for i in range(4):
        J = jacobian(lambda v: model.encode(v[None])[0][0], x[i])          # (2, 2)
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(J).logabsdet, rtol=1e-9, atol=1e-10)


def test_glow_inverse_and_density_is_change_of_variables():
    """log p(x) = log N(ε; 0, I) + log|det ∂ε/∂x| with ε the standardized latents of every level
    (the learned split and top priors included)."""
    torch.manual_seed(0)
    x = get_task("digits_density").batch_for_step(0, 0, 4, "cpu")[0][..., :8, :8].double()   # (4, 1, 8, 8)
    model = perturbed(create_model("glow", img_size=8, levels=2, steps=2, hidden=8).double(), x)
    latents, log_p = model.encode(x)
    assert [tuple(e.shape[1:]) for e in latents] == [(2, 4, 4), (8, 2, 2)]
    torch.testing.assert_close(model.decode(latents), x, rtol=0, atol=1e-10)
    assert model.sample(3).shape == (3, 1, 8, 8)

    def flat_latents(v):
        return torch.cat([e.flatten(1) for e in model.encode(v[None])[0]], 1)[0]   # (64,)

    for i in range(2):
        J = jacobian(flat_latents, x[i])                                  # (64, 1, 8, 8)
        eps = flat_latents(x[i])
        expected = standard_normal_log_prob(eps[None])[0] + torch.linalg.slogdet(J.reshape(64, 64)).logabsdet
        torch.testing.assert_close(log_p[i], expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("task", ["moons", "digits_density"])
def test_chance_is_the_task_baseline(task):
    """The tasks' chance constants are their baselines (a Gaussian fit, per-pixel histograms)."""
    t = get_task(task)
    assert t.chance == pytest.approx(t.baseline(), abs=1e-3)
    assert t.target < t.chance
