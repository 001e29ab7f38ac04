"""Planar flow (Rezende & Mohamed 2015) for 2-D densities: ActNorm, then K planar layers

    f(x) = x + û · tanh(wᵀx + b),     log|det ∂f/∂x| = log|1 + ûᵀw · (1 - tanh²(wᵀx + b))|

composed with ``dlkern.nn.FlowSequential``. Invertibility needs wᵀû >= -1: û = u + (m(wᵀu) - wᵀu)
w/‖w‖² with m(a) = -1 + softplus(a) > -1 keeps it for any parameters. The flow runs in the
normalizing direction (data -> N(0, I)); the inverse, needed to sample, has no closed form: along
w the layer is the increasing scalar map a -> a + wᵀû·tanh(a), solved by bisection, and the rest
of x follows. ``forward(x)`` is log p(x) per sample; ``sample(n)`` draws."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import dlkern.nn as dnn
from dlkern.models.realnvp import VectorFlow
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class PlanarFlowConfig:
    dim: int = 2
    n_layers: int = 32
    actnorm_every: int = 8    # an ActNorm before every that many planar layers


class PlanarLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.u = nn.Parameter(0.1 * torch.randn(dim))
        self.w = nn.Parameter(0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """u moved along w so that wᵀû = -1 + softplus(wᵀu) > -1 (the layer is invertible)."""
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def forward(self, x):                             # x (B, D) -> (y (B, D), logdet (B,))
        u = self.u_hat()
        t = torch.tanh(x @ self.w + self.b)           # (B,)
        y = x + t[:, None] * u
        return y, torch.log((1 + (1 - t * t) * (self.w @ u)).abs())

    @torch.no_grad()
    def inverse(self, y, iters: int = 60):           # y (B, D) -> (x (B, D), -logdet (B,))
        u = self.u_hat()
        wu, c = self.w @ u, y @ self.w + self.b        # solve a + wu·tanh(a) = c for a = wᵀx + b
        lo, hi = c - wu.abs() - 1e-6, c + wu.abs() + 1e-6
        for _ in range(iters):                       # the map is increasing: bisection halves [lo, hi]
            mid = (lo + hi) / 2
            above = mid + wu * torch.tanh(mid) > c
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        t = torch.tanh((lo + hi) / 2)
        return y - t[:, None] * u, -torch.log((1 + (1 - t * t) * wu).abs())


class PlanarFlow(VectorFlow):
    def __init__(self, cfg: PlanarFlowConfig):
        super().__init__()
        self.cfg, self.dim = cfg, cfg.dim
        layers = []
        for i in range(cfg.n_layers):
            if i % cfg.actnorm_every == 0:
                layers.append(dnn.ActNorm(cfg.dim))
            layers.append(PlanarLayer(cfg.dim))
        self.flow = dnn.FlowSequential(*layers)


@register_model("planar_flow", task="moons", tiny={"n_layers": 8, "actnorm_every": 8},
                train=TrainSettings(steps=1500, batch_size=512, lr=1e-2, warmup=50, eval_every=500))
def planar_flow(**config) -> PlanarFlow:
    """Planar flow: K layers x + û·tanh(wᵀx + b) (invertibility constraint), ActNorm; two moons."""
    return PlanarFlow(PlanarFlowConfig(**config))
