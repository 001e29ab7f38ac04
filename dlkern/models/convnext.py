"""ConvNeXt, sized for 16x16 inputs: a 2x2 patchify stem, stages of ConvNeXt blocks (7x7 depthwise
conv, channels-last LayerNorm, inverted-bottleneck MLP, layer scale, stochastic depth) joined by
LayerNorm + 2x2 stride-2 downsampling, global average pool, LayerNorm, linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class ConvNeXtConfig:
    img_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    dims: tuple = (32, 64)            # channels per stage
    depths: tuple = (2, 2)
    kernel_size: int = 7
    mlp_ratio: int = 4
    layer_scale_init: float = 1e-6    # ConvNeXt's layer scale γ starts tiny: blocks begin near identity
    drop_path: float = 0.1            # stochastic-depth rate of the last block (linear from 0)


def drop_path(x, p: float, training: bool):
    """Stochastic depth: drop the whole residual branch per sample with probability p, rescale
    the survivors by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class ChannelsFirstLayerNorm(dnn.LayerNorm):
    """LayerNorm over C of a (B, C, H, W) tensor: permuted to channels-last, normalized, permuted back."""
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, drop: float, cfg: ConvNeXtConfig):
        super().__init__()
        self.dwconv = dnn.Conv2d(dim, dim, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=dim)
        self.norm = dnn.LayerNorm(dim)                           # on channels-last (B, H, W, C)
        self.pwconv1 = nn.Linear(dim, cfg.mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(cfg.mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
        self.drop = drop

    def forward(self, x):                                        # x (B, C, H, W)
        y = self.dwconv(x).permute(0, 2, 3, 1)                   # (B, H, W, C)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop, self.training)


class ConvNeXt(nn.Module):
    def __init__(self, cfg: ConvNeXtConfig):
        super().__init__()
        total, done = sum(cfg.depths), 0
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, cfg.dims[0], 2, 2), ChannelsFirstLayerNorm(cfg.dims[0]))
        stages = []
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            down = [] if i == 0 else [ChannelsFirstLayerNorm(cfg.dims[i - 1]), nn.Conv2d(cfg.dims[i - 1], dim, 2, 2)]
            blocks = [Block(dim, cfg.drop_path * (done + j) / max(1, total - 1), cfg) for j in range(depth)]
            stages.append(nn.Sequential(*down, *blocks))
            done += depth
        self.stages = nn.Sequential(*stages)
        self.norm = dnn.LayerNorm(cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, x):                                        # x (B, C, H, W)
        x = self.stages(self.stem(x))                            # (B, C_last, H/2^s, W/2^s)
        return self.head(self.norm(x.mean((2, 3))))              # (B, classes)


@register_model("convnext", task="digits", tiny={"dims": (8,), "depths": (1,)},
                train=TrainSettings(steps=400, batch_size=64, lr=4e-3, weight_decay=0.05, warmup=30))
def convnext(**config) -> ConvNeXt:
    """ConvNeXt: 7x7 depthwise conv, channels-last LayerNorm, layer scale, drop-path; digits."""
    return ConvNeXt(ConvNeXtConfig(**config))
