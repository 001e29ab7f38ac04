"""VAE and IWAE on the dequantized digits: a conv encoder (BatchNorm) to a diagonal Gaussian
posterior q(z|x), the reparameterization z = μ + σ·ε, and a conv decoder (GroupNorm) to a
categorical distribution over the 16 intensity levels of every pixel.

``forward(x)`` is a lower bound on log p(x) per sample, with k = ``cfg.k`` posterior samples:
the ELBO for k = 1 (the VAE), the importance-weighted bound log (1/k) Σ_i p(x, z_i) / q(z_i|x)
(Burda et al.) for k > 1 (the IWAE). Both are bounds on the density of the dequantized
``y = (q + u) / levels``: log p(y) = log P(q | z) + D log levels, so the task's bits/dim is the
bound on -log2 P(q) per pixel. ``bounds(x, k)`` gives both bounds from the same k samples; by
Jensen's inequality the IWAE bound is never below the ELBO. ``sample(n)`` draws images."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import dlkern.nn as dnn
from dlkern.models.realnvp import standard_normal_log_prob
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class VAEConfig:
    img_size: int = 16
    in_chans: int = 1
    levels: int = 16          # categories per pixel (the task's quantization)
    latent: int = 16
    width: int = 16           # channels of the first conv; 2x after each stride-2 conv
    k: int = 1                # posterior samples in the training bound: 1 = ELBO (VAE), > 1 = IWAE
    groups: int = 4           # decoder GroupNorm groups
    eval_k: int = 64          # samples of the bounds in ``details``


def conv_bn_relu(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False), dnn.BatchNorm2d(cout), nn.ReLU())


class Encoder(nn.Module):
    """x (B, C, H, W) -> (μ (B, L), log σ (B, L), h (B, 4·width) the features, for IAF's context)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        w = cfg.width
        self.convs = nn.Sequential(conv_bn_relu(cfg.in_chans, w, 3, 1),        # (B, w, H, W)
                                   conv_bn_relu(w, 2 * w, 4, 2),                # (B, 2w, H/2, W/2)
                                   conv_bn_relu(2 * w, 2 * w, 4, 2))            # (B, 2w, H/4, W/4)
        self.fc = nn.Linear(2 * w * (cfg.img_size // 4) ** 2, 4 * w)
        self.head = nn.Linear(4 * w, 2 * cfg.latent)

    def forward(self, x):
        h = F.relu(self.fc(self.convs(x * 2 - 1).flatten(1)))                    # (B, 4w)
        mu, log_sigma = self.head(h).chunk(2, 1)                                 # (B, L) each
        return mu, log_sigma.clamp(-8, 4), h


class Decoder(nn.Module):
    """z (N, L) -> logits (N, levels, C, H, W) over every pixel's intensity levels."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        w, self.cfg = cfg.width, cfg
        self.s = cfg.img_size // 4
        self.fc = nn.Linear(cfg.latent, 2 * w * self.s ** 2)
        self.up = nn.Sequential(
            # (N, 2w, H/4, W/4) -> (N, 2w, H/2, W/2) -> (N, w, H, W) -> (N, levels·C, H, W)
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), dnn.GroupNorm(cfg.groups, 2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), dnn.GroupNorm(cfg.groups, w), nn.ReLU(),
            nn.Conv2d(w, cfg.levels * cfg.in_chans, 3, padding=1))

    def forward(self, z):
        h = F.relu(self.fc(z)).view(z.shape[0], -1, self.s, self.s)
        logits = self.up(h)
        return logits.view(z.shape[0], self.cfg.levels, self.cfg.in_chans, *logits.shape[2:])


def log_mean_exp(x, dim):
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def posterior(self, x, k):
        """k reparameterized samples of q(z|x): (z (k, B, L), log q(z|x) (k, B))."""
        mu, log_sigma, _ = self.encoder(x)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)        # (k, B, L)
        z = mu + log_sigma.exp() * eps
        return z, standard_normal_log_prob(eps.flatten(0, 1)).view(k, -1) - log_sigma.sum(1)

    def log_weights(self, x, k):
        """log p(x, z_i) - log q(z_i|x) for k posterior samples: (k, B). log p(x|z) is the density
        of the dequantized x: the levels' log-probabilities plus D log levels."""
        B = x.shape[0]
        z, log_q = self.posterior(x, k)                                         # (k, B, L), (k, B)
        logits = self.decoder(z.flatten(0, 1))                                  # (k·B, levels, C, H, W)
        q = (x * self.cfg.levels).floor().long().clamp(0, self.cfg.levels - 1)  # (B, C, H, W) the level
        target = q.expand(k, *q.shape).flatten(0, 1)                            # (k·B, C, H, W)
        log_px = -F.cross_entropy(logits, target, reduction="none").flatten(1).sum(1)   # (k·B,)
        log_px = log_px + q[0].numel() * math.log(self.cfg.levels)
        log_pz = standard_normal_log_prob(z.flatten(0, 1))
        return (log_px + log_pz).view(k, B) - log_q

    def forward(self, x):                            # x (B, C, H, W) in [0, 1) -> bound on log p(x) (B,)
        return log_mean_exp(self.log_weights(x, self.cfg.k), 0)

    @torch.no_grad()
    def bounds(self, x, k):
        """(ELBO (B,), IWAE bound (B,)) from the same k samples: the mean and the log-mean-exp of
        the log weights, so IWAE >= ELBO sample by sample."""
        log_w = self.log_weights(x, k)
        return log_w.mean(0), log_mean_exp(log_w, 0)

    @torch.no_grad()
    def details(self, test_batch, device, n: int = 500) -> dict:
        """Test bits/dim of the ELBO and of the eval_k-sample IWAE bound (first n test images)."""
        x = test_batch[0][:n].to(device)
        elbo, iwae = (torch.cat(parts) for parts in zip(*(self.bounds(x[i:i + 100], self.cfg.eval_k)
                                                          for i in range(0, x.shape[0], 100))))
        dims, bits = x[0].numel(), math.log(2)
        to_bits = lambda b: ((-b / dims + math.log(self.cfg.levels)) / bits).mean().item()   # noqa: E731
        return {"ELBO bits/dim": to_bits(elbo), f"IWAE-{self.cfg.eval_k} bits/dim": to_bits(iwae)}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:        # -> (n, C, H, W) the most likely level / levels
        like = next(self.parameters())
        logits = self.decoder(torch.randn(n, self.cfg.latent, device=like.device, dtype=like.dtype))
        return logits.argmax(1).to(like.dtype) / (self.cfg.levels - 1)


_TINY = {"latent": 4, "width": 8, "groups": 2, "eval_k": 4}


@register_model("vae", task="digits_density", tiny=_TINY,
                train=TrainSettings(steps=600, batch_size=64, lr=3e-3, warmup=30, eval_every=200))
def vae(**config) -> VAE:
    """VAE: conv encoder (BatchNorm) / decoder (GroupNorm), ELBO; digits density."""
    return VAE(VAEConfig(**config))


@register_model("iwae", task="digits_density", config={"k": 8}, tiny={**_TINY, "k": 3},
                train=TrainSettings(steps=300, batch_size=64, lr=3e-3, warmup=30, eval_every=150))
def iwae(**config) -> VAE:
    """IWAE: the VAE trained on the 8-sample importance-weighted bound; digits density."""
    return VAE(VAEConfig(**config))
