"""Vision Transformer: patch embedding by a strided conv, a class token, learned positions,
pre-LayerNorm encoder blocks on the fused attention, classifier on the class token."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class ViTConfig:
    img_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    patch_size: int = 4
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        y = DF.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])                          # (B, h, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = dnn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = dnn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        n_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, cfg.dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.depth)))
        self.norm = dnn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, x):                                            # x (B, C, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)           # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed  # (B, N+1, dim)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])                                    # (B, classes)


@register_model("vit", task="digits", tiny={"dim": 16, "depth": 1, "heads": 1},
                train=TrainSettings(steps=600, batch_size=64, lr=2e-3, weight_decay=0.05, warmup=40))
def vit(**config) -> ViT:
    """ViT, 4x4 patches, class token; digits."""
    return ViT(ViTConfig(**config))
