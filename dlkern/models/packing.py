"""Packed sequences for the sequence tasks (``dlkern train MODEL --packed``).

A task that supports packing draws *variable-length* batches as a padded tuple
``(tokens (B, L), valid (B, L) bool, targets (B, L))`` (``targets`` -100 where unscored or padded).
The model can take such a batch two ways with the same per-token logits:

* padded (``--varlen-padded``): the (B, L) rows as they are, padding masked (causal models need no
  mask: their pads follow the sequence);
* packed (``--packed``): the valid tokens of all rows concatenated into one row (1, T), with
  ``cu_seqlens`` (B + 1,) int32 sequence boundaries and ``positions`` (1, T) (each token's column
  in the padded batch, i.e. its position id). The model keeps sequences apart (varlen attention,
  conv/scan state reset at the boundaries) and no compute is spent on padding.

Both losses are the mean cross-entropy over the same scored tokens, so a packed run's losses equal
the padded run's (tests/models/test_packed.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dlkern.ops.selective_scan import seq_idx_from_cu_seqlens


@dataclass
class Packed:
    tokens: Tensor        # (1, T) the valid tokens of every sequence, one after another
    targets: Tensor       # (T,)
    cu_seqlens: Tensor    # (S + 1,) int32: sequence i is tokens[:, cu[i]:cu[i+1]]
    max_seqlen: int
    positions: Tensor     # (1, T) position id of each token

    def model_kwargs(self) -> dict:
        return {"cu_seqlens": self.cu_seqlens, "max_seqlen": self.max_seqlen, "positions": self.positions}


def pack(tokens: Tensor, valid: Tensor, targets: Tensor) -> Packed:
    """The valid tokens of a padded batch, row after row, in one row."""
    lengths = valid.sum(1)
    cu = torch.zeros(tokens.shape[0] + 1, dtype=torch.int32, device=tokens.device)
    cu[1:] = lengths.cumsum(0)
    columns = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return Packed(tokens[valid][None], targets[valid], cu, int(lengths.max()) if lengths.numel() else 0,
                  columns[valid][None])


def packed_loss(model, packed: Packed) -> Tensor:
    logits = model(packed.tokens, **packed.model_kwargs())               # (1, T, V)
    return F.cross_entropy(logits[0], packed.targets, ignore_index=-100)


def per_sequence_losses(logits: Tensor, targets: Tensor, cu_seqlens: Tensor) -> Tensor:
    """(S,) mean cross-entropy of each packed sequence's scored tokens (logits (T, V), targets (T,))."""
    losses = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="none")
    scored = (targets != -100).float()
    seq = seq_idx_from_cu_seqlens(cu_seqlens, targets.numel())[0].long()
    count = torch.zeros(cu_seqlens.numel() - 1, device=logits.device).index_add_(0, seq, scored)
    return torch.zeros_like(count).index_add_(0, seq, losses * scored) / count.clamp_min(1)
