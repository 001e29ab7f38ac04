"""``MultiheadAttention`` on dlkern's fused attention, and ``patch_sdpa`` for code that calls
``torch.nn.functional.scaled_dot_product_attention`` itself (HF transformers, timm)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dlkern.ops.attention import scaled_dot_product_attention


def _sdpa_mask(attn_mask, key_padding_mask, n, h, lq, lk, dtype):
    """torch MHA's masks (bool True = *blocked*, or additive float; attn_mask (L, S) or (N·H, L, S),
    key_padding_mask (N, S)) as one SDPA mask (bool True = attend, or additive) broadcastable to
    (N, H, L, S). The key-padding part stays (N, 1, 1, S): nothing of size L x S is built for it."""
    masks = []
    if attn_mask is not None:
        m = attn_mask.view(n, h, lq, lk) if attn_mask.dim() == 3 else attn_mask
        masks.append(m)
    if key_padding_mask is not None:
        masks.append(key_padding_mask.view(n, 1, 1, lk))
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        out = ~masks[0]
        for m in masks[1:]:
            out = out & ~m
        return out
    out = None
    for m in masks:
        add = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
        out = add if out is None else out + add
    return out


def _check_mha_inputs(query, key, value, key_padding_mask, attn_mask, embed_dim, heads):
    """torch's MultiheadAttention argument checks, on (N, L, E) inputs, naming the argument."""
    n, lq, e = query.shape
    if e != embed_dim:
        raise ValueError(f"query: expected embedding dimension {embed_dim}, got {e}")
    if key.shape[:2] != value.shape[:2] or key.shape[0] != n:
        raise ValueError(f"key and value must have query's batch size {n} and one length; got key "
                         f"{tuple(key.shape)}, value {tuple(value.shape)} (batch first)")
    lk = key.shape[1]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (n, lk):
        raise ValueError(f"key_padding_mask: expected shape {(n, lk)} (batch, key length), got "
                         f"{tuple(key_padding_mask.shape)}")
    if attn_mask is not None and tuple(attn_mask.shape) not in ((lq, lk), (n * heads, lq, lk)):
        raise ValueError(f"attn_mask: expected shape {(lq, lk)} or {(n * heads, lq, lk)}, got "
                         f"{tuple(attn_mask.shape)}")


class MultiheadAttention(torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose ``need_weights=False`` path runs dlkern's fused attention.
    ``need_weights=True`` (the attention matrix is asked for), ``add_bias_kv`` and ``add_zero_attn``
    run torch's implementation. Parameters and state_dict are torch's."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights or self.bias_k is not None or self.add_zero_attn:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E) whatever batch_first says
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, e = query.shape
        lk, h = key.shape[1], self.num_heads
        _check_mha_inputs(query, key, value, key_padding_mask, attn_mask, self.embed_dim, h)
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = F.linear(query, w_q, b_q).view(n, lq, h, self.head_dim).transpose(1, 2)   # (N, H, L, hd)
        k = F.linear(key, w_k, b_k).view(n, lk, h, self.head_dim).transpose(1, 2)     # (N, H, S, hd)
        v = F.linear(value, w_v, b_v).view(n, lk, h, self.head_dim).transpose(1, 2)   # (N, H, S, hd)
        mask = _sdpa_mask(attn_mask, key_padding_mask, n, h, lq, lk, q.dtype)
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, e))                     # (N, L, E)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


@contextlib.contextmanager
def patch_sdpa():
    """While active, ``torch.nn.functional.scaled_dot_product_attention`` is dlkern's (libraries
    that look it up at call time, as HF transformers and timm do, then run dlkern's kernels)."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = scaled_dot_product_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
