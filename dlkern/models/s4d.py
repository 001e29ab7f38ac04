"""S4D (diagonal state space, Gu et al. 2022) with real diagonal A ("S4D-Real"): quantized samples
embedded, pre-LayerNorm residual blocks, each a time-invariant SSM per channel (A, B, C, Δ learned
per channel, the same at every step: the selective scan with (dim, N) B and C), GELU, and a
position-wise GLU output projection; a linear head to the classes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class S4DConfig:
    classes: int = 64
    n_layer: int = 4
    d_model: int = 64
    d_state: int = 16
    dt_min: float = 1e-3
    dt_max: float = 1e-1


class S4DLayer(nn.Module):
    """y = SSM(u) + D * u per channel: h_t = exp(Δ A) h_{t-1} + Δ B u_t, y_t = C h_t."""

    def __init__(self, cfg: S4DConfig):
        super().__init__()
        h, n = cfg.d_model, cfg.d_state
        self.log_dt = nn.Parameter(torch.rand(h) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(h, 1))  # A = -(1..N)
        self.B = nn.Parameter(torch.ones(h, n))
        self.C = nn.Parameter(torch.randn(h, n) * n ** -0.5)
        self.D = nn.Parameter(torch.ones(h))

    def forward(self, u):                                            # (B, H, L) -> (B, H, L)
        delta = self.log_dt.exp()[None, :, None].expand_as(u)          # one step size per channel
        return DF.selective_scan(u, delta, -torch.exp(self.A_log), self.B, self.C, self.D)


class Block(nn.Module):
    def __init__(self, cfg: S4DConfig):
        super().__init__()
        self.norm = dnn.LayerNorm(cfg.d_model)
        self.ssm = S4DLayer(cfg)
        self.out = nn.Linear(cfg.d_model, 2 * cfg.d_model)

    def forward(self, x):                                            # (B, L, H)
        y = self.ssm(self.norm(x).transpose(1, 2)).transpose(1, 2)  # (B, L, H)
        return x + nn.functional.glu(self.out(nn.functional.gelu(y)), dim=-1)


class S4D(nn.Module):
    def __init__(self, cfg: S4DConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.classes, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = dnn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.classes)

    def forward(self, q):                            # q (B, L) classes -> logits (B, classes, L)
        x = self.embed(q)                            # (B, L, H); logits[..., t] see q[..., :t+1]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm_f(x)).transpose(1, 2)


@register_model("s4d", task="waveform", tiny={"n_layer": 1, "d_model": 4, "d_state": 4},
                train=TrainSettings(steps=400, batch_size=64, lr=3e-2, warmup=20, eval_every=100))
def s4d(**config) -> S4D:
    """S4D-Real: time-invariant diagonal SSM, GLU; mu-law sinusoid next-sample NLL."""
    return S4D(S4DConfig(**config))
