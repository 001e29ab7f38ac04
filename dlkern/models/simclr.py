"""SimCLR (Chen et al. 2020) on the digits: a ResNet encoder (BatchNorm, resnet.py's blocks) whose
pooled features go through a projection head (Linear -> LayerNorm -> ReLU -> Linear); two random
augmentations of every image are pulled together and pushed from the other 2B - 2 views by the
NT-Xent loss (cross-entropy over cosine similarities / τ). No labels in training; the metric is a
linear probe on the frozen encoder features (tasks_generative.ContrastiveTask)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model
from dlkern.models.resnet import ResNet, ResNetConfig


@dataclass
class SimCLRConfig:
    img_size: int = 16
    in_chans: int = 1
    widths: tuple = (16, 32, 64)
    depths: tuple = (1, 1, 1)
    proj_dim: int = 32
    temperature: float = 0.2


def nt_xent(p1: torch.Tensor, p2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2B views: for view i the positive is its partner, the other 2B - 2 views
    are the negatives; the mean cross-entropy of the similarity rows."""
    z = F.normalize(torch.cat([p1, p2]), dim=1)                   # (2B, d)
    sim = z @ z.T / temperature                                   # (2B, 2B)
    sim = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), float("-inf"))
    B = p1.shape[0]
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(sim.device)
    return F.cross_entropy(sim, partner)


class SimCLR(nn.Module):
    def __init__(self, cfg: SimCLRConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNet(ResNetConfig(cfg.img_size, cfg.in_chans, widths=cfg.widths, depths=cfg.depths))
        self.encoder.head = nn.Identity()                         # the pooled features are the representation
        c = cfg.widths[-1]
        self.projector = nn.Sequential(nn.Linear(c, c), dnn.LayerNorm(c), nn.ReLU(), nn.Linear(c, cfg.proj_dim))

    def features(self, x):                           # x (B, C, H, W) -> (B, widths[-1])
        return self.encoder(x)

    def forward(self, x):                            # x (B, C, H, W) -> projections (B, proj_dim)
        return self.projector(self.encoder(x))

    def contrastive_loss(self, view1, view2):
        # one encoder pass over both views: BatchNorm normalizes them with the same statistics
        p = self(torch.cat([view1, view2]))                        # (2B, proj_dim)
        return nt_xent(*p.chunk(2), self.cfg.temperature)


@register_model("simclr", task="digits_contrastive", tiny={"widths": (8, 16), "depths": (1, 1), "proj_dim": 16},
                train=TrainSettings(steps=200, batch_size=128, lr=3e-3, weight_decay=1e-4, warmup=20, eval_every=100))
def simclr(**config) -> SimCLR:
    """SimCLR: ResNet + BatchNorm encoder, LayerNorm projection head, NT-Xent; digits linear probe."""
    return SimCLR(SimCLRConfig(**config))
