"""EfficientNet-style network of MBConv blocks, sized for 16x16 inputs: a stride-2 3x3 stem, inverted
residual blocks (1x1 expansion, strided depthwise conv, squeeze-and-excitation, 1x1 linear
projection; BatchNorm and SiLU throughout, stochastic depth on the residual), a 1x1 head conv,
global average pool, dropout, linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.convnext import drop_path
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class EfficientNetConfig:
    img_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    stem: int = 16
    # per stage: (expand ratio, kernel, stride, out channels, repeats), EfficientNet-B0's shape, shortened
    stages: tuple = ((1, 3, 1, 16, 1), (4, 3, 2, 24, 2), (4, 5, 1, 40, 1))
    head: int = 128
    se_ratio: float = 0.25            # SE width relative to the block's input channels
    drop_path: float = 0.1            # of the last block (linear from 0)
    dropout: float = 0.1


def conv_bn_act(cin, cout, k, stride=1, groups=1, act=True):
    layers = [dnn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), dnn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.SiLU() if act else nn.Identity())


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):                                        # x (B, C, H, W)
        s = nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))  # (B, C_se, 1, 1)
        return x * torch.sigmoid(self.expand(s))


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, drop, cfg: EfficientNetConfig):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn_act(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn_act(mid, mid, k, stride, groups=mid)   # dlkern's depthwise kernel
        self.se = SqueezeExcite(mid, max(1, int(cin * cfg.se_ratio)))
        self.project = conv_bn_act(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x):                                        # x (B, cin, H, W)
        y = self.project(self.se(self.depthwise(self.expand(x))))   # (B, cout, H/stride, W/stride)
        return x + drop_path(y, self.drop, self.training) if self.residual else y


class EfficientNet(nn.Module):
    def __init__(self, cfg: EfficientNetConfig):
        super().__init__()
        self.stem = conv_bn_act(cfg.in_chans, cfg.stem, 3, stride=2)
        total = sum(s[4] for s in cfg.stages)
        blocks, cin = [], cfg.stem
        for expand, k, stride, cout, repeats in cfg.stages:
            for j in range(repeats):
                drop = cfg.drop_path * len(blocks) / max(1, total - 1)
                blocks.append(MBConv(cin, cout, expand, k, stride if j == 0 else 1, drop, cfg))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_act(cin, cfg.head, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.head, cfg.num_classes)

    def forward(self, x):                                        # x (B, C, H, W)
        x = self.head(self.blocks(self.stem(x)))                 # (B, head, H/2^s, W/2^s)
        return self.classifier(self.dropout(x.mean((2, 3))))     # (B, classes)


@register_model("efficientnet", task="digits",
                tiny={"stem": 4, "stages": ((2, 3, 2, 8, 1),), "head": 16},
                train=TrainSettings(steps=200, batch_size=64, lr=4e-3, weight_decay=1e-4, warmup=20))
def efficientnet(**config) -> EfficientNet:
    """EfficientNet-style MBConv: strided depthwise conv, BatchNorm, SE, SiLU; digits."""
    return EfficientNet(EfficientNetConfig(**config))
