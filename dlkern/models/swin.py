"""Swin Transformer: non-overlapping patches, window attention with a learned relative position
bias (passed to the fused attention as a float mask, which gets its gradient), shifted windows
with the cross-region mask on alternate blocks, patch merging between stages."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class SwinConfig:
    img_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    patch_size: int = 2
    dim: int = 32
    depths: tuple = (2, 2)
    heads: tuple = (2, 4)
    window: int = 4
    mlp_ratio: int = 2


def relative_position_index(w: int) -> torch.Tensor:
    """(w², w²): index into the ((2w-1)², heads) bias table for each query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)                         # (N, N, 2)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def partition(x, w):                                        # (B, H, W, C) -> (B, nW, w*w, C)
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).transpose(2, 3)
    return x.reshape(B, (H // w) * (W // w), w * w, C)


def unpartition(x, w, H, W):                                # (B, nW, w*w, C) -> (B, H, W, C)
    B, _, _, C = x.shape
    return x.view(B, H // w, W // w, w, w, C).transpose(2, 3).reshape(B, H, W, C)


def shift_mask(res: int, w: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask: after the cyclic shift, tokens from different regions of a window
    do not attend to each other."""
    label = torch.zeros(1, res, res, 1)
    bounds = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((h, v) for h in bounds for v in bounds):
        label[:, hs, ws] = i
    win = partition(label, w).squeeze(-1)[0]                                    # (nW, N)
    return (win[:, :, None] != win[:, None, :]).float() * -100.0


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * w - 1) ** 2, heads) * 0.02)
        self.register_buffer("rel_index", relative_position_index(w), persistent=False)

    def forward(self, x, mask=None):                         # x (B, nW, N, C), mask (nW, N, N)
        B, nW, N, C = x.shape
        qkv = self.qkv(x).view(B, nW, N, 3, self.heads, C // self.heads).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, h, N, hd)
        bias = self.bias_table[self.rel_index].permute(2, 0, 1)                 # (h, N, N)
        bias = bias if mask is None else bias + mask[:, None]                   # (nW, h, N, N)
        y = DF.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)   # (B, nW, h, N, hd)
        return self.proj(y.transpose(2, 3).reshape(B, nW, N, C))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, res, w, shift, mlp_ratio):
        super().__init__()
        self.w, self.shift = w, shift
        self.norm1 = dnn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, w)
        self.norm2 = dnn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.register_buffer("mask", shift_mask(res, w, shift) if shift else None, persistent=False)

    def forward(self, x):                                    # x (B, H, W, C)
        B, H, W, C = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = unpartition(self.attn(partition(y, self.w), self.mask), self.w, H, W)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = dnn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):                                    # (B, H, W, C) -> (B, H/2, W/2, 2C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduce(self.norm(x))


class Swin(nn.Module):
    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.embed_norm = dnn.LayerNorm(cfg.dim)
        layers, dim, res = [], cfg.dim, cfg.img_size // cfg.patch_size
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.heads)):
            if i > 0:
                layers.append(PatchMerging(dim))
                dim, res = 2 * dim, res // 2
            w = min(cfg.window, res)
            for j in range(depth):  # shift on odd blocks while there is more than one window
                layers.append(SwinBlock(dim, heads, res, w, w // 2 if j % 2 and res > w else 0, cfg.mlp_ratio))
        self.layers = nn.Sequential(*layers)
        self.norm = dnn.LayerNorm(dim)
        self.head = nn.Linear(dim, cfg.num_classes)

    def forward(self, x):                                    # x (B, C, H, W)
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))   # (B, H/p, W/p, dim)
        x = self.norm(self.layers(x))                                   # (B, h, w, C_last)
        return self.head(x.mean((1, 2)))                                # (B, classes)


@register_model("swin", task="digits", tiny={"dim": 16, "depths": (2,), "heads": (1,)},
                train=TrainSettings(steps=1000, batch_size=64, lr=2e-3, weight_decay=0.05, warmup=40, eval_every=200))
def swin(**config) -> Swin:
    """Swin, shifted windows, relative position bias through the attention mask; digits."""
    return Swin(SwinConfig(**config))
