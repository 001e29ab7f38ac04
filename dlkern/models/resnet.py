"""ResNet with basic or bottleneck blocks and an optional squeeze-and-excitation gate (SENet),
sized for 16x16 inputs: a 3x3 stem (no max-pool), three stages with stride-2 transitions,
BatchNorm from dlkern.nn, global average pool, linear classifier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class ResNetConfig:
    img_size: int = 16
    in_chans: int = 1
    num_classes: int = 10
    block: str = "basic"              # "basic" | "bottleneck"
    widths: tuple = (16, 32, 64)      # output channels per stage (bottleneck: 4x its inner width)
    depths: tuple = (1, 1, 1)
    se: bool = False                  # squeeze-and-excitation after each block's last conv
    se_ratio: int = 4


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // ratio), 1)
        self.fc2 = nn.Conv2d(max(1, channels // ratio), channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)                           # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


def conv_bn(cin, cout, k, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), dnn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, cfg: ResNetConfig):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.se = SqueezeExcite(cout, cfg.se_ratio) if cfg.se else nn.Identity()
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = self.se(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, stride, cfg: ResNetConfig):
        super().__init__()
        mid = max(1, cout // 4)
        self.conv1 = conv_bn(cin, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, stride)
        self.conv3 = conv_bn(mid, cout, 1)
        self.se = SqueezeExcite(cout, cfg.se_ratio) if cfg.se else nn.Identity()
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(self.se(self.conv3(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[cfg.block]
        self.stem = conv_bn(cfg.in_chans, cfg.widths[0], 3)
        layers, cin = [], cfg.widths[0]
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            for j in range(depth):
                layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1, cfg))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, cfg.num_classes)

    def forward(self, x):                                        # x (B, C, H, W)
        x = self.layers(torch.relu(self.stem(x)))                # (B, C_last, H/4, W/4)
        return self.head(x.mean((2, 3)))                         # (B, classes)


_TRAIN = TrainSettings(steps=300, batch_size=64, lr=3e-3, weight_decay=5e-4, warmup=20, eval_every=100)


@register_model("resnet", task="digits", train=_TRAIN, tiny={"widths": (8,), "depths": (1,)})
def resnet(**config) -> ResNet:
    """ResNet, basic blocks, BatchNorm; digits."""
    return ResNet(ResNetConfig(**config))


@register_model("se_resnet", task="digits", train=_TRAIN,
                config={"block": "bottleneck", "se": True, "widths": (32, 64, 128)},
                tiny={"block": "bottleneck", "se": True, "widths": (16,), "depths": (1,)})
def se_resnet(**config) -> ResNet:
    """SE-ResNet, bottleneck blocks with squeeze-and-excitation; digits."""
    return ResNet(ResNetConfig(**config))
