"""RealNVP for low-dimensional densities: affine couplings with alternating masks (each half of the
features in turn conditions the other through a small MLP), ActNorm before every coupling, and a
standard normal base distribution. ``forward(x)`` is log p(x) per sample; ``sample(n)`` draws."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class RealNVPConfig:
    dim: int = 2
    n_couplings: int = 8
    hidden: int = 128
    depth: int = 2          # hidden layers per conditioner MLP
    clamp: float = 2.0      # |log s| <= clamp (soft); at clamp 5 some seeds blew up mid-training


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over every dimension but the batch: (B, ...) -> (B,)."""
    return -0.5 * (z.flatten(1) ** 2 + math.log(2 * math.pi)).sum(1)


class VectorFlow(nn.Module):
    """A density on (B, dim) vectors: ``self.flow`` (a FlowSequential, set by the subclass) maps
    data to a standard normal latent. Shared by RealNVP, the planar flow and the i-ResNet."""
    dim: int

    def encode(self, x):                             # x (B, D) -> z (B, D), log|det dz/dx| (B,)
        return self.flow(x)

    def forward(self, x):                            # x (B, D) -> log p(x) (B,)
        z, logdet = self.encode(x)
        return standard_normal_log_prob(z) + logdet

    def decode(self, z):                             # z (B, D) -> x (B, D)
        return self.flow.inverse(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        like = next(self.parameters())
        return self.decode(torch.randn(n, self.dim, device=like.device, dtype=like.dtype))


def conditioner(cin: int, cout: int, hidden: int, depth: int) -> nn.Sequential:
    """MLP (B, cin) -> (B, 2·cout): log-scale half, shift half. The last layer starts at zero, so
    every coupling starts as the identity."""
    layers, width = [], cin
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, 2 * cout)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class RealNVP(VectorFlow):
    def __init__(self, cfg: RealNVPConfig):
        super().__init__()
        self.cfg, self.dim = cfg, cfg.dim
        keep = cfg.dim // 2                          # features that condition (channel mask)
        layers = []
        for i in range(cfg.n_couplings):
            layers.append(dnn.ActNorm(cfg.dim))
            layers.append(dnn.AffineCoupling(cfg.dim, conditioner(keep, cfg.dim - keep, cfg.hidden, cfg.depth),
                                             mask="channel", parity=i % 2, scale="softclamp", clamp=cfg.clamp))
        self.flow = dnn.FlowSequential(*layers)


@register_model("realnvp", task="moons", tiny={"n_couplings": 2, "hidden": 8, "depth": 1},
                train=TrainSettings(steps=1500, batch_size=512, lr=3e-3, warmup=50, eval_every=500))
def realnvp(**config) -> RealNVP:
    """RealNVP: alternating affine couplings, ActNorm, MLP conditioners; two moons."""
    return RealNVP(RealNVPConfig(**config))
