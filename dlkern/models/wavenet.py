"""WaveNet (unconditional, van den Oord et al. 2016): quantized samples embedded, stacks of gated
causal dilated conv layers (dilations 1, 2, 4, ..., repeated) with residual and skip outputs, the
skip sum through ReLU / 1x1 / ReLU / 1x1 to a softmax over the quantization classes."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class WaveNetConfig:
    classes: int = 64
    residual_channels: int = 32
    skip_channels: int = 64
    dilation_cycle: int = 6       # dilations 1 .. 2^(cycle-1) per stack
    stacks: int = 2               # receptive field: 1 + stacks * (2^cycle - 1) samples


class WaveNet(nn.Module):
    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.classes, cfg.residual_channels)     # = a 1x1 conv on one-hot input
        self.layers = nn.ModuleList(
            dnn.WaveNetLayer(cfg.residual_channels, cfg.skip_channels, kernel_size=2, dilation=2 ** i)
            for _ in range(cfg.stacks) for i in range(cfg.dilation_cycle))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1),
                                  nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.classes, 1))

    def forward(self, q):                             # q (B, L) classes -> logits (B, classes, L)
        x = self.embed(q).transpose(1, 2)             # (B, C, L); logits[..., t] see q[..., :t+1]
        skips = 0
        for layer in self.layers:
            x, skip = layer(x)                        # (B, C, L), (B, S, L)
            skips = skips + skip
        return self.head(skips)


@register_model("wavenet", task="waveform",
                tiny={"residual_channels": 4, "skip_channels": 4, "dilation_cycle": 2, "stacks": 1},
                train=TrainSettings(steps=400, batch_size=64, lr=1e-2, warmup=20, eval_every=100))
def wavenet(**config) -> WaveNet:
    """WaveNet: gated dilated causal conv layers, skip sum; mu-law sinusoid next-sample NLL."""
    return WaveNet(WaveNetConfig(**config))
