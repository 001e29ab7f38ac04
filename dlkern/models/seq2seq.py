"""Sequence to sequence with attention (Bahdanau et al. 2015; Luong et al. 2015's multiplicative
score): a bidirectional recurrent encoder (LSTM or GRU), a recurrent decoder started from the
encoder's final states, and at every target step scaled dot-product attention of the decoder state
over the encoder states; the context and the state go through a tanh layer and LayerNorm to the
output. Trained with teacher forcing (the decoder reads the true previous token, so attention runs
for all steps in one call), decoded greedily one step at a time."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import dlkern.nn as dnn
import dlkern.nn.functional as DF
from dlkern.models.registry import TrainSettings, register_model

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class Seq2SeqConfig:
    vocab_size: int = 17
    src_len: int = 10             # the task's lengths (the recurrences have no limit)
    tgt_len: int = 10
    bos_token: int = 16
    cell: str = "lstm"            # lstm | gru
    n_layer: int = 1
    d_embed: int = 64
    hidden: int = 128             # decoder state; each encoder direction has hidden / 2


class Encoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        self.rnn = CELLS[cfg.cell](cfg.d_embed, cfg.hidden // 2, cfg.n_layer, batch_first=True, bidirectional=True)

    def forward(self, src):           # (B, Ls) -> states (B, Ls, hidden), decoder's initial state
        states, final = self.rnn(self.embed(src))
        return states, self.bridge(final)

    @staticmethod
    def bridge(final):
        """The two directions' last states side by side: (2 * layers, B, h/2) -> (layers, B, h);
        an LSTM's (h, c) pair each."""
        if isinstance(final, tuple):
            return tuple(Encoder.bridge(f) for f in final)
        layers2, B, half = final.shape
        return final.view(layers2 // 2, 2, B, half).transpose(1, 2).reshape(layers2 // 2, B, 2 * half)


class Decoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        self.rnn = CELLS[cfg.cell](cfg.d_embed, cfg.hidden, cfg.n_layer, batch_first=True)
        self.key = nn.Linear(cfg.hidden, cfg.hidden, bias=False)       # score(h_t, s_j) = h_t · W s_j
        self.combine = nn.Linear(2 * cfg.hidden, cfg.hidden)
        self.norm = dnn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, tgt_in, state, enc_states, enc_keys):
        """tgt_in (B, Lt) previous tokens, state the recurrence's -> (logits (B, Lt, V), state)."""
        out, state = self.rnn(self.embed(tgt_in), state)                # (B, Lt, h)
        context = DF.scaled_dot_product_attention(out[:, None], enc_keys[:, None], enc_states[:, None])[:, 0]  # (B, Lt, h)
        attended = self.norm(torch.tanh(self.combine(torch.cat([context, out], -1))))  # (B, Lt, h)
        return self.head(attended), state


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}; got {cfg.cell!r}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, src, tgt_in):                                    # teacher forcing
        enc_states, state = self.encoder(src)                          # (B, Ls, h)
        return self.decoder(tgt_in, state, enc_states, self.decoder.key(enc_states))[0]   # (B, Lt, V)

    @torch.no_grad()
    def generate(self, src, max_len: int):
        """Greedy decoding, one step of the recurrence per token: (B, Ls) -> (B, max_len)."""
        enc_states, state = self.encoder(src)
        enc_keys = self.decoder.key(enc_states)
        token = torch.full((src.shape[0], 1), self.cfg.bos_token, dtype=torch.long, device=src.device)
        out = []
        for _ in range(max_len):
            logits, state = self.decoder(token, state, enc_states, enc_keys)
            token = logits[:, -1].argmax(-1, keepdim=True)             # (B, 1)
            out.append(token)
        return torch.cat(out, 1)


@register_model("seq2seq", task="reverse", tiny={"d_embed": 8, "hidden": 16},
                train=TrainSettings(steps=500, batch_size=64, lr=3e-3, warmup=20, eval_every=250))
def seq2seq(**config) -> Seq2Seq:
    """Seq2Seq: bidirectional LSTM (or GRU) encoder, recurrent decoder, dot-product attention, LayerNorm; reverse."""
    return Seq2Seq(Seq2SeqConfig(**config))
