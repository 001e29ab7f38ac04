"""Transformer-XL (Dai et al. 2019): a decoder-only language model that reads a long sequence in
segments and keeps each layer's input of the last ``mem_len`` positions as memory (no gradient
through it: segment-level recurrence). Attention runs over [memory; segment] with the causal
diagonal aligned bottom-right, and positions enter only as relative distances: the score of query
i and key j is (q_i + u)·k_j + (q_i + v)·W_R r_{i-j} with sinusoidal r, the second term passed to
the fused attention as a bias that receives its gradient. Evaluation and generation keep a longer
memory (``eval_mem_len``) than training, which the relative positions allow. Pre-LayerNorm blocks,
GELU MLP, tied embedding / LM head. Decoding feeds one token per step against the memory, which is
the key/value cache."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class TransformerXLConfig:
    vocab_size: int = 97
    block_size: int = 128         # the task's sequence length (not a limit: segments recur)
    seg_len: int = 32             # positions computed together (with gradient)
    mem_len: int = 32             # memory while training
    eval_mem_len: int = 96        # memory in eval mode (evaluation, generation)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


def sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """(L,) distances -> (L, dim) [sin | cos] embedding, wavelengths 2π .. 2π·10^4."""
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, dim, 2, device=distances.device, dtype=torch.float32) / dim))
    angle = distances.float()[:, None] * inv_freq[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class RelativeAttention(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.dropout = cfg.dropout
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.kv = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=False)
        self.r = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)        # W_R: distances -> per-head keys
        self.u = nn.Parameter(torch.zeros(cfg.n_head, self.head_dim))   # content bias
        self.v = nn.Parameter(torch.zeros(cfg.n_head, self.head_dim))   # position bias
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, context):
        """x (B, Lq, C) the segment, context (B, Lk, C) = [memory; segment], both normed."""
        B, Lq, C = x.shape
        Lk = context.shape[1]
        nh, hs = self.n_head, self.head_dim
        q = self.q(x).view(B, Lq, nh, hs).transpose(1, 2)                      # (B, nh, Lq, hs)
        k, v = (t.view(B, Lk, nh, hs).transpose(1, 2) for t in self.kv(context).split(C, dim=2))  # (B, nh, Lk, hs)
        # position term: (q_i + v)·W_R r_d for every distance d = 0..Lk-1, then picked per (i, j)
        r = self.r(sinusoid(torch.arange(Lk, device=x.device), C)).view(Lk, nh, hs)
        by_distance = torch.einsum("bhid,jhd->bhij", q + self.v[:, None], r)   # (B, nh, Lq, Lk) over d
        # query i sits at key position Lk - Lq + i; keys after it (d < 0) are masked by is_causal
        distance = (Lk - Lq + torch.arange(Lq, device=x.device)[:, None]
                    - torch.arange(Lk, device=x.device)[None, :]).clamp_min(0)  # (Lq, Lk)
        position = by_distance.gather(-1, distance.expand(B, nh, Lq, Lk))      # (B, nh, Lq, Lk)
        scale = 1.0 / math.sqrt(hs)   # the kernel scales q·k; the bias is added after: scale it here
        y = DF.scaled_dot_product_attention(q + self.u[:, None], k, v, attn_mask=position * scale,
                                            is_causal=True, causal_alignment="bottom_right", scale=scale,
                                            dropout_p=self.dropout if self.training else 0.0)  # (B, nh, Lq, hs)
        return self.proj(y.transpose(1, 2).reshape(B, Lq, C))                 # (B, Lq, C)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.proj(nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        self.ln_1 = dnn.LayerNorm(cfg.n_embd)
        self.attn = RelativeAttention(cfg)
        self.ln_2 = dnn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, memory):                       # x (B, Lq, C), memory (B, M, C): earlier inputs
        context = self.ln_1(torch.cat([memory, x], 1))  # (B, M + Lq, C)
        x = x + self.attn(context[:, memory.shape[1]:], context)
        return x + self.mlp(self.ln_2(x))


class TransformerXL(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = dnn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def memory_length(self) -> int:
        return self.cfg.mem_len if self.training else self.cfg.eval_mem_len

    def new_memory(self, batch: int) -> list[torch.Tensor]:
        """Empty memory: per layer (B, 0, C)."""
        return [self.wte.weight.new_zeros(batch, 0, self.cfg.n_embd) for _ in self.h]

    def segment(self, idx, memory):
        """One segment idx (B, Lq) against ``memory`` -> (logits (B, Lq, V), the next memory: each
        layer's input over the last memory_length positions, detached)."""
        x = self.drop(self.wte(idx))                    # (B, Lq, C)
        keep = self.memory_length
        new_memory = []
        for block, mem in zip(self.h, memory):
            new_memory.append(torch.cat([mem, x], 1)[:, -keep:].detach() if keep else mem)
            x = block(x, mem)
        return self.lm_head(self.ln_f(x)), new_memory

    def forward(self, idx, memory=None):                # idx (B, T) -> logits (B, T, V)
        memory = memory if memory is not None else self.new_memory(idx.shape[0])
        logits = []
        for start in range(0, idx.shape[1], self.cfg.seg_len):
            out, memory = self.segment(idx[:, start:start + self.cfg.seg_len], memory)
            logits.append(out)
        return torch.cat(logits, 1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, generator=None):
        """Read the prompt idx (B, L) in segments, then one token per step against the memory
        (greedy when temperature is 0). Returns (B, L + max_new_tokens)."""
        memory = self.new_memory(idx.shape[0])
        for start in range(0, idx.shape[1], self.cfg.seg_len):
            logits, memory = self.segment(idx[:, start:start + self.cfg.seg_len], memory)
        out = [idx]
        for _ in range(max_new_tokens):
            last = logits[:, -1]
            if temperature > 0:
                token = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator)
            else:
                token = last.argmax(-1, keepdim=True)
            out.append(token)
            logits, memory = self.segment(token, memory)
        return torch.cat(out, 1)


@register_model("transformer_xl", task="stdlib_chars",
                tiny={"n_layer": 1, "n_head": 1, "n_embd": 16, "seg_len": 32, "mem_len": 32, "eval_mem_len": 64},
                train=TrainSettings(steps=350, batch_size=32, lr=3e-3, weight_decay=0.1, warmup=30, eval_every=175))
def transformer_xl(**config) -> TransformerXL:
    """Transformer-XL: segment recurrence, relative-position bias, bottom-right causal attention; stdlib chars."""
    return TransformerXL(TransformerXLConfig(**config))
