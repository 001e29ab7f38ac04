"""Embedded tasks of the generative and self-supervised models, on the procedural digits
(``tasks.render_digits``). Like every task, a batch is a pure function of ``(seed, step)``.

* ``digits_gan``: real digits scaled to [-1, 1] and the generator's latent noise. Metric: the
  Inception score of 1000 samples under a fixed linear digit classifier (``digit_classifier``: a
  logistic regression on pixels fitted to 3000 rendered digits); exp(E_x KL(p(y|x) ‖ p(y))), 1 for
  samples the classifier cannot tell apart, 10 for confident samples spread evenly over the classes.
  Chance: samples of a full-covariance Gaussian fitted to the digits (``gaussian_baseline``, 3.92);
  real test digits score 7.66 (``real_score``).
* ``digits_contrastive``: two random augmentations of each digit (rotation, scale, shift, random
  erasing, gain, noise), no labels. Metric: linear-probe test accuracy on the frozen encoder's
  features (a logistic regression fitted to 2000 labelled training images' features); chance 10 %.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlkern.models.tasks import (BASELINE_SEED, IMAGE_SIZE, TEST_SEED, Task, render_digits)


def fit_linear_classifier(x: torch.Tensor, y: torch.Tensor, classes: int = 10, l2: float = 1e-3,
                          iters: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression (L2-regularized, L-BFGS, float64) on (N, D) features;
    deterministic for given inputs. The features are standardized inside the returned layer."""
    x = x.double()
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    layer = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64)
    with torch.no_grad():                        # fold the standardization into the layer
        layer.weight.copy_((w / std[:, None]).T)
        layer.bias.copy_(b - (mean / std) @ w)
    return layer.float().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def digit_classifier() -> torch.nn.Linear:
    """The fixed judge of ``digits_gan``: pixels in [-1, 1] (B, 256) -> logits (B, 10)."""
    images, labels = render_digits(torch.Generator().manual_seed(BASELINE_SEED), 3000)
    return fit_linear_classifier(to_signed(images).flatten(1), labels)


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """Digit images clamped to [0, 1] and mapped to [-1, 1] (the generator's tanh range)."""
    return images.clamp(0, 1) * 2 - 1


def inception_score(images: torch.Tensor) -> float:
    """exp(mean KL(p(y|x) ‖ p(y))) of (N, 1, 16, 16) images in [-1, 1] under ``digit_classifier``."""
    log_p = digit_classifier()(images.float().cpu().flatten(1)).log_softmax(1)   # (N, 10)
    log_marginal = log_p.exp().mean(0).log()
    return math.exp((log_p.exp() * (log_p - log_marginal)).sum(1).mean().item())


@dataclass(frozen=True)
class GANTask(Task):
    """The model provides ``gan_loss(real, z) -> loss`` (discriminator and generator losses in
    one scalar, see dcgan.py) and ``generate(z)``."""
    latent_dim: int = 32
    samples: int = 1000

    def model_config(self) -> dict:
        return {"img_size": IMAGE_SIZE, "in_chans": 1, "latent_dim": self.latent_dim}

    def make_batch(self, gen, batch_size):
        real = to_signed(render_digits(gen, batch_size)[0])
        return real, torch.randn(batch_size, self.latent_dim, generator=gen)

    def loss(self, model, batch):
        return model.gan_loss(*batch)

    def test_latents(self) -> torch.Tensor:
        return torch.randn(self.samples, self.latent_dim, generator=torch.Generator().manual_seed(TEST_SEED))

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 500) -> float:
        was_training = model.training
        model.eval()
        z = self.test_latents()
        images = torch.cat([model.generate(z[i:i + batch_size].to(device)).cpu()
                            for i in range(0, z.shape[0], batch_size)])
        model.train(was_training)
        return inception_score(images)

    def gaussian_baseline(self) -> float:
        """The chance level: the score of samples from a full-covariance Gaussian fitted to 5000
        training digits (right mean and pixel correlations, no digit structure)."""
        train = to_signed(render_digits(torch.Generator().manual_seed(BASELINE_SEED + 1), 5000)[0]).flatten(1)
        cov = torch.cov(train.T).double() + 1e-4 * torch.eye(train.shape[1], dtype=torch.float64)
        eps = torch.randn(self.samples, train.shape[1], generator=torch.Generator().manual_seed(TEST_SEED),
                          dtype=torch.float64)
        samples = train.mean(0).double() + eps @ torch.linalg.cholesky(cov).T             # (N, 256)
        return inception_score(samples.float().clamp(-1, 1).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE))

    def real_score(self) -> float:
        """The score of real test digits (the ceiling a perfect generator reaches)."""
        return inception_score(to_signed(render_digits(torch.Generator().manual_seed(TEST_SEED), self.samples)[0]))


def augment(gen: torch.Generator, images: torch.Tensor) -> torch.Tensor:
    """One random view of each (n, 1, 16, 16) image: rotation (±20°), scale (0.8-1.2), shift
    (±3 px), a random 6x6 erased square, stroke gain (0.6-1.4) and Gaussian noise (σ 0.1)."""
    n = images.shape[0]
    u = torch.rand(n, 8, generator=gen)
    angle = (u[:, 0] - 0.5) * math.radians(40)
    scale = 0.8 + 0.4 * u[:, 1]
    shift = (u[:, 2:4] - 0.5) * (6.0 / (IMAGE_SIZE / 2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, IMAGE_SIZE, IMAGE_SIZE), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False)
    corner = (u[:, 4:6] * (IMAGE_SIZE - 6)).long()                       # (n, 2) top-left of the erased square
    pos = torch.arange(IMAGE_SIZE)
    rows = (pos[None] >= corner[:, :1]) & (pos[None] < corner[:, :1] + 6)   # (n, 16)
    cols = (pos[None] >= corner[:, 1:]) & (pos[None] < corner[:, 1:] + 6)
    erased = (rows[:, :, None] & cols[:, None, :]) & (u[:, 6:7, None] < 0.5)  # half the views
    out = out.masked_fill(erased[:, None], 0.0)
    gain = 0.6 + 0.8 * u[:, 7].view(n, 1, 1, 1)
    return out * gain + 0.1 * torch.randn(out.shape, generator=gen)


@dataclass(frozen=True)
class ContrastiveTask(Task):
    """The model provides ``contrastive_loss(view1, view2) -> loss`` and ``features(x) -> (B, F)``."""
    probe_train: int = 2000

    def model_config(self) -> dict:
        return {"img_size": IMAGE_SIZE, "in_chans": 1}

    def make_batch(self, gen, batch_size):
        images = render_digits(gen, batch_size)[0]
        return augment(gen, images), augment(gen, images)

    def loss(self, model, batch):
        return model.contrastive_loss(*batch)

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 500) -> float:
        was_training = model.training
        model.eval()

        def features(images):
            return torch.cat([model.features(images[i:i + batch_size].to(device)).float().cpu()
                              for i in range(0, images.shape[0], batch_size)])

        train_x, train_y = render_digits(torch.Generator().manual_seed(BASELINE_SEED), self.probe_train)
        test_x, test_y = render_digits(torch.Generator().manual_seed(TEST_SEED), 2000)
        probe = fit_linear_classifier(features(train_x), train_y)
        accuracy = (probe(features(test_x)).argmax(1) == test_y).float().mean().item()
        model.train(was_training)
        return accuracy


TASKS = {
    # chance: GANTask.gaussian_baseline() (a few seconds, so not at import; a test checks the value)
    # (real test digits score 7.66, GANTask.real_score)
    "digits_gan": GANTask("digits_gan", "Inception score (linear digit classifier)", target=6.0, chance=3.922),
    # a linear probe on the raw pixels scores 0.920: the target asks the encoder for much more
    "digits_contrastive": ContrastiveTask("digits_contrastive", "linear-probe accuracy", target=0.98, chance=0.1),
}
