"""Triton fused attention, FlashAttention-2 style: forward with online softmax (the row logsumexp is
saved), backward by recomputation: dK/dV per key block (key-major), with dQ added by fp32 atomics
from the same kernel (default) or, deterministic, by a second pass per query block.

Contract (shared with the CUDA twin in csrc/attention): q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) with
query head h reading kv head h // (Hq // Hkv); ``bias`` None or a (B, Hq, Lq, Lk) view whose
broadcast dims have stride 0 (read through its strides, never materialized); ``scale`` (Hq,) fp32
per-head softmax scale; causal masking aligned top-left or bottom-right (key j is masked for query i
when j > i + offset, offset = Lk - Lq for bottom-right); dropout from Philox keyed by ``seed`` and
counter ((b·Hq + h)·Lq + i)·Lk + j, so the backward regenerates the forward's mask. A query row
whose keys are all masked gives o = 0, lse = -inf and zero gradients.

Scores are kept in base 2 (exp2 is the fast hardware exponential): s2 = s · log2(e).

Kernels: ``attention_fwd.py`` (forward), ``attention_bwd.py`` (backward); launch configurations as
data: ``attention_configs.py``. This file holds the launchers.
"""
import torch
import triton

from dlkern.debug import new_empty

from .attention_bwd import _attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .attention_configs import ARCHS, arch_of, len_key
from .attention_fwd import _attn_fwd_kernel


# ---------------------------------------------------------------------------------------------
# Launchers (same names and signatures as the CUDA twins)
# ---------------------------------------------------------------------------------------------
def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _arch_key(device):
    """Index into attention_configs.ARCHS of the GPU (the interpreter ignores it)."""
    return ARCHS.index(arch_of(device)) if device.type == "cuda" else 0


def _common(q, k, v, bias, dropout_p, is_causal, bottom_right):
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    bias_strides = bias.stride() if bias is not None else (0, 0, 0, 0)
    meta = dict(D=D, HAS_BIAS=bias is not None, IS_CAUSAL=bool(is_causal), DROPOUT=dropout_p > 0.0,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_D=max(16, triton.next_power_of_2(D)))
    keys = (_arch_key(q.device), len_key(Lq), len_key(Lk))
    scalars = ((Lk - Lq) if bottom_right else 0, float(dropout_p))
    return B, Hq, Hkv, Lq, Lk, bias_strides, meta, keys, scalars


def attention_fwd(q, k, v, bias, scale, dropout_p, seed, is_causal, bottom_right):
    """-> (o (B, Hq, Lq, D) contiguous in q's dtype, lse (B, Hq, Lq) fp32). See the module docstring."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, Hq, Hkv, Lq, Lk, sb, meta, keys, (offset, p) = _common(q, k, v, bias, dropout_p, is_causal, bottom_right)
    o = new_empty(B, Hq, Lq, meta["D"], dtype=q.dtype, device=q.device)
    lse = new_empty(B, Hq, Lq, dtype=torch.float32, device=q.device)
    grid = lambda META: (triton.cdiv(Lq, META["BLOCK_M"]), B * Hq)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, bias if bias is not None else q, scale, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *sb,
        Hq, Hq // Hkv, Lq, Lk, offset, p, int(seed), *keys, **meta)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, bias, scale, dropout_p, seed, is_causal, bottom_right, bias_grad,
                  deterministic=True):
    """-> (dq, dk, dv in q's dtype, contiguous; dscores (B, Hq, Lq, Lk) fp32 if bias_grad else None).

    ``deterministic=False`` (and no bias gradient): dQ is accumulated by the dK/dV kernel with fp32
    atomics (5 tile matmuls per block instead of 7; the summation order, so the last bits of dQ,
    vary between runs). ``True``: a separate dQ pass, bitwise reproducible."""
    q, k, v, do = (_last_dim_contiguous(t) for t in (q, k, v, do))
    o = o.contiguous()
    B, Hq, Hkv, Lq, Lk, sb, meta, keys, (offset, p) = _common(q, k, v, bias, dropout_p, is_causal, bottom_right)
    D, dev = meta["D"], q.device
    delta = new_empty(B, Hq, Lq, dtype=torch.float32, device=dev)
    _attn_bwd_delta_kernel[(triton.cdiv(Lq, 16), B * Hq)](
        o, do, delta, do.stride(0), do.stride(1), do.stride(2), Hq, Lq, D,
        BLOCK_M=16, BLOCK_D=meta["BLOCK_D"], num_warps=4)
    atomic = not deterministic and not bias_grad
    dk = new_empty(B, Hkv, Lk, D, dtype=q.dtype, device=dev)
    dv = new_empty(B, Hkv, Lk, D, dtype=q.dtype, device=dev)
    # fp32 dQ accumulator of the atomic path (a one-element stand-in otherwise: the autotuner
    # zeroes this argument between timed configs)
    dq_acc = torch.zeros((B, Hq, Lq, D) if atomic else (1,), dtype=torch.float32, device=dev)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), *sb, do.stride(0), do.stride(1), do.stride(2))
    bias_arg = bias if bias is not None else q
    _attn_bwd_dkdv_kernel[lambda META: (triton.cdiv(Lk, META["BLOCK_N"]), B * Hkv)](
        q, k, v, bias_arg, scale, do, lse, delta, dk, dv, dq_acc, *strides,
        Hq, Hkv, Hq // Hkv, Lq, Lk, offset, p, int(seed), *keys, DQ_ATOMIC=atomic, **meta)
    if atomic:
        return dq_acc.to(q.dtype), dk, dv, None
    dq = new_empty(B, Hq, Lq, D, dtype=q.dtype, device=dev)
    ds = torch.zeros(B, Hq, Lq, Lk, dtype=torch.float32, device=dev) if bias_grad else None
    _attn_bwd_dq_kernel[lambda META: (triton.cdiv(Lq, META["BLOCK_M"]), B * Hq)](
        q, k, v, bias_arg, scale, do, lse, delta, dq, ds if ds is not None else delta, *strides,
        Hq, Hq // Hkv, Lq, Lk, offset, p, int(seed), *keys, BIAS_GRAD=bool(bias_grad), **meta)
    return dq, dk, dv, ds
