"""DDPM noise predictor: a tiny UNet (two resolutions) of residual blocks with GroupNorm+SiLU in
one pass (``group_norm_act``), a sinusoidal time embedding added in every block, and
self-attention over the 8x8 feature map at the bottom."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class UNetConfig:
    img_size: int = 16
    in_chans: int = 1
    timesteps: int = 200
    ch: int = 16           # channels at full resolution; 2x at half resolution
    groups: int = 4
    heads: int = 2


class NormAct(dnn.GroupNorm):
    """GroupNorm followed by SiLU, fused (its parameters are GroupNorm's)."""

    def forward(self, x):
        return DF.group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, activation="silu")


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, groups):
        super().__init__()
        self.norm1 = NormAct(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = NormAct(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t):                                  # x (B, cin, H, W), t (B, tdim)
        h = self.conv1(self.norm1(x)) + self.temb(t)[:, :, None, None]
        return self.skip(x) + self.conv2(self.norm2(h))       # (B, cout, H, W)


class AttnBlock(nn.Module):
    def __init__(self, ch, groups, heads):
        super().__init__()
        self.heads = heads
        self.norm = dnn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).transpose(3, 4)  # (B, 3, h, HW, hd)
        y = DF.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])                        # (B, h, HW, hd)
        return x + self.proj(y.transpose(2, 3).reshape(B, C, H, W))


def timestep_embedding(t, dim):
    """(B,) integer steps -> (B, dim) sinusoids."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], 1)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        c, g, tdim = cfg.ch, cfg.groups, 4 * cfg.ch
        self.tdim = c
        self.time_mlp = nn.Sequential(nn.Linear(c, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(cfg.in_chans, c, 3, padding=1)
        self.down1 = ResBlock(c, c, tdim, g)
        self.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = ResBlock(c, 2 * c, tdim, g)
        self.mid_attn = AttnBlock(2 * c, g, cfg.heads)
        self.mid = ResBlock(2 * c, 2 * c, tdim, g)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = ResBlock(2 * c + c, c, tdim, g)
        self.out_norm = NormAct(g, c)
        self.out = nn.Conv2d(c, cfg.in_chans, 3, padding=1)

    def forward(self, x, t):                                  # x (B, C, H, W), t (B,) -> ε (B, C, H, W)
        temb = self.time_mlp(timestep_embedding(t, self.tdim))          # (B, tdim)
        h1 = self.down1(self.inp(x), temb)                              # (B, c, H, W)
        h2 = self.down2(self.downsample(h1), temb)                      # (B, 2c, H/2, W/2)
        h2 = self.mid(self.mid_attn(h2), temb)
        h = self.up(torch.cat([self.upsample(h2), h1], 1), temb)        # (B, c, H, W)
        return self.out(self.out_norm(h))


@register_model("ddpm", task="denoise", tiny={"ch": 8, "groups": 2, "heads": 1},
                train=TrainSettings(steps=200, batch_size=64, lr=2e-3, warmup=20, eval_every=50))
def ddpm(**config) -> UNet:
    """DDPM tiny UNet, GroupNorm+SiLU fused, attention at 8x8; digits denoising."""
    return UNet(UNetConfig(**config))
