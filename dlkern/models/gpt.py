"""GPT (decoder-only transformer, nanoGPT-shaped): pre-LayerNorm blocks, causal fused attention,
GELU MLP, tied token embedding / LM head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class GPTConfig:
    vocab_size: int = 17
    block_size: int = 20
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cu_seqlens=None, max_seqlen=None):
        B, T, C = x.shape
        if cu_seqlens is not None:           # packed (1, T, C): sequences kept apart by varlen attention
            if self.dropout and self.training:
                raise ValueError("packed batches: attention dropout is not supported (set dropout=0)")
            q, k, v = self.c_attn(x[0]).view(T, 3, self.n_head, C // self.n_head).unbind(1)   # (T, nh, hs)
            y = DF.flash_attn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)
            return self.c_proj(y.reshape(1, T, C))
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = DF.scaled_dot_product_attention(q, k, v, is_causal=True,
                                            dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))                                  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = dnn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = dnn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, cu_seqlens=None, max_seqlen=None):
        x = x + self.attn(self.ln_1(x), cu_seqlens, max_seqlen)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = dnn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx, cu_seqlens=None, max_seqlen=None, positions=None):
        """idx (B, T) -> logits (B, T, vocab). Packed sequences (dlkern.models.packing): idx (1, T)
        holds several sequences with boundaries ``cu_seqlens`` and per-token ``positions``."""
        B, T = idx.shape
        pos = positions if positions is not None else torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))   # (B, T, C)
        for block in self.h:
            x = block(x, cu_seqlens, max_seqlen)
        return self.lm_head(self.ln_f(x))              # (B, T, vocab)


@register_model("gpt", task="copy", tiny={"n_layer": 1, "n_head": 1, "n_embd": 16},
                train=TrainSettings(steps=250, batch_size=64, lr=3e-3, weight_decay=0.1, warmup=30, eval_every=50))
def gpt(**config) -> GPT:
    """GPT: causal attention, LayerNorm, AdamW; copy task."""
    return GPT(GPTConfig(**config))
