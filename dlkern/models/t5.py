"""T5 (Raffel et al. 2020): an encoder-decoder transformer for text-to-text tasks, where a task
prefix in the source selects the task. Pre-norm residual blocks with RMSNorm (T5's "LayerNorm":
no mean, no bias), the norm fused with the residual add before it (``add_rms_norm``), ReLU
feed-forward, no absolute positions: a learned bias per head and relative-position bucket, computed
once per stack and shared by all its layers (bidirectional in the encoder, causal in the decoder),
cross-attention from the decoder to the encoder (Lq != Lk), tied embedding / LM head. Greedy
decoding with a key/value cache (``generate``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class T5Config:
    vocab_size: int = 14
    src_len: int = 9              # the task's lengths (no absolute positions: unused by the model)
    tgt_len: int = 8
    bos_token: int = 10           # the decoder's start token
    n_layer: int = 2              # encoder layers = decoder layers
    n_head: int = 4
    d_model: int = 64
    d_ff: int = 128
    num_buckets: int = 32         # relative-position buckets (half per direction in the encoder)
    max_distance: int = 24        # distances beyond share the last bucket
    eps: float = 1e-6
    dropout: float = 0.0


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucketing of ``relative = key_pos - query_pos``: exact buckets for the nearest half of
    the distances, logarithmically wider ones up to ``max_distance``; bidirectional gives keys after
    the query their own half of the buckets, causal maps them to bucket 0 (they are masked)."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp_min(0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp_max(num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to the attention scores of every layer."""

    def __init__(self, cfg: T5Config, bidirectional: bool):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, cfg.num_buckets, cfg.max_distance
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.n_head)

    def forward(self, q_start: int, lq: int, lk: int, device) -> torch.Tensor:
        """(1, nh, Lq, Lk) bias for queries at positions q_start.. and keys at 0..Lk-1."""
        relative = torch.arange(lk, device=device)[None, :] - torch.arange(q_start, q_start + lq, device=device)[:, None]
        bucket = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0)      # (1, nh, Lq, Lk)


class Attention(nn.Module):
    """Multi-head attention without biases; self- or cross-attention by what ``kv`` is."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def heads(self, x):                                                   # (B, L, C) -> (B, nh, L, hs)
        B, L, C = x.shape
        return x.view(B, L, self.n_head, C // self.n_head).transpose(1, 2)

    def keys_values(self, kv):                                            # (B, Lk, C) -> 2 x (B, nh, Lk, hs)
        k, v = self.kv(kv).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x, k, v, bias=None, is_causal=False):               # x (B, Lq, C)
        B, L, C = x.shape
        # bottom-right: with a cache the Lq new queries are the last of the Lk keys
        y = DF.scaled_dot_product_attention(self.heads(self.q(x)), k, v, attn_mask=bias, is_causal=is_causal,
                                            causal_alignment="bottom_right")   # (B, nh, Lq, hs)
        return self.o(y.transpose(1, 2).reshape(B, L, C))                 # (B, Lq, C)


class FeedForward(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.wo(self.drop(torch.relu(self.wi(x))))


def add_norm(delta, residual, norm: dnn.RMSNorm):
    """residual += delta, then the norm of it, in one fused pass (the first block: residual None)."""
    if residual is None:
        return norm(delta), delta
    return DF.add_rms_norm(delta, residual, norm.normalized_shape, norm.weight, norm.eps)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm_attn = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.norm_ff = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.ff = FeedForward(cfg)

    def forward(self, delta, residual, bias):       # the previous sublayer's output and the residual stream
        x, residual = add_norm(delta, residual, self.norm_attn)
        x, residual = add_norm(self.attn(x, *self.attn.keys_values(x), bias), residual, self.norm_ff)
        return self.ff(x), residual


class DecoderLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm_self = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.self_attn = Attention(cfg)
        self.norm_cross = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.cross_attn = Attention(cfg)
        self.norm_ff = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.ff = FeedForward(cfg)

    def forward(self, delta, residual, bias, cross_kv, cache=None):
        """``cache``: this layer's {"k", "v"} of the earlier target positions, extended in place."""
        x, residual = add_norm(delta, residual, self.norm_self)
        k, v = self.self_attn.keys_values(x)                               # (B, nh, Lq, hs)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)   # (B, nh, Lk, hs)
            cache["k"], cache["v"] = k, v
        x, residual = add_norm(self.self_attn(x, k, v, bias, is_causal=True), residual, self.norm_cross)
        x, residual = add_norm(self.cross_attn(x, *cross_kv), residual, self.norm_ff)
        return self.ff(x), residual


class T5(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.enc_bias = RelativePositionBias(cfg, bidirectional=True)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.enc_norm = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        self.dec_bias = RelativePositionBias(cfg, bidirectional=False)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layer))
        self.dec_norm = dnn.RMSNorm(cfg.d_model, eps=cfg.eps)
        nn.init.normal_(self.shared.weight, std=1.0)   # T5's scale: the tied head divides by sqrt(d_model)

    def encode(self, src):                                                # (B, Ls) -> (B, Ls, C)
        bias = self.enc_bias(0, src.shape[1], src.shape[1], src.device)  # (1, nh, Ls, Ls), every layer
        delta, residual = self.drop(self.shared(src)), None
        for layer in self.encoder:
            delta, residual = layer(delta, residual, bias)
        return self.drop(add_norm(delta, residual, self.enc_norm)[0])

    def decode(self, tgt_in, enc, cache=None):                            # (B, Lt), (B, Ls, C) -> (B, Lt, V)
        """``cache`` (from ``new_cache``): the target positions decoded so far, extended in place."""
        start = cache[0].get("k", enc.new_empty(0, 0, 0)).shape[-2] if cache is not None else 0
        lq = tgt_in.shape[1]
        bias = self.dec_bias(start, lq, start + lq, tgt_in.device)       # (1, nh, Lq, start + Lq)
        delta, residual = self.drop(self.shared(tgt_in)), None
        for i, layer in enumerate(self.decoder):
            cross_kv = cache[i]["cross"] if cache is not None else layer.cross_attn.keys_values(enc)
            delta, residual = layer(delta, residual, bias, cross_kv, None if cache is None else cache[i])
        x = self.drop(add_norm(delta, residual, self.dec_norm)[0])
        return nn.functional.linear(x * self.cfg.d_model ** -0.5, self.shared.weight)

    def forward(self, src, tgt_in):                                       # teacher forcing
        return self.decode(tgt_in, self.encode(src))                      # (B, Lt, V)

    def new_cache(self, enc) -> list[dict]:
        """Per decoder layer: the cross-attention keys/values of ``enc`` (computed once) and room
        for the self-attention keys/values."""
        return [{"cross": layer.cross_attn.keys_values(enc)} for layer in self.decoder]

    @torch.no_grad()
    def generate(self, src, max_len: int):
        """Greedy decoding, one token per step against the cache: (B, Ls) -> (B, max_len)."""
        enc = self.encode(src)
        cache = self.new_cache(enc)
        token = torch.full((src.shape[0], 1), self.cfg.bos_token, dtype=torch.long, device=src.device)
        out = []
        for _ in range(max_len):
            token = self.decode(token, enc, cache)[:, -1].argmax(-1, keepdim=True)   # (B, 1)
            out.append(token)
        return torch.cat(out, 1)


@register_model("t5", task="text2text", tiny={"n_layer": 1, "n_head": 2, "d_model": 16, "d_ff": 32},
                train=TrainSettings(steps=800, batch_size=64, lr=3e-3, warmup=30, eval_every=200))
def t5(**config) -> T5:
    """T5: encoder-decoder, RMSNorm (fused add), shared relative-position bias, cross-attention; prefixed copy/reverse/sort."""
    return T5(T5Config(**config))
