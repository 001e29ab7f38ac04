"""ByteNet (Kalchbrenner et al. 2016): neural machine translation in linear time. A stack of
dilated convolutions over the source (non-causal) and one over the target (causal, "masked"),
each a residual block LayerNorm -> ReLU -> 1x1 (d -> d/2) -> LayerNorm -> ReLU -> dilated 1xk
-> LayerNorm -> ReLU -> 1x1 (d/2 -> d), dilations doubling 1, 2, 4, ... per stack. Dynamic
unfolding: the source is padded to the target's length a·|s| + b before the encoder, so the
encoder representation at target position t sits under the decoder's position t; the decoder reads
[encoder output; embedded previous target token] at every position."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class ByteNetConfig:
    vocab_size: int = 17
    src_len: int = 10
    tgt_len: int = 20             # the unfolded length: tgt_len = a * src_len + b
    bos_token: int = 16
    d_model: int = 64
    kernel_size: int = 3
    dilations: tuple = (1, 2, 4, 8)   # one stack; receptive field 1 + (k - 1) * sum(dilations)
    enc_stacks: int = 1
    dec_stacks: int = 1


class ResidualBlock(nn.Module):
    def __init__(self, d: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        self.dilation, self.causal = dilation, causal
        self.ln_in = dnn.LayerNorm(d)
        self.reduce = nn.Linear(d, d // 2)                             # 1x1 conv
        self.ln_conv = dnn.LayerNorm(d // 2)
        self.conv = nn.Conv1d(d // 2, d // 2, kernel_size)             # holds the weights; run by DF.dilated_conv1d
        self.ln_out = dnn.LayerNorm(d // 2)
        self.expand = nn.Linear(d // 2, d)                             # 1x1 conv

    def forward(self, x):                                              # (B, L, d)
        h = self.reduce(torch.relu(self.ln_in(x)))                     # (B, L, d/2)
        h = torch.relu(self.ln_conv(h)).transpose(1, 2)                # (B, d/2, L)
        h = DF.dilated_conv1d(h, self.conv.weight, self.conv.bias, self.dilation, self.causal)  # (B, d/2, L)
        return x + self.expand(torch.relu(self.ln_out(h.transpose(1, 2))))   # (B, L, d)


def stack(cfg: ByteNetConfig, stacks: int, causal: bool) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(cfg.d_model, cfg.kernel_size, d, causal)
                           for _ in range(stacks) for d in cfg.dilations))


class ByteNet(nn.Module):
    def __init__(self, cfg: ByteNetConfig):
        super().__init__()
        self.cfg = cfg
        self.pad_token = cfg.vocab_size                                # one extra source row: the unfolded padding
        self.src_embed = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)
        self.encoder = stack(cfg, cfg.enc_stacks, causal=False)
        self.tgt_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.join = nn.Linear(2 * cfg.d_model, cfg.d_model)            # [source; target] -> d
        self.decoder = stack(cfg, cfg.dec_stacks, causal=True)
        self.ln_f = dnn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def encode(self, src):                                             # (B, Ls) -> (B, Lt, d)
        """Dynamic unfolding: the source padded to the target length, then the encoder stack."""
        pad = src.new_full((src.shape[0], self.cfg.tgt_len - src.shape[1]), self.pad_token)
        return self.encoder(self.src_embed(torch.cat([src, pad], 1)))

    def decode(self, tgt_in, enc):                                     # (B, Lt'), (B, >= Lt', d) -> (B, Lt', V)
        x = self.join(torch.cat([enc[:, :tgt_in.shape[1]], self.tgt_embed(tgt_in)], -1))  # (B, Lt', d)
        return self.head(torch.relu(self.ln_f(self.decoder(x))))

    def forward(self, src, tgt_in):                                    # teacher forcing
        return self.decode(tgt_in, self.encode(src))                   # (B, Lt, V)

    @torch.no_grad()
    def generate(self, src, max_len: int):
        """Greedy decoding: the encoder once, the causal decoder re-run on the growing prefix."""
        enc = self.encode(src)
        tokens = torch.full((src.shape[0], 1), self.cfg.bos_token, dtype=torch.long, device=src.device)
        for _ in range(max_len):
            tokens = torch.cat([tokens, self.decode(tokens, enc)[:, -1:].argmax(-1)], 1)
        return tokens[:, 1:]


@register_model("bytenet", task="unfold", tiny={"d_model": 8, "dilations": (1, 2, 4)},
                train=TrainSettings(steps=600, batch_size=64, lr=3e-3, warmup=20, eval_every=150))
def bytenet(**config) -> ByteNet:
    """ByteNet: dilated conv1d encoder (non-causal) and decoder (causal), LayerNorm, dynamic unfolding; unfold (target 2x)."""
    return ByteNet(ByteNetConfig(**config))
