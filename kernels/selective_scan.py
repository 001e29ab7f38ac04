"""Triton selective scan (math: csrc/scan/selective_scan.h) and its backward.

One program per (batch, channel). The sequence is walked in chunks (FWD_CHUNK steps forward, CHUNK
backward); inside a chunk the recurrence h_t = a_t h_{t-1} + x_t is a parallel scan
(``tl.associative_scan`` over a (chunk, N) tile, combining (a1, x1), (a2, x2) -> (a1 a2, a2 x1 +
x2)), and the state carries from chunk to chunk in registers. The forward stores the state at the
end of every CHUNK steps (the layout every backend shares); the backward walks
the chunks from the last, recomputes h_{t-1} inside the chunk from the previous chunk's end (a scan
of the inputs shifted by one step) and gets the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} from a
reverse scan. dB and dC of variable (time-dependent) B/C are summed over the channels of a group
with fp32 atomics (run to run, their last bits may differ); every other reduction is a per-program
partial summed by the launcher in a fixed order. The atomics are relaxed: their sums are read only
after the kernel, so the default acquire-release order (a GPU-wide MEMBAR and an L1 invalidation
around every atomic on sm_90) buys nothing; relaxed they compile to one fire-and-forget REDG.

Initial state and packed sequences: the carry into the first chunk is h0 (the backward's adjoint
leaving step 0, a_0 g_0, is dh0); a step whose sequence id (SEQ) differs from the previous step's
gets the decay a_t = 0, which makes the associative scan a segmented one (the combine composes
affine maps; a = 0 forgets what came before) and stops the reverse scan of the adjoint there too.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

CHUNK = 64      # must equal dlkern.ops.selective_scan.CHUNK (the size of ``states``)
# Steps per forward iteration, a multiple of CHUNK. 128 was tried (sm_90, bf16, N = 16): 4 warps
# need 255 registers, 8 warps issue ~25 % more instructions per (t, n) than 64 with 4 warps (the
# associative scan's cross-warp steps grow with the tile), so the forward stays at 64.
FWD_CHUNK = CHUNK


def _num_warps(block_n):
    return 4 if block_n <= 16 else 8   # the (64, 32) tiles of the backward spill with 4 warps


def _fwd_warps(chunk, block_n):
    return _num_warps(block_n * chunk // CHUNK)   # the same elements per thread as a 64-step tile


@triton.jit
def _combine(a1, x1, a2, x2):
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _dt(DELTA, BIAS, t, mask, SOFTPLUS: tl.constexpr):
    v = tl.load(DELTA + t, mask=mask, other=0.0).to(tl.float32) + BIAS
    if SOFTPLUS:
        v = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)
    return v


@triton.jit
def _decay(dt, Arow, t, t_ok, mask2, SEQ, seq_row, HAS_SEQ: tl.constexpr):
    """exp(dt A) for steps t (T,) x states (N,); 0 at a step that starts a new sequence (t > 0 and
    its id differs from step t - 1's); 1 (the identity step) where mask2 is false."""
    a = tl.exp(dt[:, None] * Arow[None, :])
    if HAS_SEQ:
        sid = tl.load(SEQ + seq_row + t, mask=t_ok, other=0)
        prev = tl.load(SEQ + seq_row + t - 1, mask=t_ok & (t > 0), other=0)
        a = tl.where(((sid == prev) | (t == 0))[:, None], a, 0.0)
    return tl.where(mask2, a, 1.0)


@triton.jit
def _bc_tile(X, t, n, mask, VARIABLE: tl.constexpr, L):
    """B or C at times t (CHUNK,) x states n (N,): a (CHUNK, N) tile (X points at the row/group)."""
    if VARIABLE:
        return tl.load(X + n[None, :] * L + t[:, None], mask=mask, other=0.0).to(tl.float32)
    return tl.load(X + n[None, :] + 0 * t[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _selective_scan_fwd_kernel(
    # pointers: u, delta, z, out (batch, dim, L); A (dim, N) fp32; B, C (batch, G, N, L) or (dim, N);
    # D, BIAS (dim,) fp32; STATES (batch, dim, n_chunks, N) fp32; H0 (batch, dim, N) fp32; SEQ
    # (batch, L) int32
    U, DELTA, A, B, C, D, Z, BIAS, OUT, STATES, H0, SEQ,
    # sizes
    dim, L, N, dim_per_group, n_iters,
    # meta
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_N: tl.constexpr, CHUNK_T: tl.constexpr, STATE_EVERY: tl.constexpr,
):
    """CHUNK_T steps per iteration (a multiple of STATE_EVERY, the spacing of the stored states)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64)
    groups = dim // dim_per_group
    row = (b * dim + d) * L
    n_states = tl.cdiv(L, STATE_EVERY)
    g_off = (b * groups + d // dim_per_group) * N * L
    Bp = B + (g_off if VAR_B else d * N)
    Cp = C + (g_off if VAR_C else d * N)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    Arow = tl.load(A + d * N + n, mask=n_ok, other=0.0)
    bias = tl.load(BIAS + d) if HAS_BIAS else 0.0
    Dd = tl.load(D + d) if HAS_D else 0.0
    if HAS_H0:
        h = tl.load(H0 + (b * dim + d) * N + n, mask=n_ok, other=0.0)
    else:
        h = tl.zeros([BLOCK_N], tl.float32)
    for c in range(0, n_iters):
        t = c * CHUNK_T + tl.arange(0, CHUNK_T)
        t_ok = t < L
        m2 = t_ok[:, None] & n_ok[None, :]
        dt = _dt(DELTA + row, bias, t, t_ok, SOFTPLUS)
        u = tl.load(U + row + t, mask=t_ok, other=0.0).to(tl.float32)
        a = _decay(dt, Arow, t, t_ok, m2, SEQ, b * L, HAS_SEQ)                      # (T, N)
        x = (dt * u)[:, None] * _bc_tile(Bp, t, n, m2, VAR_B, L)
        a_cum, x_cum = tl.associative_scan((a, x), 0, _combine)
        hs = x_cum + a_cum * h[None, :]                                                 # h_t
        y = tl.sum(hs * _bc_tile(Cp, t, n, m2, VAR_C, L), axis=1) + Dd * u
        if HAS_Z:
            zt = tl.load(Z + row + t, mask=t_ok, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(OUT + row + t, y.to(OUT.dtype.element_ty), mask=t_ok)
        for s in tl.static_range(CHUNK_T // STATE_EVERY):   # the state after each STATE_EVERY steps
            start = c * CHUNK_T + s * STATE_EVERY
            last = s * STATE_EVERY + tl.minimum(L - start, STATE_EVERY) - 1
            h = tl.sum(tl.where(tl.arange(0, CHUNK_T)[:, None] == last, hs, 0.0), axis=0)
            state = c * (CHUNK_T // STATE_EVERY) + s
            tl.store(STATES + ((b * dim + d) * n_states + state) * N + n, h, mask=n_ok & (start < L))
        # h: the carry into the next chunk (every chunk but the last is full)


@triton.jit
def _selective_scan_bwd_kernel(
    # pointers: as the forward, plus DOUT (batch, dim, L); DLAST (batch, dim, N) fp32; outputs DU,
    # DDELTA, DZ (batch, dim, L); partials DA (batch, dim, N), DD, DBIAS (batch, dim) fp32; DB, DC:
    # variable: (batch, G, N, L) fp32 accumulated atomically, else (batch, dim, N) partials; H0, SEQ
    # as the forward; DH0 (batch, dim, N) fp32
    U, DELTA, A, B, C, D, Z, BIAS, STATES, DOUT, DLAST, H0, SEQ,
    DU, DDELTA, DZ, DA, DB, DC, DD, DBIAS, DH0,
    # sizes
    dim, L, N, dim_per_group, n_chunks,
    # meta
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr, HAS_DLAST: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_T: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64)
    groups = dim // dim_per_group
    rd = b * dim + d
    row = rd * L
    g_off = (b * groups + d // dim_per_group) * N * L
    Bp = B + (g_off if VAR_B else d * N)
    Cp = C + (g_off if VAR_C else d * N)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    i = tl.arange(0, CHUNK_T)
    Arow = tl.load(A + d * N + n, mask=n_ok, other=0.0)
    bias = tl.load(BIAS + d) if HAS_BIAS else 0.0
    Dd = tl.load(D + d) if HAS_D else 0.0
    g_next = tl.load(DLAST + rd * N + n, mask=n_ok, other=0.0) if HAS_DLAST else tl.zeros([BLOCK_N], tl.float32)
    dA = tl.zeros([BLOCK_N], tl.float32)
    dB_acc = tl.zeros([BLOCK_N], tl.float32)   # time-invariant B/C: summed over t here
    dC_acc = tl.zeros([BLOCK_N], tl.float32)
    dD = 0.0
    dbias = 0.0
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t = c * CHUNK_T + i
        t_ok = t < L
        m2 = t_ok[:, None] & n_ok[None, :]
        h0 = tl.load(STATES + (rd * n_chunks + c - 1) * N + n, mask=n_ok & (c > 0), other=0.0)
        if HAS_H0:
            h0 += tl.load(H0 + rd * N + n, mask=n_ok & (c == 0), other=0.0)
        # h_{t-1}: the scan of the inputs at t-1 (identity at the chunk's first step)
        tp = t - 1
        p_ok = t_ok & (i > 0)
        mp = p_ok[:, None] & n_ok[None, :]
        dtp = _dt(DELTA + row, bias, tp, p_ok, SOFTPLUS)
        up = tl.load(U + row + tp, mask=p_ok, other=0.0).to(tl.float32)
        ap = _decay(dtp, Arow, tp, p_ok, mp, SEQ, b * L, HAS_SEQ)
        xp = (dtp * up)[:, None] * _bc_tile(Bp, tp, n, mp, VAR_B, L)
        ap_cum, xp_cum = tl.associative_scan((ap, xp), 0, _combine)
        hprev = xp_cum + ap_cum * h0[None, :]
        # this step
        dt = _dt(DELTA + row, bias, t, t_ok, SOFTPLUS)
        u = tl.load(U + row + t, mask=t_ok, other=0.0).to(tl.float32)
        a = _decay(dt, Arow, t, t_ok, m2, SEQ, b * L, HAS_SEQ)
        Bt = _bc_tile(Bp, t, n, m2, VAR_B, L)
        Ct = _bc_tile(Cp, t, n, m2, VAR_C, L)
        ht = a * hprev + (dt * u)[:, None] * Bt
        dout = tl.load(DOUT + row + t, mask=t_ok, other=0.0).to(tl.float32)
        dy = dout
        if HAS_Z:
            zt = tl.load(Z + row + t, mask=t_ok, other=0.0).to(tl.float32)
            s = tl.sigmoid(zt)
            y = tl.sum(ht * Ct, axis=1) + Dd * u
            tl.store(DZ + row + t, (dout * y * s * (1.0 + zt * (1.0 - s))).to(DZ.dtype.element_ty), mask=t_ok)
            dy = dout * zt * s
        # g_t = C_t dy_t + a_{t+1} g_{t+1}: a reverse scan of (a_{t+1}, C_t dy_t), then the carry
        tn = t + 1
        n_in = tn < L   # at the sequence end the decay is 1 and the carry is dlast
        mn = n_in[:, None] & n_ok[None, :]
        alpha = _decay(_dt(DELTA + row, bias, tn, n_in, SOFTPLUS), Arow, tn, n_in, mn, SEQ, b * L, HAS_SEQ)
        cdy = Ct * dy[:, None]
        al_cum, g_cum = tl.associative_scan((alpha, cdy), 0, _combine, reverse=True)
        g = g_cum + al_cum * g_next[None, :]                                            # g_t
        gah = tl.where(m2, g * a * hprev, 0.0)   # padded rows carry dlast through: keep them out
        ddt = tl.sum(gah * Arow[None, :] + g * Bt * u[:, None], axis=1)
        dA += tl.sum(gah * dt[:, None], axis=0)
        gdu = g * (dt * u)[:, None]
        dyh = dy[:, None] * ht
        if VAR_B:
            tl.atomic_add(DB + g_off + n[None, :] * L + t[:, None], gdu, mask=m2, sem="relaxed")
        else:
            dB_acc += tl.sum(tl.where(m2, gdu, 0.0), axis=0)
        if VAR_C:
            tl.atomic_add(DC + g_off + n[None, :] * L + t[:, None], dyh, mask=m2, sem="relaxed")
        else:
            dC_acc += tl.sum(tl.where(m2, dyh, 0.0), axis=0)
        du = dt * tl.sum(g * Bt, axis=1) + Dd * dy
        tl.store(DU + row + t, du.to(DU.dtype.element_ty), mask=t_ok)
        if SOFTPLUS:
            raw = tl.load(DELTA + row + t, mask=t_ok, other=0.0).to(tl.float32) + bias
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(t_ok, ddt, 0.0)
        tl.store(DDELTA + row + t, ddt.to(DDELTA.dtype.element_ty), mask=t_ok)
        dD += tl.sum(tl.where(t_ok, dy * u, 0.0), axis=0)
        dbias += tl.sum(ddt, axis=0)
        g_next = tl.sum(tl.where(i[:, None] == 0, g, 0.0), axis=0)
        if HAS_H0:   # dh0 = a_0 g_0: the adjoint leaving the first step (stored once, by chunk 0)
            tl.store(DH0 + rd * N + n, tl.sum(tl.where(i[:, None] == 0, g * a, 0.0), axis=0), mask=n_ok & (c == 0))
    tl.store(DA + rd * N + n, dA, mask=n_ok)
    if not VAR_B:
        tl.store(DB + rd * N + n, dB_acc, mask=n_ok)
    if not VAR_C:
        tl.store(DC + rd * N + n, dC_acc, mask=n_ok)
    if HAS_D:
        tl.store(DD + rd, dD)
    if HAS_BIAS:
        tl.store(DBIAS + rd, dbias)


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    """Contiguous operands; B/C (batch, G, N, L) or (dim, N); A, D, bias fp32."""
    batch, dim, L = u.shape
    N = A.shape[1]
    var_b, var_c = B.dim() == 4, C.dim() == 4
    groups = B.shape[1] if var_b else (C.shape[1] if var_c else 1)
    c = lambda t: t.contiguous() if t is not None else None  # noqa: E731
    f = lambda t: t.float().contiguous() if t is not None else None  # noqa: E731
    return (c(u), c(delta), f(A), c(B), c(C), f(D), c(z), f(delta_bias),
            dict(batch=batch, dim=dim, L=L, N=N, groups=groups, var_b=var_b, var_c=var_c,
                 n_chunks=triton.cdiv(L, CHUNK), fwd_chunk=FWD_CHUNK))


def _meta(s, D, z, bias, softplus):
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None,
                SOFTPLUS=bool(softplus), VAR_B=s["var_b"], VAR_C=s["var_c"],
                BLOCK_N=triton.next_power_of_2(s["N"]))


def _packing(initial_state, seq_idx):
    """initial_state fp32 and seq_idx int32, contiguous (or None), and their constexpr flags."""
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    seq = seq_idx.to(torch.int32).contiguous() if seq_idx is not None else None
    return h0, seq, dict(HAS_H0=h0 is not None, HAS_SEQ=seq is not None)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None, seq_idx=None):
    """-> (out (batch, dim, L) in u's dtype, states (batch, dim, n_chunks, N) fp32). initial_state:
    (batch, dim, N) or None; seq_idx: (batch, L) int sequence ids or None."""
    u, delta, A, B, C, D, z, bias, s = _prepare(u, delta, A, B, C, D, z, delta_bias)
    h0, seq, flags = _packing(initial_state, seq_idx)
    out = new_empty(s["batch"], s["dim"], s["L"], dtype=u.dtype, device=u.device)
    states = new_empty(s["batch"], s["dim"], s["n_chunks"], s["N"], dtype=torch.float32, device=u.device)
    if s["batch"]:
        _selective_scan_fwd_kernel[(s["batch"], s["dim"])](
            u, delta, A, B, C, D, z, bias, out, states, h0, seq,
            s["dim"], s["L"], s["N"], s["dim"] // s["groups"], triton.cdiv(s["L"], s["fwd_chunk"]),
            **_meta(s, D, z, bias, delta_softplus), **flags, CHUNK_T=s["fwd_chunk"], STATE_EVERY=CHUNK,
            num_warps=_fwd_warps(s["fwd_chunk"], triton.next_power_of_2(s["N"])))
    return out, states


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, dlast,
                       initial_state=None, seq_idx=None):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state); du, ddelta, dz in u's dtype,
    the rest fp32 (absent ones empty)."""
    u, delta, A, B, C, D, z, bias, s = _prepare(u, delta, A, B, C, D, z, delta_bias)
    h0, seq, flags = _packing(initial_state, seq_idx)
    batch, dim, L, N = s["batch"], s["dim"], s["L"], s["N"]
    dev, f32 = u.device, torch.float32
    dout = dout.contiguous()
    dlast = dlast.float().contiguous() if dlast is not None else None
    du = new_empty(batch, dim, L, dtype=u.dtype, device=dev)
    ddelta = new_empty(batch, dim, L, dtype=u.dtype, device=dev)
    dz = new_empty(batch, dim, L, dtype=u.dtype, device=dev) if z is not None else u.new_empty(0)
    dA = new_empty(batch, dim, N, dtype=f32, device=dev)
    bc = lambda var, X: (torch.zeros(X.shape, dtype=f32, device=dev) if var  # noqa: E731
                         else new_empty(batch, dim, N, dtype=f32, device=dev))
    dB, dC = bc(s["var_b"], B), bc(s["var_c"], C)
    dD = new_empty(batch, dim, dtype=f32, device=dev) if D is not None else None
    dbias = new_empty(batch, dim, dtype=f32, device=dev) if bias is not None else None
    dh0 = new_empty(batch, dim, N, dtype=f32, device=dev) if h0 is not None else u.new_empty(0, dtype=f32)
    if batch:
        _selective_scan_bwd_kernel[(batch, dim)](
            u, delta, A, B, C, D, z, bias, states.contiguous(), dout, dlast, h0, seq,
            du, ddelta, dz, dA, dB, dC, dD, dbias, dh0,
            dim, L, N, dim // s["groups"], s["n_chunks"],
            **_meta(s, D, z, bias, delta_softplus), **flags, HAS_DLAST=dlast is not None, CHUNK_T=CHUNK,
            num_warps=_num_warps(triton.next_power_of_2(N)))
    else:
        for t in (dA, dB, dC, dD, dbias):
            if t is not None:
                t.zero_()
    empty = lambda: u.new_empty(0, dtype=f32)  # noqa: E731  (a fresh one each: outputs may not alias)
    return (du, ddelta, dA.sum(0), dB if s["var_b"] else dB.sum(0), dC if s["var_c"] else dC.sum(0),
            dD.sum(0) if dD is not None else empty(), dz, dbias.sum(0) if dbias is not None else empty(), dh0)
