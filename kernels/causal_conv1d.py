"""Triton causal depthwise conv1d (Mamba's short convolution) with fused SiLU and its backward, with
causal-conv1d's packed sequences (``seq_idx``) and initial states (the decode step:
causal_conv1d_update.py).

x (B, D, L) with any strides (channel-first, channel-last = a (B, L, D) tensor transposed, or a
strided view); weight (D, W) with W <= 8.

    z[b, d, l] = bias[d] + sum_k weight[d, k] * x[b, d, l - (W - 1) + k]      (x = 0 before l = 0)
    y = z  or  silu(z)

x before l = 0 is initial_states[b, d, W - 1 + l] when given (zeros otherwise); under seq_idx a tap
whose position belongs to another sequence (seq_idx[b, src] != seq_idx[b, l]) reads 0, so the
sequences packed in one row never see each other.

Tiling (Dao's causal-conv1d design): one program per (L chunk, batch, D tile) walks its chunk in
blocks of V positions. Each block is loaded once with 128-bit loads (channel-first: a thread holds V
consecutive positions of one channel; channel-last: a thread holds 8 (bf16) or 4 (fp32) consecutive
channels of a row, one row load per position) and kept as V register columns of BLOCK_D channels;
the last W - 1 columns carry over to the next block, so every tap comes from registers and only the
W - 1 positions before the chunk are loaded twice (by this program and its left neighbour).

Backward (dz = dy, or dy * silu'(z) with z recomputed from the same register columns):
    dx[l] = sum_j weight[d, W - 1 - j] * dz[l + j]
    dweight[d, k] = sum_{b, l} dz[l] * x[l - (W - 1) + k],   dbias[d] = sum_{b, l} dz[l]
dx needs dz W - 1 positions ahead, so it is written LAG positions behind the block just loaded (LAG
= V channel-first, keeping the stores aligned vectors; W - 1 channel-last, where a row store is a
vector whatever its position); the walk runs LAG positions past the chunk's end for the last dx.
dinitial_states[p] (p = -(W-1)..-1) is dx's formula at a negative position: chunk 0's first lagged
outputs. dweight/dbias are per-thread register sums written as fp32 partials per (batch, chunk) and
summed in a fixed order (deterministic).
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty, new_empty_like

MAX_WIDTH = 8


# ---- register columns ---------------------------------------------------------------------------
@triton.jit
def _split8(t, BD: tl.constexpr):
    """[BD, 8] -> the 8 columns [BD] in position order (splits of in-thread pairs: no data moves)."""
    ev, od = tl.split(tl.reshape(t, [BD, 4, 2]))          # positions 0 2 4 6 | 1 3 5 7
    e0, e1 = tl.split(tl.reshape(ev, [BD, 2, 2]))         # 0 4 | 2 6
    o0, o1 = tl.split(tl.reshape(od, [BD, 2, 2]))         # 1 5 | 3 7
    c0, c4 = tl.split(e0)
    c2, c6 = tl.split(e1)
    c1, c5 = tl.split(o0)
    c3, c7 = tl.split(o1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _join8(c, BD: tl.constexpr):
    """The inverse of _split8: 8 columns [BD] -> [BD, 8]."""
    ev = tl.reshape(tl.join(tl.join(c[0], c[4]), tl.join(c[2], c[6])), [BD, 4])
    od = tl.reshape(tl.join(tl.join(c[1], c[5]), tl.join(c[3], c[7])), [BD, 4])
    return tl.reshape(tl.join(ev, od), [BD, 8])


@triton.jit
def _load_cols(Ptr, row, d, p, D, L, sl, CHANNEL_LAST: tl.constexpr, V: tl.constexpr, BD: tl.constexpr):
    """V fp32 columns [BD]: Ptr[row + l * sl] at l = p..p+V-1, 0 past L and past D (p >= 0).
    Channel-first (V = 8) one [BD, 8] load, 8 positions per thread; channel-last one row per position."""
    if CHANNEL_LAST:
        cols = ()
        for i in tl.static_range(V):
            v = tl.load(Ptr + row + (p + i).to(tl.int64) * sl, mask=(d < D) & (p + i < L), other=0.0)
            cols = cols + (v.to(tl.float32),)
    else:
        l = p + tl.arange(0, V)
        t = tl.load(Ptr + row[:, None] + l.to(tl.int64)[None, :] * sl,
                    mask=(d < D)[:, None] & (l < L)[None, :], other=0.0)
        cols = _split8(t.to(tl.float32), BD)
    return cols


@triton.jit
def _store_cols(Ptr, row, d, q, D, L, sl, cols, lo, hi,
                CHANNEL_LAST: tl.constexpr, V: tl.constexpr, BD: tl.constexpr):
    """Store the V columns at positions q..q+V-1 that lie in [lo, hi) and [0, L). Channel-first
    blocks are all in or all out of [lo, hi) (aligned to V), so the mask stays uniform per vector."""
    if CHANNEL_LAST:
        for i in tl.static_range(V):
            tl.store(Ptr + row + (q + i).to(tl.int64) * sl, cols[i].to(Ptr.dtype.element_ty),
                     mask=(d < D) & (q + i >= lo) & (q + i < hi) & (q + i < L))
    else:
        l = q + tl.arange(0, V)
        ok = (q >= lo) & (q + V <= hi)
        tl.store(Ptr + row[:, None] + l.to(tl.int64)[None, :] * sl, _join8(cols, BD).to(Ptr.dtype.element_ty),
                 mask=(d < D)[:, None] & (l < L)[None, :] & ok)


@triton.jit
def _seq_cols(Seq, srow, d, p, D, L, ssl, HAS_SEQ: tl.constexpr, CHANNEL_LAST: tl.constexpr, V: tl.constexpr,
              BD: tl.constexpr):
    """seq_idx at positions p..p+V-1 (-2 past L), shaped like the x columns' broadcast partner:
    channel-first [BD] columns of one [BD, 8] vector load, each channel's thread loading the row's
    8 ids (one warp transaction; a scalar load per position would outweigh the x vector; masked
    past D like x, so the interpreter counts what the threads that run request), channel-last
    scalars. Zeros without seq_idx (unused, compiled away)."""
    cols = ()
    if HAS_SEQ:
        if CHANNEL_LAST:
            for i in tl.static_range(V):
                cols = cols + (tl.load(Seq + srow + (p + i) * ssl, mask=p + i < L, other=-2),)
        else:
            l = p + tl.arange(0, V)
            t = tl.load(Seq + srow + l[None, :] * ssl + tl.zeros([BD, 1], tl.int32),
                        mask=(l < L)[None, :] & (d < D)[:, None], other=-2)
            cols = _split8(t, BD)
    else:
        for i in tl.static_range(V):
            cols = cols + (0,)
    return cols


@triton.jit
def _tail(ext, START: tl.constexpr, N: tl.constexpr):
    """ext[START:START + N] (tuple slicing with constexpr bounds)."""
    out = ()
    for i in tl.static_range(N):
        out = out + (ext[START + i],)
    return out


@triton.jit
def _halo(X, Init, Seq, xrow, irow, srow, d, l0, D, L, sxl, sil, ssl, WIDTH: tl.constexpr, HALO: tl.constexpr,
          HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, CHANNEL_LAST: tl.constexpr, BD: tl.constexpr):
    """The HALO columns before position l0 (x, or initial_states before 0, or 0) and their seq_idx
    (shaped as _seq_cols'), loaded once per program."""
    hx = ()
    hs = ()
    for i in tl.static_range(HALO):
        pos = l0 - HALO + i
        v = tl.load(X + xrow + pos.to(tl.int64) * sxl, mask=(d < D) & (pos >= 0) & (pos < L), other=0.0)
        v = v.to(tl.float32)
        if HAS_INIT:
            iv = tl.load(Init + irow + (pos + WIDTH - 1).to(tl.int64) * sil,
                         mask=(d < D) & (pos < 0) & (pos >= 1 - WIDTH), other=0.0)
            v += iv.to(tl.float32)
        hx = hx + (v,)
        if HAS_SEQ:
            s = tl.load(Seq + srow + pos * ssl, mask=(pos >= 0) & (pos < L), other=-1)
            if not CHANNEL_LAST:
                s = s + tl.zeros([BD], tl.int32)
            hs = hs + (s,)
        else:
            hs = hs + (0,)
    return hx, hs


@triton.jit
def _tap(ext, sext, j, k, WIDTH: tl.constexpr, HALO: tl.constexpr, HAS_SEQ: tl.constexpr):
    """x at position j - (W - 1) + k of the block (ext = halo + block columns), 0 from another
    sequence."""
    v = ext[HALO + j - (WIDTH - 1) + k]
    if HAS_SEQ:
        if k < WIDTH - 1:
            v = tl.where(sext[HALO + j - (WIDTH - 1) + k] == sext[HALO + j], v, 0.0)
    return v


@triton.jit
def _conv_cols(ext, sext, wts, bias, WIDTH: tl.constexpr, HALO: tl.constexpr, V: tl.constexpr,
               HAS_SEQ: tl.constexpr):
    """z at the V block positions."""
    z = ()
    for j in tl.static_range(V):
        acc = bias
        for k in tl.static_range(WIDTH):
            acc += _tap(ext, sext, j, k, WIDTH, HALO, HAS_SEQ) * wts[k]
        z = z + (acc,)
    return z


@triton.jit
def _weights(Wt, Bias, d, D, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, BD: tl.constexpr):
    """The W weight columns and the bias column (zeros without bias), fp32."""
    wts = ()
    for k in tl.static_range(WIDTH):
        wts = wts + (tl.load(Wt + d * WIDTH + k, mask=d < D, other=0.0).to(tl.float32),)
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(Bias + d, mask=d < D, other=0.0).to(tl.float32)
    return wts, bias


# ---- kernels ------------------------------------------------------------------------------------
@triton.jit
def _causal_conv1d_fwd_kernel(
    X, Wt, Bias, Init, Seq, Y,      # pointers: x (B, D, L), weight (D, W), bias (D,), initial_states
                                    # (B, D, W - 1), seq_idx (B, L) int32, y (B, D, L)
    D, L, CHUNK,                    # sizes; CHUNK positions per program (a multiple of V)
    sxb, sxd, sxl, syb, syd, syl,   # strides
    sib, sid, sil, ssb, ssl,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, CHANNEL_LAST: tl.constexpr,
    V: tl.constexpr,                # positions per block
    HALO: tl.constexpr,             # max(W - 1, 1) carried columns
    BLOCK_D: tl.constexpr,
):
    c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d64 = d.to(tl.int64)
    xrow, irow, srow, yrow = b * sxb + d64 * sxd, b * sib + d64 * sid, b * ssb, b * syb + d64 * syd
    l0 = c * CHUNK
    wts, bias = _weights(Wt, Bias, d, D, WIDTH, HAS_BIAS, BLOCK_D)
    hx, hs = _halo(X, Init, Seq, xrow, irow, srow, d, l0, D, L, sxl, sil, ssl, WIDTH, HALO,
                   HAS_INIT, HAS_SEQ, CHANNEL_LAST, BLOCK_D)
    for blk in range(0, CHUNK, V):
        p = l0 + blk
        ext = hx + _load_cols(X, xrow, d, p, D, L, sxl, CHANNEL_LAST, V, BLOCK_D)
        sext = hs + _seq_cols(Seq, srow, d, p, D, L, ssl, HAS_SEQ, CHANNEL_LAST, V, BLOCK_D)
        z = _conv_cols(ext, sext, wts, bias, WIDTH, HALO, V, HAS_SEQ)
        if SILU:
            zs = ()
            for j in tl.static_range(V):
                zs = zs + (z[j] * tl.sigmoid(z[j]),)
            z = zs
        _store_cols(Y, yrow, d, p, D, L, syl, z, l0, l0 + CHUNK, CHANNEL_LAST, V, BLOCK_D)
        hx = _tail(ext, V, HALO)
        hs = _tail(sext, V, HALO)


@triton.jit
def _causal_conv1d_bwd_kernel(
    DY, X, Wt, Bias, Init, Seq,     # pointers (as the forward's)
    DX, DWP, DBP, DINIT,            # DWP (B * chunks, D, W), DBP (B * chunks, D): fp32 partials; DINIT (B, D, W - 1)
    D, L, CHUNK,
    sdyb, sdyd, sdyl, sxb, sxd, sxl, sdxb, sdxd, sdxl,
    sib, sid, sil, ssb, ssl, sdib, sdid, sdil,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, CHANNEL_LAST: tl.constexpr,
    V: tl.constexpr, HALO: tl.constexpr,
    LAG: tl.constexpr,              # dx is written LAG >= W - 1 positions behind the loaded block
    BLOCK_D: tl.constexpr,
):
    c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    d64 = d.to(tl.int64)
    xrow, irow, srow = b * sxb + d64 * sxd, b * sib + d64 * sid, b * ssb
    dyrow, dxrow, dirow = b * sdyb + d64 * sdyd, b * sdxb + d64 * sdxd, b * sdib + d64 * sdid
    l0 = c * CHUNK
    wts, bias = _weights(Wt, Bias, d, D, WIDTH, HAS_BIAS, BLOCK_D)
    hx, hs = _halo(X, Init, Seq, xrow, irow, srow, d, l0, D, L, sxl, sil, ssl, WIDTH, HALO,
                   HAS_INIT, HAS_SEQ, CHANNEL_LAST, BLOCK_D)
    zero = tl.zeros([BLOCK_D], tl.float32)
    hdz = ()        # dz at the LAG positions before the block (0 before the chunk: their dx is not kept)
    hds = ()        # and their seq_idx
    for i in tl.static_range(LAG):
        hdz = hdz + (zero,)
        hds = hds + (hs[0],)
    accw = ()
    for k in tl.static_range(WIDTH):
        accw = accw + (zero,)
    accb = zero
    for blk in range(0, CHUNK + LAG, V):
        p = l0 + blk
        ext = hx + _load_cols(X, xrow, d, p, D, L, sxl, CHANNEL_LAST, V, BLOCK_D)
        sc = _seq_cols(Seq, srow, d, p, D, L, ssl, HAS_SEQ, CHANNEL_LAST, V, BLOCK_D)
        sext = hs + sc
        dz = _load_cols(DY, dyrow, d, p, D, L, sdyl, CHANNEL_LAST, V, BLOCK_D)
        if SILU:
            z = _conv_cols(ext, sext, wts, bias, WIDTH, HALO, V, HAS_SEQ)
            dzs = ()
            for j in tl.static_range(V):
                s = tl.sigmoid(z[j])
                dzs = dzs + (dz[j] * s * (1.0 + z[j] * (1.0 - s)),)
            dz = dzs
        inside = blk < CHUNK        # the walk past the chunk only completes dx
        for j in tl.static_range(V):
            dzj = tl.where(inside, dz[j], 0.0)
            accb += dzj
            acc2 = ()
            for k in tl.static_range(WIDTH):
                acc2 = acc2 + (accw[k] + dzj * _tap(ext, sext, j, k, WIDTH, HALO, HAS_SEQ),)
            accw = acc2
        dext = hdz + dz
        sdext = hds + sc
        dx = ()
        for i in tl.static_range(V):   # position q + i, q = p - LAG
            acc = dext[i] * wts[WIDTH - 1]
            for j in tl.static_range(1, WIDTH):
                g = dext[i + j]
                if HAS_SEQ:   # dz of another sequence does not reach position q + i
                    g = tl.where(sdext[i + j] == sdext[i], g, 0.0)
                acc += g * wts[WIDTH - 1 - j]
            dx = dx + (acc,)
        q = p - LAG
        _store_cols(DX, dxrow, d, q, D, L, sdxl, dx, l0, l0 + CHUNK, CHANNEL_LAST, V, BLOCK_D)
        if HAS_INIT:
            if (c == 0) & (blk < LAG):   # dinitial_states: dx at the positions -(W-1)..-1
                for i in tl.static_range(V):
                    pos = q + i
                    tl.store(DINIT + dirow + (pos + WIDTH - 1).to(tl.int64) * sdil, dx[i].to(DINIT.dtype.element_ty),
                             mask=(d < D) & (pos < 0) & (pos >= 1 - WIDTH))
        hx = _tail(ext, V, HALO)
        hs = _tail(sext, V, HALO)
        hdz = _tail(dext, V, LAG)
        hds = _tail(sdext, V, LAG)
    part = b * tl.num_programs(0) + c
    for k in tl.static_range(WIDTH):
        tl.store(DWP + (part * D + d64) * WIDTH + k, accw[k], mask=d < D)
    tl.store(DBP + part * D + d64, accb, mask=d < D)


# ---- launchers ----------------------------------------------------------------------------------
def _channel_last(x):
    return x.stride(1) == 1 and x.stride(2) != 1


def _plan(x, width, backward=False):
    """(V, BLOCK_D, num_warps, CHUNK, HALO, LAG). Channel-first: 8 positions x 1 channel per thread,
    4 warps. Channel-last: a 128-bit vector of channels per thread (8 bf16 / 4 fp32), 2 warps, and
    V = 4 positions per block up to W = 5 (8 above, V >= W - 1 is not needed there but keeps few
    blocks); the backward holds V + W - 1 columns of x and of dz and W + 1 sums per channel, so it
    takes V = 2 (bf16, W = 4: V = 4 needs 243 registers on sm_90 and 251 on sm_80, V = 2 210 and
    220, no spills; the per-channel sums and carried columns, not V, dominate). CHUNK: 128 positions channel-first, 32 channel-last, or L rounded up to V when
    shorter (grid: B x D tiles x L / CHUNK programs, about 1500 at Mamba shapes)."""
    L = x.shape[2]
    halo = max(width - 1, 1)
    if _channel_last(x):
        vec = 16 // x.element_size()
        v, bd, warps = (2 if backward else 4 if width <= 5 else 8), 32 * 2 * vec, 2
        lag = halo
    else:
        v, bd, warps = 8, 128, 4
        lag = v
    chunk = min(128 if not _channel_last(x) else 32, triton.cdiv(L, v) * v)
    return v, bd, warps, chunk, halo, lag


def _grid(B, D, L, bd, chunk):
    """(L chunks, B, D tiles): the L chunks, the only count that can pass 65535, on grid axis 0."""
    return (triton.cdiv(L, chunk), B, triton.cdiv(D, bd))


def _extras(x, seq_idx, initial_states):
    """Pointer and strides of the optional inputs (x and zeros stand in for absent ones)."""
    init = initial_states if initial_states is not None else x
    init_strides = initial_states.stride() if initial_states is not None else (0, 0, 0)
    seq = seq_idx if seq_idx is not None else x
    seq_strides = seq_idx.stride() if seq_idx is not None else (0, 0)
    return init, seq, (*init_strides, *seq_strides)


def causal_conv1d_fwd(x, weight, bias, silu, seq_idx=None, initial_states=None):
    """x (B, D, L) any strides, weight (D, W) contiguous, bias (D,) or None, seq_idx (B, L) int32 or
    None, initial_states (B, D, W - 1) or None -> y like x."""
    B, D, L = x.shape
    width = weight.shape[1]
    y = new_empty_like(x)
    v, bd, warps, chunk, halo, _ = _plan(x, width)
    init, seq, strides = _extras(x, seq_idx, initial_states)
    _causal_conv1d_fwd_kernel[_grid(B, D, L, bd, chunk)](
        x, weight, bias if bias is not None else weight, init, seq, y, D, L, chunk, *x.stride(), *y.stride(),
        *strides, WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu),
        HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None, CHANNEL_LAST=_channel_last(x),
        V=v, HALO=halo, BLOCK_D=bd, num_warps=warps)
    return y


def causal_conv1d_bwd(dy, x, weight, bias, silu, seq_idx=None, initial_states=None):
    """-> (dx like x, dweight (D, W) in weight's dtype, dbias (D,) in bias's dtype or None,
    dinitial_states (B, D, W - 1) in its dtype or None)."""
    B, D, L = x.shape
    width = weight.shape[1]
    dx = new_empty_like(x)
    v, bd, warps, chunk, halo, lag = _plan(x, width, backward=True)
    grid = _grid(B, D, L, bd, chunk)
    parts = B * grid[0]
    dwp = new_empty(parts, D, width, dtype=torch.float32, device=x.device)
    dbp = new_empty(parts, D, dtype=torch.float32, device=x.device)
    init, seq, strides = _extras(x, seq_idx, initial_states)
    dinit = new_empty_like(initial_states) if initial_states is not None else dx
    _causal_conv1d_bwd_kernel[grid](
        dy, x, weight, bias if bias is not None else weight, init, seq, dx, dwp, dbp, dinit, D, L, chunk,
        *dy.stride(), *x.stride(), *dx.stride(), *strides,
        *(dinit.stride() if initial_states is not None else (0, 0, 0)),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu),
        HAS_INIT=initial_states is not None, HAS_SEQ=seq_idx is not None, CHANNEL_LAST=_channel_last(x),
        V=v, HALO=halo, LAG=lag, BLOCK_D=bd, num_warps=warps)
    dbias = dbp.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dwp.sum(0).to(weight.dtype), dbias, dinit if initial_states is not None else None
