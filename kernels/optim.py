"""Multi-tensor optimizer steps in Triton (apex-style): one launch updates every tensor of a list.

The host packs, for each tensor list (params, grads, states), a table of data pointers, plus a
chunk table: chunk ``c`` covers elements [start, start + CHUNK) of tensor ``tensor[c]``. One
program per chunk loads its tensor's pointers from the tables (int64 -> typed pointer), so the
number of launches does not depend on how many parameters there are or on their shapes. Tensors
of one launch share dtypes (pointer types are compile-time); the optimizer groups them.

Per-tensor scalars that depend on a tensor's own step count (Adam's bias corrections) are
computed on the host in float64, as torch does, and passed as fp32 tables.
No kernel is autotuned: they update state in place, and a tuning rerun would apply the update twice.
"""
import torch
import triton
import triton.language as tl

CHUNK = 65536   # elements per program
BLOCK = 1024    # elements per inner iteration on a GPU


def _block(device) -> int:
    # The interpreter pays per operation, not per element: wide blocks, still 4 per chunk.
    return BLOCK if device.type == "cuda" else CHUNK // 4
_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _tensor_ptr(TABLE, t, DTYPE: tl.constexpr):
    return tl.load(TABLE + t).to(tl.pointer_type(DTYPE), bitcast=True)


@triton.jit
def _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE: tl.constexpr):
    """(tensor index, first element, end) of the chunk this program updates."""
    c = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + c)
    start = tl.load(CHUNK_START + c)
    return t, start, tl.minimum(start + CHUNK_SIZE, tl.load(SIZES + t))


@triton.jit
def _adam_kernel(
    P_TABLE, G_TABLE, M_TABLE, V_TABLE, VMAX_TABLE,   # int64 data pointers, one per tensor
    W_TABLE,                                          # fp32 master weights (HAS_MASTER)
    SIZES, CHUNK_TENSOR, CHUNK_START,                 # per tensor / per chunk
    STEP_SIZE, BC2_SQRT,                              # per tensor: lr / (1 - b1^t), sqrt(1 - b2^t)
    beta1, beta2, eps, weight_decay, decay_factor,    # decay_factor = 1 - lr * wd (AdamW)
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
    DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
    HAS_MASTER: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, end = _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, P_DTYPE)
    g_ptr = _tensor_ptr(G_TABLE, t, G_DTYPE)
    m_ptr = _tensor_ptr(M_TABLE, t, S_DTYPE)
    v_ptr = _tensor_ptr(V_TABLE, t, S_DTYPE)
    w_ptr = _tensor_ptr(W_TABLE, t, tl.float32)
    step_size = tl.load(STEP_SIZE + t)
    bc2_sqrt = tl.load(BC2_SQRT + t)
    for off in range(0, CHUNK_SIZE, BLOCK_SIZE):
        idx = start + off + tl.arange(0, BLOCK_SIZE)
        mask = idx < end
        if HAS_MASTER:  # the update runs on the fp32 master; p receives its rounding
            p = tl.load(w_ptr + idx, mask=mask, other=0.0)
        else:
            p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            g = -g
        if DECOUPLED:
            p = p * decay_factor
        elif HAS_WD:
            g = g + weight_decay * p
        m = m + (1.0 - beta1) * (g - m)          # exp_avg.lerp_(grad, 1 - beta1)
        v = v * beta2 + (1.0 - beta2) * g * g
        if AMSGRAD:
            vmax_ptr = _tensor_ptr(VMAX_TABLE, t, S_DTYPE)
            vmax = tl.maximum(tl.load(vmax_ptr + idx, mask=mask, other=0.0).to(tl.float32), v)
            tl.store(vmax_ptr + idx, vmax.to(S_DTYPE), mask=mask)
            denom = tl.sqrt(vmax) / bc2_sqrt + eps
        else:
            denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p - step_size * (m / denom)
        if HAS_MASTER:
            tl.store(w_ptr + idx, p, mask=mask)
        tl.store(p_ptr + idx, p.to(P_DTYPE), mask=mask)
        tl.store(m_ptr + idx, m.to(S_DTYPE), mask=mask)
        tl.store(v_ptr + idx, v.to(S_DTYPE), mask=mask)


@triton.jit
def _sgd_kernel(
    P_TABLE, G_TABLE, B_TABLE,                        # params, grads, momentum buffers
    SIZES, CHUNK_TENSOR, CHUNK_START,
    lr, momentum, dampening, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, end = _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, P_DTYPE)
    g_ptr = _tensor_ptr(G_TABLE, t, G_DTYPE)
    for off in range(0, CHUNK_SIZE, BLOCK_SIZE):
        idx = start + off + tl.arange(0, BLOCK_SIZE)
        mask = idx < end
        p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        d = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            d = -d
        if HAS_WD:
            d = d + weight_decay * p
        if HAS_MOMENTUM:
            b_ptr = _tensor_ptr(B_TABLE, t, P_DTYPE)
            if FIRST:  # torch: the buffer starts as a copy of the first gradient (no dampening)
                buf = d
            else:
                buf = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32) * momentum + (1.0 - dampening) * d
            tl.store(b_ptr + idx, buf.to(P_DTYPE), mask=mask)
            if NESTEROV:
                d = d + momentum * buf
            else:
                d = buf
        tl.store(p_ptr + idx, (p - lr * d).to(P_DTYPE), mask=mask)


@triton.jit
def _adagrad_kernel(
    P_TABLE, G_TABLE, SUM_TABLE, SIZES, CHUNK_TENSOR, CHUNK_START,
    CLR,                                              # per tensor: lr / (1 + (step - 1) * lr_decay)
    eps, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr,
    CHUNK_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, end = _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, P_DTYPE)
    g_ptr = _tensor_ptr(G_TABLE, t, G_DTYPE)
    s_ptr = _tensor_ptr(SUM_TABLE, t, P_DTYPE)
    clr = tl.load(CLR + t)
    for off in range(0, CHUNK_SIZE, BLOCK_SIZE):
        idx = start + off + tl.arange(0, BLOCK_SIZE)
        mask = idx < end
        p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            g = -g
        if HAS_WD:
            g = g + weight_decay * p
        acc = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32) + g * g
        tl.store(s_ptr + idx, acc.to(P_DTYPE), mask=mask)
        tl.store(p_ptr + idx, (p - clr * (g / (tl.sqrt(acc) + eps))).to(P_DTYPE), mask=mask)


@triton.jit
def _rmsprop_kernel(
    P_TABLE, G_TABLE, SQ_TABLE, GAVG_TABLE, BUF_TABLE, SIZES, CHUNK_TENSOR, CHUNK_START,
    lr, alpha, eps, weight_decay, momentum,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, CENTERED: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, end = _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, P_DTYPE)
    g_ptr = _tensor_ptr(G_TABLE, t, G_DTYPE)
    sq_ptr = _tensor_ptr(SQ_TABLE, t, P_DTYPE)
    for off in range(0, CHUNK_SIZE, BLOCK_SIZE):
        idx = start + off + tl.arange(0, BLOCK_SIZE)
        mask = idx < end
        p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if MAXIMIZE:
            g = -g
        if HAS_WD:
            g = g + weight_decay * p
        sq = tl.load(sq_ptr + idx, mask=mask, other=0.0).to(tl.float32) * alpha + (1.0 - alpha) * g * g
        tl.store(sq_ptr + idx, sq.to(P_DTYPE), mask=mask)
        if CENTERED:
            ga_ptr = _tensor_ptr(GAVG_TABLE, t, P_DTYPE)
            ga = tl.load(ga_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            ga = ga + (1.0 - alpha) * (g - ga)          # grad_avg.lerp_(grad, 1 - alpha)
            tl.store(ga_ptr + idx, ga.to(P_DTYPE), mask=mask)
            avg = tl.sqrt(sq - ga * ga) + eps
        else:
            avg = tl.sqrt(sq) + eps
        if HAS_MOMENTUM:
            b_ptr = _tensor_ptr(BUF_TABLE, t, P_DTYPE)
            buf = tl.load(b_ptr + idx, mask=mask, other=0.0).to(tl.float32) * momentum + g / avg
            tl.store(b_ptr + idx, buf.to(P_DTYPE), mask=mask)
            p = p - lr * buf
        else:
            p = p - lr * (g / avg)
        tl.store(p_ptr + idx, p.to(P_DTYPE), mask=mask)


@triton.jit
def _adabound_kernel(
    P_TABLE, G_TABLE, M_TABLE, V_TABLE, VMAX_TABLE, SIZES, CHUNK_TENSOR, CHUNK_START,
    STEP_SIZE, LOWER, UPPER,                          # per tensor (they depend on its step)
    beta1, beta2, eps, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, AMSBOUND: tl.constexpr,
    CHUNK_SIZE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, end = _this_chunk(SIZES, CHUNK_TENSOR, CHUNK_START, CHUNK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, P_DTYPE)
    g_ptr = _tensor_ptr(G_TABLE, t, G_DTYPE)
    m_ptr = _tensor_ptr(M_TABLE, t, P_DTYPE)
    v_ptr = _tensor_ptr(V_TABLE, t, P_DTYPE)
    step_size = tl.load(STEP_SIZE + t)
    lower = tl.load(LOWER + t)
    upper = tl.load(UPPER + t)
    for off in range(0, CHUNK_SIZE, BLOCK_SIZE):
        idx = start + off + tl.arange(0, BLOCK_SIZE)
        mask = idx < end
        p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if HAS_WD:
            g = g + weight_decay * p
        m = tl.load(m_ptr + idx, mask=mask, other=0.0).to(tl.float32) * beta1 + (1.0 - beta1) * g
        v = tl.load(v_ptr + idx, mask=mask, other=0.0).to(tl.float32) * beta2 + (1.0 - beta2) * g * g
        tl.store(m_ptr + idx, m.to(P_DTYPE), mask=mask)
        tl.store(v_ptr + idx, v.to(P_DTYPE), mask=mask)
        if AMSBOUND:
            vmax_ptr = _tensor_ptr(VMAX_TABLE, t, P_DTYPE)
            v = tl.maximum(tl.load(vmax_ptr + idx, mask=mask, other=0.0).to(tl.float32), v)
            tl.store(vmax_ptr + idx, v.to(P_DTYPE), mask=mask)
        # Adam's step size per element, clipped into [lower, upper] (the bounds close in on final_lr).
        lr_t = tl.minimum(tl.maximum(step_size / (tl.sqrt(v) + eps), lower), upper)
        tl.store(p_ptr + idx, (p - lr_t * m).to(P_DTYPE), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
def _pointer_table(tensors, device):
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device, non_blocking=True)


def chunk_table(sizes, device):
    """(sizes, chunk -> tensor index, chunk -> first element) for tensors of ``sizes`` elements."""
    tensor_of, start_of = [], []
    for i, n in enumerate(sizes):
        for start in range(0, n, CHUNK):
            tensor_of.append(i)
            start_of.append(start)
    as_dev = lambda v, dt: torch.tensor(v, dtype=dt).to(device, non_blocking=True)  # noqa: E731
    return as_dev(list(sizes), torch.int64), as_dev(tensor_of, torch.int32), as_dev(start_of, torch.int64)


def _check_lists(**lists):
    ref = next(iter(lists.values()))
    for name, ts in lists.items():
        if ts is None:
            continue
        if len(ts) != len(ref):
            raise ValueError(f"{name} has {len(ts)} tensors; expected {len(ref)}")
        for a, b in zip(ts, ref):
            if a.numel() != b.numel() or not a.is_contiguous():
                raise ValueError(f"{name}: every tensor must be contiguous and match its parameter's size")


def multi_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, step_sizes,
                      bc2_sqrts, beta1, beta2, eps, weight_decay, lr, decoupled, amsgrad, maximize):
    """One Adam/AdamW step over same-dtype lists, in place. step_sizes / bc2_sqrts: per tensor
    (lr / (1 - beta1^step), sqrt(1 - beta2^step)), computed by the caller from each step count.
    master_params: fp32 copies the update reads and writes, the params receive their rounding
    (the states are then fp32 too); None without master weights."""
    if not params:
        return
    has_master = master_params is not None
    _check_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                 max_exp_avg_sqs=max_exp_avg_sqs if amsgrad else None, master_params=master_params)
    if has_master and {master_params[0].dtype, exp_avgs[0].dtype} != {torch.float32}:
        raise ValueError("master_params and the states must be float32 with master weights")
    dev = params[0].device
    sizes, chunk_t, chunk_s = chunk_table([p.numel() for p in params], dev)
    tables = [_pointer_table(ts, dev) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    vmax = _pointer_table(max_exp_avg_sqs, dev) if amsgrad else tables[3]
    masters = _pointer_table(master_params, dev) if has_master else tables[0]
    f32 = lambda v: torch.tensor(v, dtype=torch.float32).to(dev, non_blocking=True)  # noqa: E731
    _adam_kernel[(chunk_t.numel(),)](
        *tables, vmax, masters, sizes, chunk_t, chunk_s, f32(step_sizes), f32(bc2_sqrts),
        beta1, beta2, eps, weight_decay, 1.0 - lr * weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], S_DTYPE=_TL[exp_avgs[0].dtype],
        DECOUPLED=decoupled, HAS_WD=weight_decay != 0, AMSGRAD=amsgrad, MAXIMIZE=maximize,
        HAS_MASTER=has_master, CHUNK_SIZE=CHUNK, BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_sgd(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
                     maximize, first):
    """One SGD step over same-dtype lists, in place. ``first``: the buffers are uninitialized and
    are set to the (decayed) gradient, as torch does on a buffer's first step."""
    if not params:
        return
    has_momentum = momentum != 0
    _check_lists(params=params, grads=grads, momentum_buffers=momentum_buffers if has_momentum else None)
    dev = params[0].device
    sizes, chunk_t, chunk_s = chunk_table([p.numel() for p in params], dev)
    p_table, g_table = _pointer_table(params, dev), _pointer_table(grads, dev)
    b_table = _pointer_table(momentum_buffers, dev) if has_momentum else p_table
    _sgd_kernel[(chunk_t.numel(),)](
        p_table, g_table, b_table, sizes, chunk_t, chunk_s, lr, momentum, dampening, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        HAS_MOMENTUM=has_momentum, FIRST=first, NESTEROV=nesterov, MAXIMIZE=maximize,
        CHUNK_SIZE=CHUNK, BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_adagrad(params, grads, state_sums, clrs, eps, weight_decay, maximize):
    """One Adagrad step over same-dtype lists, in place; clrs per tensor (its decayed lr)."""
    if not params:
        return
    _check_lists(params=params, grads=grads, state_sums=state_sums)
    dev = params[0].device
    sizes, chunk_t, chunk_s = chunk_table([p.numel() for p in params], dev)
    f32 = torch.tensor(clrs, dtype=torch.float32).to(dev, non_blocking=True)
    _adagrad_kernel[(chunk_t.numel(),)](
        _pointer_table(params, dev), _pointer_table(grads, dev), _pointer_table(state_sums, dev),
        sizes, chunk_t, chunk_s, f32, eps, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        MAXIMIZE=maximize, CHUNK_SIZE=CHUNK, BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, lr, alpha, eps,
                         weight_decay, momentum, centered, maximize):
    """One RMSprop step over same-dtype lists, in place (grad_avgs when centered, buffers when
    momentum > 0; else None)."""
    if not params:
        return
    _check_lists(params=params, grads=grads, square_avgs=square_avgs,
                 grad_avgs=grad_avgs if centered else None,
                 momentum_buffers=momentum_buffers if momentum > 0 else None)
    dev = params[0].device
    sizes, chunk_t, chunk_s = chunk_table([p.numel() for p in params], dev)
    p_table, sq_table = _pointer_table(params, dev), _pointer_table(square_avgs, dev)
    _rmsprop_kernel[(chunk_t.numel(),)](
        p_table, _pointer_table(grads, dev), sq_table,
        _pointer_table(grad_avgs, dev) if centered else sq_table,
        _pointer_table(momentum_buffers, dev) if momentum > 0 else sq_table,
        sizes, chunk_t, chunk_s, lr, alpha, eps, weight_decay, momentum,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        CENTERED=centered, HAS_MOMENTUM=momentum > 0, MAXIMIZE=maximize, CHUNK_SIZE=CHUNK,
        BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_adabound(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step_sizes, lowers,
                          uppers, beta1, beta2, eps, weight_decay, amsbound):
    """One AdaBound step over same-dtype lists, in place; step sizes and bounds per tensor."""
    if not params:
        return
    _check_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                 max_exp_avg_sqs=max_exp_avg_sqs if amsbound else None)
    dev = params[0].device
    sizes, chunk_t, chunk_s = chunk_table([p.numel() for p in params], dev)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32).to(dev, non_blocking=True)  # noqa: E731
    v_table = _pointer_table(exp_avg_sqs, dev)
    _adabound_kernel[(chunk_t.numel(),)](
        _pointer_table(params, dev), _pointer_table(grads, dev), _pointer_table(exp_avgs, dev), v_table,
        _pointer_table(max_exp_avg_sqs, dev) if amsbound else v_table, sizes, chunk_t, chunk_s,
        f32(step_sizes), f32(lowers), f32(uppers), beta1, beta2, eps, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        AMSBOUND=amsbound, CHUNK_SIZE=CHUNK, BLOCK_SIZE=_block(dev), num_warps=4)
