"""Triton weight normalization ``w = g * v / ||v||`` (torch._weight_norm) and its backward.

``v`` is viewed as (D, K): one row per slice along ``dim`` (D = 1 for the whole-tensor norm). One
program per row sweeps it in BLOCK chunks (a norm pass, then an output pass); rows are weight
slices, so they are few and short next to activations.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

BLOCK = 2048


@triton.jit
def _weight_norm_fwd_kernel(V, G, W, NORM, K, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        v = tl.load(V + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        acc += v * v
    norm = tl.sqrt(tl.sum(acc, axis=0))
    scale = tl.load(G + row).to(tl.float32) / norm
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        v = tl.load(V + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        tl.store(W + row * K + cols, (v * scale).to(W.dtype.element_ty), mask=cols < K)
    tl.store(NORM + row, norm)


@triton.jit
def _weight_norm_bwd_kernel(DW, V, G, NORM, DV, DG, K, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        v = tl.load(V + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        dw = tl.load(DW + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        acc += dw * v
    dot = tl.sum(acc, axis=0)
    norm = tl.load(NORM + row)
    g = tl.load(G + row).to(tl.float32)
    # w = g v / n:  dv = (g / n) (dw - v (dw . v) / n^2),  dg = (dw . v) / n
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        v = tl.load(V + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        dw = tl.load(DW + row * K + cols, mask=cols < K, other=0.0).to(tl.float32)
        dv = (g / norm) * (dw - v * (dot / (norm * norm)))
        tl.store(DV + row * K + cols, dv.to(DV.dtype.element_ty), mask=cols < K)
    tl.store(DG + row, (dot / norm).to(DG.dtype.element_ty))


def _block(k):
    return min(BLOCK, triton.next_power_of_2(max(k, 1)))


def weight_norm_fwd(v2, g1):
    """v2 (D, K) contiguous, g1 (D,) -> (w (D, K) in v's dtype, norm (D,) fp32)."""
    D, K = v2.shape
    w = new_empty(D, K, dtype=v2.dtype, device=v2.device)
    norm = new_empty(D, dtype=torch.float32, device=v2.device)
    _weight_norm_fwd_kernel[(D,)](v2, g1, w, norm, K, BLOCK_K=_block(K), num_warps=4)
    return w, norm


def weight_norm_bwd(dw2, v2, g1, norm):
    """-> (dv (D, K) in v's dtype, dg (D,) in g's dtype)."""
    D, K = v2.shape
    dw2 = dw2.contiguous()
    dv = new_empty(D, K, dtype=v2.dtype, device=v2.device)
    dg = new_empty(D, dtype=g1.dtype, device=v2.device)
    _weight_norm_bwd_kernel[(D,)](dw2, v2, g1, norm, dv, dg, K, BLOCK_K=_block(K), num_warps=4)
    return dv, dg
