"""BERT encoder for masked-language modelling: token + position embeddings, post-LayerNorm
encoder layers on dlkern.nn.MultiheadAttention with a key-padding mask, and the MLM head
(dense, GELU, LayerNorm, decoder tied to the token embedding)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class BertConfig:
    vocab_size: int = 12
    max_len: int = 16
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 4


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = dnn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm1 = dnn.LayerNorm(cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim))
        self.norm2 = dnn.LayerNorm(cfg.dim)

    def forward(self, x, key_padding_mask, cu_seqlens=None, max_seqlen=None):   # x (B, L, dim), mask True = pad
        if cu_seqlens is None:
            a, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        else:
            a = self._packed_attention(x, cu_seqlens, max_seqlen)
        x = self.norm1(x + a)
        return self.norm2(x + self.ffn(x))

    def _packed_attention(self, x, cu_seqlens, max_seqlen):
        """The same attention (MultiheadAttention's own projections) on packed sequences (1, T, dim):
        each token attends to its own sequence only, with no padding computed."""
        attn, T = self.attn, x.shape[1]
        qkv = nn.functional.linear(x[0], attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(T, 3, attn.num_heads, attn.head_dim).unbind(1)          # (T, heads, hd)
        o = DF.flash_attn_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=False)
        return attn.out_proj(o.reshape(1, T, attn.embed_dim))


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.norm = dnn.LayerNorm(cfg.dim)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.depth))
        self.mlm = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), dnn.LayerNorm(cfg.dim))
        self.decoder = nn.Linear(cfg.dim, cfg.vocab_size)
        self.decoder.weight = self.tok.weight                        # tied
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, positions=None):
        """tokens (B, L) -> logits (B, L, vocab). Packed sequences (dlkern.models.packing): tokens
        (1, T) with boundaries ``cu_seqlens`` and per-token ``positions``, no padding mask."""
        pos = positions if positions is not None else torch.arange(tokens.shape[1], device=tokens.device)
        x = self.norm(self.tok(tokens) + self.pos(pos))
        for layer in self.layers:
            x = layer(x, key_padding_mask, cu_seqlens, max_seqlen)   # (B, L, dim)
        return self.decoder(self.mlm(x))                             # (B, L, vocab)


@register_model("bert", task="palindrome", tiny={"dim": 32, "depth": 1, "heads": 1},
                train=TrainSettings(steps=300, batch_size=64, lr=2e-3, weight_decay=0.01, warmup=50))
def bert(**config) -> Bert:
    """BERT MLM with a key-padding mask; palindromes."""
    return Bert(BertConfig(**config))
