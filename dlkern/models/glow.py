"""Glow (Kingma & Dhariwal): a multi-scale flow of L levels. Each level squeezes 2x2 pixels into
channels and runs K steps of ActNorm -> invertible 1x1 conv -> affine coupling (conv conditioner,
sigmoid scale); between levels half the channels leave the flow, with a Gaussian prior whose mean
and scale a zero-initialized conv predicts from the kept half; the top latent has a learned
per-position Gaussian prior. ``forward(x)`` is log p(x) per sample; ``encode``/``decode`` map x to
the standardized latents (one per level) and back, so ``decode`` of normal noise samples."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.realnvp import standard_normal_log_prob
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class GlowConfig:
    img_size: int = 16
    in_chans: int = 1
    levels: int = 2         # L
    steps: int = 4          # K flow steps per level
    hidden: int = 64        # conditioner width


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """3x3 conv starting at zero: couplings start as the identity, priors as N(0, I)."""
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def conditioner(cin: int, cout: int, hidden: int) -> nn.Sequential:
    """(B, cin, H, W) -> (B, 2·cout, H, W): log-scale half, shift half."""
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), zero_conv(hidden, 2 * cout))


def flow_step(c: int, hidden: int) -> list[nn.Module]:
    keep = c // 2
    return [dnn.ActNorm(c), dnn.InvConv1x1(c),
            dnn.AffineCoupling(c, conditioner(keep, c - keep, hidden), mask="channel", scale="sigmoid")]


def standardize(z, mean, log_std):
    """(ε = (z - mean) / std, Σ log std per sample): ε is N(0, I) under the prior N(mean, std²)."""
    return (z - mean) * torch.exp(-log_std), log_std.flatten(1).sum(1)


class Glow(nn.Module):
    def __init__(self, cfg: GlowConfig):
        super().__init__()
        if cfg.img_size % 2 ** cfg.levels:
            raise ValueError(f"img_size must be divisible by 2**levels = {2 ** cfg.levels}; got {cfg.img_size}")
        self.cfg = cfg
        self.levels, self.split_priors = nn.ModuleList(), nn.ModuleList()
        self.split = dnn.Split()                     # keeps channels [0, C/2), factors out the rest
        c, size = cfg.in_chans, cfg.img_size
        for level in range(cfg.levels):
            c, size = 4 * c, size // 2
            steps = [layer for _ in range(cfg.steps) for layer in flow_step(c, cfg.hidden)]
            self.levels.append(dnn.FlowSequential(dnn.Squeeze(2), *steps))
            if level < cfg.levels - 1:
                self.split_priors.append(zero_conv(c // 2, 2 * (c - c // 2)))   # kept -> (mean, log std)
                c = c // 2
        self.top_prior = nn.Parameter(torch.zeros(1, 2 * c, size, size))     # (mean, log std)

    def encode(self, x):
        """x (B, C, H, W) -> ([ε_1 .. ε_L] standardized latents, log p(x) (B,))."""
        log_p, latents = 0.0, []
        for level, flow in enumerate(self.levels):
            x, logdet = flow(x)                                      # (B, 4^l C', H/2^l, W/2^l)
            log_p = log_p + logdet
            if level < len(self.split_priors):
                z = dnn.Split.factored(x)                            # (B, C - C/2, h, w)
                x, _ = self.split(x)                                 # (B, C/2, h, w)
                mean, log_std = self.split_priors[level](x).chunk(2, 1)
            else:
                z = x
                mean, log_std = self.top_prior.chunk(2, 1)
            eps, log_std_sum = standardize(z, mean, log_std)
            latents.append(eps)
            log_p = log_p + standard_normal_log_prob(eps) - log_std_sum
        return latents, log_p

    def forward(self, x):                            # x (B, C, H, W) -> log p(x) (B,)
        return self.encode(x)[1]

    def decode(self, latents):                       # [ε_1 .. ε_L] -> x (B, C, H, W)
        mean, log_std = self.top_prior.chunk(2, 1)
        x = latents[-1] * torch.exp(log_std) + mean
        for level in reversed(range(len(self.levels))):
            if level < len(self.split_priors):
                mean, log_std = self.split_priors[level](x).chunk(2, 1)
                x = torch.cat([x, latents[level] * torch.exp(log_std) + mean], 1)
            x = self.levels[level].inverse(x)
        return x

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        shapes, c, size = [], self.cfg.in_chans, self.cfg.img_size
        for level in range(self.cfg.levels):
            c, size = 4 * c, size // 2
            if level < self.cfg.levels - 1:
                shapes.append((c - c // 2, size, size))
                c = c // 2
        shapes.append((c, size, size))
        like = self.top_prior
        return self.decode([temperature * torch.randn(n, *s, device=like.device, dtype=like.dtype) for s in shapes])


@register_model("glow", task="digits_density", tiny={"levels": 2, "steps": 1, "hidden": 8},
                train=TrainSettings(steps=800, batch_size=64, lr=8e-3, warmup=50, eval_every=200))
def glow(**config) -> Glow:
    """Glow: multi-scale, ActNorm, invertible 1x1 conv, affine coupling, learned split priors; digits density."""
    return Glow(GlowConfig(**config))
