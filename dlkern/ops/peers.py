"""Peer libraries the benchmark compares against, when installed (Liger-Kernel, apex, mamba_ssm).

Each factory returns a callable with the dlkern op's positional signature, or None when the peer
is not importable; nothing here is imported at dlkern import time.
"""
from __future__ import annotations

import importlib


def _try_import(name):
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or installed without its compiled parts
        return None


def liger_layer_norm():
    mod = _try_import("liger_kernel.ops.layer_norm")
    if mod is None:
        return None

    def run(x, normalized_shape, weight, bias, eps=1e-5):
        return mod.LigerLayerNormFunction.apply(x, weight, bias, eps)
    return run


def liger_rms_norm():
    mod = _try_import("liger_kernel.ops.rms_norm")
    if mod is None:
        return None

    def run(x, normalized_shape, weight, eps=None):
        return mod.LigerRMSNormFunction.apply(x, weight, 1e-6 if eps is None else eps)
    return run


def apex_layer_norm():
    mod = _try_import("apex.normalization.fused_layer_norm")
    if mod is None:
        return None

    def run(x, normalized_shape, weight, bias, eps=1e-5):
        return mod.fused_layer_norm_affine(x, weight, bias, tuple(normalized_shape), eps)
    return run


def apex_rms_norm():
    mod = _try_import("apex.normalization.fused_layer_norm")
    if mod is None:
        return None

    def run(x, normalized_shape, weight, eps=None):
        return mod.fused_rms_norm_affine(x, weight, tuple(normalized_shape), 1e-6 if eps is None else eps)
    return run


def flash_attn_sdpa():
    """flash-attn 2's ``flash_attn_func`` behind the SDPA signature (no masks; causal is
    top-left, its only alignment when Lq == Lk)."""
    mod = _try_import("flash_attn")
    if mod is None:
        return None

    def run(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None:
            raise ValueError("attn_mask: the flash_attn peer times mask-free cases only (flash_attn_func takes no mask)")
        out = mod.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                  dropout_p=dropout_p, softmax_scale=scale, causal=is_causal)
        return out.transpose(1, 2)
    return run


def mamba_ssm_selective_scan():
    mod = _try_import("mamba_ssm.ops.selective_scan_interface")
    return None if mod is None else mod.selective_scan_fn  # same signature as dlkern's
