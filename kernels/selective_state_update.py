"""Triton ``selective_state_update``: one decoding step of the selective scan, in place on the state
(math: dlkern/ops/selective_scan.py, ``selective_state_update_ref``).

One program per (batch, BLOCK_D channels) holds a (BLOCK_D, N) tile of the state::

    dt = softplus(dt + dt_bias);  h = exp(dt A) h + dt x B[g];  out = sum_n C[g] h + D x;  * silu(z)

where g = d // (dim / G) is the channel's group of B and C. With IDX, program row b updates the
state row IDX[b] of a pool. Each element of the state is loaded and
stored through the same pointer tile (one layout, so the thread that writes an element is the one
that read it), and the kernel is never autotuned: a second launch of an in-place step would apply
the step twice.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty


@triton.jit
def _selective_state_update_kernel(
    # pointers: state (batch, dim, N) updated in place; x, dt, z, out (batch, dim); A (dim, N);
    # B, C (batch, G, N); D, BIAS (dim,); IDX (batch,) int32 state rows
    S, X, DT, A, B, C, D, Z, BIAS, OUT, IDX,
    # sizes
    dim, N, dim_per_group,
    # strides
    ssb, ssd, ssn, sxb, sxd, sdtb, sdtd, sad, san, sbb, sbg, sbn, scb, scg, scn, szb, szd, sob, sod,
    # meta
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_IDX: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)                      # (BLOCK_D,)
    n = tl.arange(0, BLOCK_N)[None, :]                                          # (1, BLOCK_N)
    d_ok = d < dim
    m2 = d_ok[:, None] & (n < N)
    d64 = d.to(tl.int64)
    g = (d // dim_per_group).to(tl.int64)[:, None]                              # B/C group per channel
    x = tl.load(X + b * sxb + d64 * sxd, mask=d_ok, other=0.0).to(tl.float32)
    dt = tl.load(DT + b * sdtb + d64 * sdtd, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(BIAS + d, mask=d_ok, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    Av = tl.load(A + d64[:, None] * sad + n * san, mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B + b * sbb + g * sbg + n * sbn, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C + b * scb + g * scg + n * scn, mask=m2, other=0.0).to(tl.float32)
    sb = tl.load(IDX + b).to(tl.int64) if HAS_IDX else b
    state = S + sb * ssb + d64[:, None] * ssd + n * ssn
    h = tl.load(state, mask=m2, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * Av) * h + (dt * x)[:, None] * Bv
    tl.store(state, h.to(S.dtype.element_ty), mask=m2)
    out = tl.sum(h * Cv, axis=1)
    if HAS_D:
        out += x * tl.load(D + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + b * szb + d64 * szd, mask=d_ok, other=0.0).to(tl.float32)
        out = out * z * tl.sigmoid(z)
    tl.store(OUT + b * sob + d64 * sod, out.to(OUT.dtype.element_ty), mask=d_ok)


def _block_d(N):
    """About 1024 state elements per program (8 per thread with 4 warps): at (64, 4096, 16) that is
    64 channels, 4096 programs."""
    return max(1, min(128, 1024 // triton.next_power_of_2(N)))


def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices=None):
    """state (batch, dim, N) any strides, updated in place; x, dt, z (batch, dim); A (dim, N);
    B, C (batch, G, N); D, dt_bias (dim,) or None -> out (batch, dim) in x's dtype. With
    state_batch_indices ((batch,) int32), row b updates state[state_batch_indices[b]]."""
    batch, (dim, N) = x.shape[0], state.shape[1:]
    idx = state_batch_indices.to(torch.int32).contiguous() if state_batch_indices is not None else None
    out = new_empty(batch, dim, dtype=x.dtype, device=x.device)
    if batch == 0 or dim == 0:
        return out
    block_d = _block_d(N)
    zs = z.stride() if z is not None else (0, 0)
    _selective_state_update_kernel[(batch, triton.cdiv(dim, block_d))](
        state, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, out, idx,
        dim, N, dim // B.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *zs, *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HAS_IDX=idx is not None,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(N), num_warps=4)
    return out
