"""Triton decode step of the causal depthwise conv1d (causal-conv1d's ``causal_conv1d_update``):
L >= 1 new tokens per row against a rolling state, optionally a circular buffer
(``cache_seqlens``) and rows of a state pool (``conv_state_indices``).

x (B, D, L); state (B_pool, D, S) with S >= W - 1, updated in place; the row of batch b is
``conv_state_indices[b]`` (b without it; a negative index is a padding slot: y = 0, state untouched).
Token t sees the inputs at positions p = t - (W - 1) .. t; p >= 0 is x[:, :, p], p < 0 is the state
slot (base + p) mod S, where base = cache_seqlens[b] (circular buffer) or 0 (linear: the state ends
with the newest input, so slot S + p). Afterwards the state holds the newest S inputs:
    circular: slot (base + t) mod S <- x[t]   for the last min(L, S) tokens,
    linear:   slot j <- state[j + L] if j + L < S else x[j + L - S].
One program per (batch, D tile) reads every slot it needs before a barrier and writes after it (the
thread that writes a slot need not be the one that read it). The plain step (one token, S = W - 1,
no buffer, no pool) keeps its own kernel: a shift by one, ~30 % fewer instructions.
"""
import triton
import triton.language as tl

from dlkern.debug import new_empty


@triton.jit
def _causal_conv1d_step_kernel(
    X, S, Wt, Bias, Y,              # x (B, D), conv_state (B, D, W - 1) updated in place, y (B, D)
    D,
    sxb, sxd, ssb, ssd, ssw, syb, syd,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,          # next power of 2 of W - 1 (at least 1)
):
    """The plain decode step (one token, a (B, D, W - 1) linear state, no pool): the state shifts by
    one slot. Every load of the state happens before the barrier and every store after it: the state is
    shifted in place, and the thread that writes slot k need not be the one that read it (the
    loads and stores of a tile may get different thread layouts)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = d < D
    d64 = d.to(tl.int64)
    k = tl.arange(0, BLOCK_K)[None, :]
    m2 = m[:, None] & (k < WIDTH - 1)
    slots = S + b * ssb + d64[:, None] * ssd + k.to(tl.int64) * ssw           # (BLOCK_D, BLOCK_K)
    x = tl.load(X + b * sxb + d64 * sxd, mask=m, other=0.0)
    old = tl.load(slots, mask=m2, other=0.0)                                   # s[k]
    nxt = tl.load(slots + ssw, mask=m2 & (k + 1 < WIDTH - 1), other=0.0)       # s[k + 1]
    new = tl.where(k == WIDTH - 2, x[:, None], nxt)                            # (s[1], .., s[W-2], x)
    w = tl.load(Wt + d[:, None] * WIDTH + k, mask=m2, other=0.0).to(tl.float32)
    acc = tl.sum(old.to(tl.float32) * w, axis=1)
    acc += x.to(tl.float32) * tl.load(Wt + d * WIDTH + (WIDTH - 1), mask=m, other=0.0).to(tl.float32)
    tl.debug_barrier()
    tl.store(slots, new.to(S.dtype.element_ty), mask=m2)
    if HAS_BIAS:
        acc += tl.load(Bias + d, mask=m, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(Y + b * syb + d64 * syd, acc.to(Y.dtype.element_ty), mask=m)



@triton.jit
def _causal_conv1d_update_kernel(
    X, S, Wt, Bias, Y, Idx, Lens,   # x (B, D, L), state (B_pool, D, S), weight (D, W), bias (D,),
                                    # y (B, D, L), conv_state_indices (B,), cache_seqlens (B,) int32
    D, L, SLEN,                     # sizes: channels, new tokens, state length
    sxb, sxd, sxl, ssb, ssd, ssw, syb, syd, syl, sidx, slens,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    HAS_IDX: tl.constexpr, CIRCULAR: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]          # (BD, 1)
    d64 = d.to(tl.int64)
    dm = d < D
    row = b
    if HAS_IDX:
        row = tl.load(Idx + b * sidx).to(tl.int64)
    live = row >= 0                                                           # padding slot: skip
    row = tl.maximum(row, 0)
    base = 0
    if CIRCULAR:
        base = tl.load(Lens + b * slens)
    srow = S + row * ssb + d64 * ssd
    xrow = X + b * sxb + d64 * sxd
    t = tl.arange(0, BLOCK_L)[None, :]                                        # (1, BL)
    acc = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
    for k in tl.static_range(WIDTH):
        p = t - (WIDTH - 1) + k
        xv = tl.load(xrow + p.to(tl.int64) * sxl, mask=dm & (p >= 0) & (t < L), other=0.0)
        if CIRCULAR:
            slot = (base + p + SLEN) % SLEN                                   # p >= -(W - 1) >= -S
        else:
            slot = SLEN + p                                                   # no integer division
        sv = tl.load(srow + slot.to(tl.int64) * ssw, mask=live & dm & (p < 0) & (t < L), other=0.0)
        acc += (xv.to(tl.float32) + sv.to(tl.float32)) * tl.load(Wt + d * WIDTH + k, mask=dm, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + d, mask=dm, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    acc = tl.where(live, acc, 0.0)
    tl.store(Y + b * syb + d64 * syd + t.to(tl.int64) * syl, acc.to(Y.dtype.element_ty), mask=dm & (t < L))
    if CIRCULAR:
        # the last min(L, S) tokens land at slots (base + t) mod S (distinct): no slot is read after
        # the barrier, and the taps above were loaded before it
        tl.debug_barrier()
        xt = tl.load(xrow + t.to(tl.int64) * sxl, mask=dm & (t < L), other=0.0)
        slot = (base + t) % SLEN
        tl.store(srow + slot.to(tl.int64) * ssw, xt.to(S.dtype.element_ty),
                 mask=live & dm & (t < L) & (t >= L - SLEN))
    else:
        j = tl.arange(0, BLOCK_S)[None, :]                                    # (1, BS) new slot j
        js = j + L
        kept = tl.load(srow + js.to(tl.int64) * ssw, mask=live & dm & (js < SLEN), other=0.0)
        xs = js - SLEN
        fresh = tl.load(xrow + xs.to(tl.int64) * sxl, mask=dm & (xs >= 0) & (j < SLEN), other=0.0)
        new = tl.where(js < SLEN, kept.to(tl.float32), fresh.to(tl.float32))
        tl.debug_barrier()
        tl.store(srow + j.to(tl.int64) * ssw, new.to(S.dtype.element_ty), mask=live & dm & (j < SLEN))


def causal_conv1d_update(x, conv_state, weight, bias, silu, cache_seqlens=None, conv_state_indices=None):
    """x (B, D, L), conv_state (B_pool, D, S) updated in place, cache_seqlens / conv_state_indices
    (B,) int32 or None -> y (B, D, L) in x's dtype."""
    B, D, L = x.shape
    width, slen = weight.shape[1], conv_state.shape[2]
    y = new_empty(B, D, L, dtype=x.dtype, device=x.device)
    if L == 1 and slen == width - 1 and cache_seqlens is None and conv_state_indices is None:
        block = min(256, triton.next_power_of_2(max(D, 1)))
        _causal_conv1d_step_kernel[(B, triton.cdiv(D, block))](
            x, conv_state, weight, bias if bias is not None else weight, y, D,
            x.stride(0), x.stride(1), *conv_state.stride(), y.stride(0), y.stride(1),
            WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=block,
            BLOCK_K=triton.next_power_of_2(max(width - 1, 1)), num_warps=4)
        return y
    block_l = triton.next_power_of_2(max(L, 1))
    block_d = max(1, min(256, triton.next_power_of_2(max(D, 1)), 2048 // block_l))
    _causal_conv1d_update_kernel[(B, triton.cdiv(D, block_d))](
        x, conv_state, weight, bias if bias is not None else weight, y,
        conv_state_indices if conv_state_indices is not None else x,
        cache_seqlens if cache_seqlens is not None else x,
        D, L, slen, *x.stride(), *conv_state.stride(), *y.stride(),
        conv_state_indices.stride(0) if conv_state_indices is not None else 0,
        cache_seqlens.stride(0) if cache_seqlens is not None else 0,
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu),
        HAS_IDX=conv_state_indices is not None, CIRCULAR=cache_seqlens is not None,
        BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_S=triton.next_power_of_2(max(slen, 1)), num_warps=4)
    return y
