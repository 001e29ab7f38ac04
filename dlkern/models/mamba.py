"""Mamba language model (selective state space, mamba_ssm-shaped): pre-RMSNorm residual blocks,
each a Mamba mixer (gated input projection, causal depthwise conv + SiLU, input-dependent
Δ, B, C, the selective scan, output projection), tied token embedding / LM head. No attention and
no position embedding: order comes from the conv and the scan."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.ops.selective_scan import seq_idx_from_cu_seqlens
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class MambaConfig:
    vocab_size: int = 17
    block_size: int = 20          # the task's sequence length (unused: the scan has no length limit)
    n_layer: int = 2
    d_model: int = 64
    d_state: int = 16             # N, the state size per channel
    d_conv: int = 4               # causal conv width
    expand: int = 2               # d_inner = expand * d_model
    dt_rank: int = 0              # 0: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 1e-1


class MambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        d_inner = cfg.expand * cfg.d_model
        self.d_inner, self.d_state = d_inner, cfg.d_state
        self.dt_rank = cfg.dt_rank or math.ceil(cfg.d_model / 16)
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.empty(d_inner))
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        # S4D-real initialization: A = -(1..N) in every channel, stored as log so A stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, cfg.d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self._init_dt_and_conv(cfg)

    @torch.no_grad()
    def _init_dt_and_conv(self, cfg: MambaConfig):
        """Δ = softplus(dt_proj(x) + bias) starts log-uniform in [dt_min, dt_max]: the bias is the
        softplus inverse of such a draw. Conv as torch's Conv1d(groups=d_inner) initializes it."""
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))        # softplus^-1(dt)
        bound = 1 / math.sqrt(cfg.d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)

    def forward(self, hidden, seq_idx=None):                                # (B, L, d_model)
        """``seq_idx`` (B, L) int32: packed sequences; the conv and the scan restart at each change."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                        # (B, L, d_inner) each
        x = DF.causal_conv1d(x.transpose(1, 2), self.conv_weight, self.conv_bias, seq_idx=seq_idx,
                             activation="silu")                             # (B, d_inner, L)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = nn.functional.linear(dt, self.dt_proj.weight)               # (B, L, d_inner); bias in the scan
        y = DF.selective_scan(x, delta.transpose(1, 2), -torch.exp(self.A_log),
                              B.transpose(1, 2), C.transpose(1, 2), self.D, z.transpose(1, 2),
                              delta_bias=self.dt_proj.bias, delta_softplus=True, seq_idx=seq_idx)  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))                             # (B, L, d_model)

    def new_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero decoding state: (conv state (B, d_inner, d_conv - 1) in the activations' dtype,
        scan state (B, d_inner, N) in fp32)."""
        conv = like.new_zeros(batch, self.d_inner, self.conv_weight.shape[1] - 1)
        return conv, like.new_zeros(batch, self.d_inner, self.d_state, dtype=torch.float32)

    def step(self, hidden, state, rows=None, seqlens=None):                # (B, d_model), updates state
        """One token: the same math as forward at that position, with the conv window and the scan
        state carried in ``state`` (updated in place). Serving: ``rows`` (B,) int32 picks each
        token's state in a pool of states (the conv state's conv_state_indices), ``seqlens`` (B,)
        int32 the tokens each has seen (the conv state is then a circular buffer)."""
        conv_state, ssm_state = state
        x, z = self.in_proj(hidden).chunk(2, dim=-1)                        # (B, d_inner) each
        x = DF.causal_conv1d_update(x, conv_state, self.conv_weight, self.conv_bias, "silu", seqlens, rows)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = nn.functional.linear(dt, self.dt_proj.weight)               # (B, d_inner)
        ssm = ssm_state if rows is None else ssm_state[rows.long()]        # the scan op takes no pool: gather
        y = DF.selective_state_update(ssm, x, delta, -torch.exp(self.A_log), B, C, self.D, z,
                                      dt_bias=self.dt_proj.bias, dt_softplus=True)  # (B, d_inner)
        if rows is not None:
            ssm_state[rows.long()] = ssm                                    # and scatter back
        return self.out_proj(y)                                             # (B, d_model)


class Block(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = dnn.RMSNorm(cfg.d_model)
        self.mixer = MambaMixer(cfg)

    def forward(self, x, seq_idx=None):
        return x + self.mixer(self.norm(x), seq_idx)


class Mamba(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = dnn.RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embedding.weight  # weight tying
        with torch.no_grad():  # GPT-2's residual scaling, as mamba_ssm does: out_proj / sqrt(n_layer)
            for layer in self.layers:
                layer.mixer.out_proj.weight /= math.sqrt(cfg.n_layer)

    def forward(self, idx, cu_seqlens=None, max_seqlen=None, positions=None):
        """idx (B, L) -> logits (B, L, vocab). Packed sequences (dlkern.models.packing): idx (1, T)
        with boundaries ``cu_seqlens`` (no position embedding: ``positions`` is not needed)."""
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, idx.shape[1]) if cu_seqlens is not None else None
        x = self.embedding(idx)                        # (B, L, d_model)
        for layer in self.layers:
            x = layer(x, seq_idx)
        return self.lm_head(self.norm_f(x))

    def new_state(self, batch: int) -> list:
        return [layer.mixer.new_state(batch, self.embedding.weight) for layer in self.layers]

    def step(self, token, state, rows=None, seqlens=None):  # token (B,) -> logits (B, vocab); updates state
        """Recurrent decoding: constant time and memory per token (the conv window and the scan
        state per layer), equal to ``forward`` at that position. ``rows``/``seqlens``: see
        :meth:`MambaMixer.step`."""
        x = self.embedding(token)                      # (B, d_model)
        for layer, layer_state in zip(self.layers, state):
            x = x + layer.mixer.step(layer.norm(x), layer_state, rows, seqlens)
        return self.lm_head(self.norm_f(x))

    @staticmethod
    def _pick(logits, temperature, generator):
        if temperature > 0:
            return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        return logits.argmax(-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, generator=None, lengths=None):
        """Feed the prompt idx (B, L) token by token, then sample max_new_tokens (greedy when
        temperature is 0). Returns (B, L + max_new_tokens).

        Prompts of different lengths: ``lengths`` (B,), prompt b is ``idx[b, :lengths[b]]`` (the
        rest is padding). Row b's answer is ``out[b, :lengths[b] + max_new_tokens]`` (zeros after),
        the tokens its own unbatched generate gives. Served as a pool of states: every step feeds
        each unfinished row its next prompt token or its last sampled one, only those rows
        (conv_state_indices), each conv state a circular buffer (cache_seqlens)."""
        if lengths is None:
            state = self.new_state(idx.shape[0])
            for t in range(idx.shape[1]):
                logits = self.step(idx[:, t], state)
            out = [idx]
            for _ in range(max_new_tokens):
                token = self._pick(logits, temperature, generator)
                out.append(token[:, None])
                logits = self.step(token, state)
            return torch.cat(out, 1)
        lengths = torch.as_tensor(lengths, device=idx.device).long()
        batch, total = idx.shape[0], lengths + max_new_tokens
        out = torch.zeros(batch, idx.shape[1] + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :idx.shape[1]] = idx * (torch.arange(idx.shape[1], device=idx.device) < lengths[:, None])
        state = self.new_state(batch)
        for t in range(int(total.max()) - 1):
            rows = torch.nonzero(total - 1 > t)[:, 0]                      # rows with a token still to pick
            logits = self.step(out[rows, t], state, rows.int(), torch.full_like(rows, t, dtype=torch.int32))
            sampling = t + 1 >= lengths[rows]                               # past the prompt: keep the pick
            picked = self._pick(logits, temperature, generator)
            out[rows[sampling], t + 1] = picked[sampling]
        return out


@register_model("mamba", task="copy", tiny={"n_layer": 1, "d_model": 4, "expand": 1, "d_state": 4},
                train=TrainSettings(steps=800, batch_size=64, lr=1e-2, warmup=30, eval_every=100))
def mamba(**config) -> Mamba:
    """Mamba LM: selective scan, causal conv, RMSNorm, AdamW; copy task."""
    return Mamba(MambaConfig(**config))
