"""Multi-tensor optimizer steps in Triton (apex-style): one launch updates every tensor of a list.

The host packs, for each tensor list (params, grads, states), a table of data pointers, plus a
chunk table: chunk ``c`` covers elements [start[c], end[c]) of tensor ``tensor[c]``. One program
per chunk loads its tensor's pointers from the tables (int64 -> typed pointer), so the number of
launches does not depend on how many parameters there are or on their shapes. Tensors of one
launch share dtypes (pointer types are compile-time); the optimizer groups them.

All tables of a step (pointers, chunks, per-tensor scalars) travel in one host buffer, pinned on a
GPU, with one asynchronous copy. A program loops over its chunk's own full blocks without a mask,
then over the tail with one; when the host has checked that every pointer of the launch is
16-byte aligned (``ALIGNED``), the pointers carry that hint and the full blocks use 128-bit
accesses. A misaligned tensor (a view at an odd offset) sends the launch down the element-wise
path: slower, never a misaligned access.

Per-tensor scalars that depend on a tensor's own step count (Adam's bias corrections) are
computed on the host in float64, as torch does, and passed as fp32 tables.
No kernel is autotuned: they update state in place, and a tuning rerun would apply the update twice.
"""
import torch
import triton
import triton.language as tl

CHUNK = 65536        # elements per program at most (the host picks smaller chunks on a GPU)
MIN_CHUNK = 4096     # ... and at least (a tensor smaller than a chunk is one chunk of its own size)
BLOCK = 1024         # elements per inner iteration on a GPU (4 warps: 8 per thread)
PROGRAMS_PER_SM = 8  # the chunk size aims at this many programs per SM, all in one wave
ALIGN = 16           # bytes of one 128-bit access


def _block(device) -> int:
    # The interpreter pays per operation, not per element: wide blocks, still 4 per chunk.
    return BLOCK if device.type == "cuda" else CHUNK // 4


_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _tensor_ptr(TABLE, t, start, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor t's data pointer from TABLE, advanced to element ``start`` of its chunk. ALIGNED:
    the host checked every pointer of the launch is 16-byte aligned (chunk starts are multiples
    of 16 elements), which lets the compiler use 128-bit accesses; a loaded pointer is otherwise
    assumed to be only element-aligned."""
    ptr = tl.load(TABLE + t).to(tl.pointer_type(DTYPE), bitcast=True) + start
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE: tl.constexpr):
    """(tensor index, first element, elements, full blocks) of the chunk this program updates."""
    c = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + c)
    start = tl.load(CHUNK_START + c)
    n = (tl.load(CHUNK_END + c) - start).to(tl.int32)
    return t, start, n, n // BLOCK_SIZE


@triton.jit
def _ld(ptr, mask):
    """fp32 values at ptr; ``mask`` None on full blocks (no predicate: vector accesses)."""
    if mask is None:
        return tl.load(ptr).to(tl.float32)
    else:
        return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _st(ptr, value, mask):
    if mask is None:
        tl.store(ptr, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


# Each optimizer: a block update ``_x_block(pointers, offs, mask, ...)`` and a kernel that runs it
# unmasked over the chunk's full blocks, then masked over its tail (if any). The loop trip count is
# the chunk's own size, so a 768-element bias costs one masked block, not a full chunk's worth.
@triton.jit
def _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs, mask, step_size, bc2_sqrt,
                beta1, beta2, eps, weight_decay, decay_factor,
                DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                HAS_MASTER: tl.constexpr):
    if HAS_MASTER:  # the update runs on the fp32 master; p receives its rounding
        p = _ld(w_ptr + offs, mask)
    else:
        p = _ld(p_ptr + offs, mask)
    g = _ld(g_ptr + offs, mask)
    m = _ld(m_ptr + offs, mask)
    v = _ld(v_ptr + offs, mask)
    if MAXIMIZE:
        g = -g
    if DECOUPLED:
        p = p * decay_factor
    elif HAS_WD:
        g = g + weight_decay * p
    m = m + (1.0 - beta1) * (g - m)          # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1.0 - beta2) * g * g
    if AMSGRAD:
        vmax = tl.maximum(_ld(vmax_ptr + offs, mask), v)
        _st(vmax_ptr + offs, vmax, mask)
        denom = tl.sqrt(vmax) / bc2_sqrt + eps
    else:
        denom = tl.sqrt(v) / bc2_sqrt + eps
    p = p - step_size * (m / denom)
    if HAS_MASTER:
        _st(w_ptr + offs, p, mask)
    _st(p_ptr + offs, p, mask)
    _st(m_ptr + offs, m, mask)
    _st(v_ptr + offs, v, mask)


@triton.jit
def _adam_kernel(
    P_TABLE, G_TABLE, M_TABLE, V_TABLE, VMAX_TABLE,   # int64 data pointers, one per tensor
    W_TABLE,                                          # fp32 master weights (HAS_MASTER)
    CHUNK_TENSOR, CHUNK_START, CHUNK_END,             # per chunk: tensor index, element range
    STEP_SIZE, BC2_SQRT,                              # per tensor: lr / (1 - b1^t), sqrt(1 - b2^t)
    beta1, beta2, eps, weight_decay, decay_factor,    # decay_factor = 1 - lr * wd (AdamW)
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
    DECOUPLED: tl.constexpr, HAS_WD: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
    HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, n, full = _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, start, P_DTYPE, ALIGNED)
    g_ptr = _tensor_ptr(G_TABLE, t, start, G_DTYPE, ALIGNED)
    m_ptr = _tensor_ptr(M_TABLE, t, start, S_DTYPE, ALIGNED)
    v_ptr = _tensor_ptr(V_TABLE, t, start, S_DTYPE, ALIGNED)
    vmax_ptr = _tensor_ptr(VMAX_TABLE, t, start, S_DTYPE, ALIGNED)
    w_ptr = _tensor_ptr(W_TABLE, t, start, tl.float32, ALIGNED)
    step_size = tl.load(STEP_SIZE + t)
    bc2_sqrt = tl.load(BC2_SQRT + t)
    for b in range(0, full):
        offs = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs, None, step_size, bc2_sqrt,
                    beta1, beta2, eps, weight_decay, decay_factor, DECOUPLED, HAS_WD, AMSGRAD, MAXIMIZE, HAS_MASTER)
    if full * BLOCK_SIZE < n:
        offs = full * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs, offs < n, step_size, bc2_sqrt,
                    beta1, beta2, eps, weight_decay, decay_factor, DECOUPLED, HAS_WD, AMSGRAD, MAXIMIZE, HAS_MASTER)


@triton.jit
def _sgd_block(p_ptr, g_ptr, b_ptr, offs, mask, lr, momentum, dampening, weight_decay,
               HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr,
               MAXIMIZE: tl.constexpr):
    p = _ld(p_ptr + offs, mask)
    d = _ld(g_ptr + offs, mask)
    if MAXIMIZE:
        d = -d
    if HAS_WD:
        d = d + weight_decay * p
    if HAS_MOMENTUM:
        if FIRST:  # torch: the buffer starts as a copy of the first gradient (no dampening)
            buf = d
        else:
            buf = _ld(b_ptr + offs, mask) * momentum + (1.0 - dampening) * d
        _st(b_ptr + offs, buf, mask)
        if NESTEROV:
            d = d + momentum * buf
        else:
            d = buf
    _st(p_ptr + offs, p - lr * d, mask)


@triton.jit
def _sgd_kernel(
    P_TABLE, G_TABLE, B_TABLE,                        # params, grads, momentum buffers
    CHUNK_TENSOR, CHUNK_START, CHUNK_END,
    lr, momentum, dampening, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, n, full = _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, start, P_DTYPE, ALIGNED)
    g_ptr = _tensor_ptr(G_TABLE, t, start, G_DTYPE, ALIGNED)
    b_ptr = _tensor_ptr(B_TABLE, t, start, P_DTYPE, ALIGNED)
    for b in range(0, full):
        offs = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _sgd_block(p_ptr, g_ptr, b_ptr, offs, None, lr, momentum, dampening, weight_decay,
                   HAS_WD, HAS_MOMENTUM, FIRST, NESTEROV, MAXIMIZE)
    if full * BLOCK_SIZE < n:
        offs = full * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _sgd_block(p_ptr, g_ptr, b_ptr, offs, offs < n, lr, momentum, dampening, weight_decay,
                   HAS_WD, HAS_MOMENTUM, FIRST, NESTEROV, MAXIMIZE)


@triton.jit
def _adagrad_block(p_ptr, g_ptr, s_ptr, offs, mask, clr, eps, weight_decay,
                   HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr):
    p = _ld(p_ptr + offs, mask)
    g = _ld(g_ptr + offs, mask)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = g + weight_decay * p
    acc = _ld(s_ptr + offs, mask) + g * g
    _st(s_ptr + offs, acc, mask)
    _st(p_ptr + offs, p - clr * (g / (tl.sqrt(acc) + eps)), mask)


@triton.jit
def _adagrad_kernel(
    P_TABLE, G_TABLE, SUM_TABLE, CHUNK_TENSOR, CHUNK_START, CHUNK_END,
    CLR,                                              # per tensor: lr / (1 + (step - 1) * lr_decay)
    eps, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, MAXIMIZE: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, n, full = _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, start, P_DTYPE, ALIGNED)
    g_ptr = _tensor_ptr(G_TABLE, t, start, G_DTYPE, ALIGNED)
    s_ptr = _tensor_ptr(SUM_TABLE, t, start, P_DTYPE, ALIGNED)
    clr = tl.load(CLR + t)
    for b in range(0, full):
        offs = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adagrad_block(p_ptr, g_ptr, s_ptr, offs, None, clr, eps, weight_decay, HAS_WD, MAXIMIZE)
    if full * BLOCK_SIZE < n:
        offs = full * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adagrad_block(p_ptr, g_ptr, s_ptr, offs, offs < n, clr, eps, weight_decay, HAS_WD, MAXIMIZE)


@triton.jit
def _rmsprop_block(p_ptr, g_ptr, sq_ptr, ga_ptr, b_ptr, offs, mask, lr, alpha, eps, weight_decay, momentum,
                   HAS_WD: tl.constexpr, CENTERED: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                   MAXIMIZE: tl.constexpr):
    p = _ld(p_ptr + offs, mask)
    g = _ld(g_ptr + offs, mask)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = g + weight_decay * p
    sq = _ld(sq_ptr + offs, mask) * alpha + (1.0 - alpha) * g * g
    _st(sq_ptr + offs, sq, mask)
    if CENTERED:
        ga = _ld(ga_ptr + offs, mask)
        ga = ga + (1.0 - alpha) * (g - ga)          # grad_avg.lerp_(grad, 1 - alpha)
        _st(ga_ptr + offs, ga, mask)
        avg = tl.sqrt(sq - ga * ga) + eps
    else:
        avg = tl.sqrt(sq) + eps
    if HAS_MOMENTUM:
        buf = _ld(b_ptr + offs, mask) * momentum + g / avg
        _st(b_ptr + offs, buf, mask)
        p = p - lr * buf
    else:
        p = p - lr * (g / avg)
    _st(p_ptr + offs, p, mask)


@triton.jit
def _rmsprop_kernel(
    P_TABLE, G_TABLE, SQ_TABLE, GAVG_TABLE, BUF_TABLE, CHUNK_TENSOR, CHUNK_START, CHUNK_END,
    lr, alpha, eps, weight_decay, momentum,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, CENTERED: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, MAXIMIZE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, n, full = _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, start, P_DTYPE, ALIGNED)
    g_ptr = _tensor_ptr(G_TABLE, t, start, G_DTYPE, ALIGNED)
    sq_ptr = _tensor_ptr(SQ_TABLE, t, start, P_DTYPE, ALIGNED)
    ga_ptr = _tensor_ptr(GAVG_TABLE, t, start, P_DTYPE, ALIGNED)
    b_ptr = _tensor_ptr(BUF_TABLE, t, start, P_DTYPE, ALIGNED)
    for b in range(0, full):
        offs = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _rmsprop_block(p_ptr, g_ptr, sq_ptr, ga_ptr, b_ptr, offs, None, lr, alpha, eps, weight_decay, momentum,
                       HAS_WD, CENTERED, HAS_MOMENTUM, MAXIMIZE)
    if full * BLOCK_SIZE < n:
        offs = full * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _rmsprop_block(p_ptr, g_ptr, sq_ptr, ga_ptr, b_ptr, offs, offs < n, lr, alpha, eps, weight_decay,
                       momentum, HAS_WD, CENTERED, HAS_MOMENTUM, MAXIMIZE)


@triton.jit
def _adabound_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, offs, mask, step_size, lower, upper,
                    beta1, beta2, eps, weight_decay, HAS_WD: tl.constexpr, AMSBOUND: tl.constexpr):
    p = _ld(p_ptr + offs, mask)
    g = _ld(g_ptr + offs, mask)
    if HAS_WD:
        g = g + weight_decay * p
    m = _ld(m_ptr + offs, mask) * beta1 + (1.0 - beta1) * g
    v = _ld(v_ptr + offs, mask) * beta2 + (1.0 - beta2) * g * g
    _st(m_ptr + offs, m, mask)
    _st(v_ptr + offs, v, mask)
    if AMSBOUND:
        v = tl.maximum(_ld(vmax_ptr + offs, mask), v)
        _st(vmax_ptr + offs, v, mask)
    # Adam's step size per element, clipped into [lower, upper] (the bounds close in on final_lr).
    lr_t = tl.minimum(tl.maximum(step_size / (tl.sqrt(v) + eps), lower), upper)
    _st(p_ptr + offs, p - lr_t * m, mask)


@triton.jit
def _adabound_kernel(
    P_TABLE, G_TABLE, M_TABLE, V_TABLE, VMAX_TABLE, CHUNK_TENSOR, CHUNK_START, CHUNK_END,
    STEP_SIZE, LOWER, UPPER,                          # per tensor (they depend on its step)
    beta1, beta2, eps, weight_decay,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_WD: tl.constexpr, AMSBOUND: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    t, start, n, full = _this_chunk(CHUNK_TENSOR, CHUNK_START, CHUNK_END, BLOCK_SIZE)
    p_ptr = _tensor_ptr(P_TABLE, t, start, P_DTYPE, ALIGNED)
    g_ptr = _tensor_ptr(G_TABLE, t, start, G_DTYPE, ALIGNED)
    m_ptr = _tensor_ptr(M_TABLE, t, start, P_DTYPE, ALIGNED)
    v_ptr = _tensor_ptr(V_TABLE, t, start, P_DTYPE, ALIGNED)
    vmax_ptr = _tensor_ptr(VMAX_TABLE, t, start, P_DTYPE, ALIGNED)
    step_size = tl.load(STEP_SIZE + t)
    lower = tl.load(LOWER + t)
    upper = tl.load(UPPER + t)
    for b in range(0, full):
        offs = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adabound_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, offs, None, step_size, lower, upper,
                        beta1, beta2, eps, weight_decay, HAS_WD, AMSBOUND)
    if full * BLOCK_SIZE < n:
        offs = full * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _adabound_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, offs, offs < n, step_size, lower, upper,
                        beta1, beta2, eps, weight_decay, HAS_WD, AMSBOUND)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
def chunk_size(total: int, device) -> int:
    """Elements per chunk for a launch over ``total`` elements: on a GPU a power of two that gives
    about PROGRAMS_PER_SM programs per SM (enough loads in flight, one wave, a short tail),
    between MIN_CHUNK and CHUNK; the interpreter takes CHUNK (fewer programs run faster)."""
    if device.type != "cuda":
        return CHUNK
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    target = max(1, total // (PROGRAMS_PER_SM * sms))
    return max(MIN_CHUNK, min(CHUNK, 1 << (target.bit_length() - 1)))


def chunk_table(sizes, chunk):
    """(chunk -> tensor index, chunk -> first element, chunk -> one past its last element) for
    tensors of ``sizes`` elements cut into chunks of at most ``chunk`` (a multiple of 16)."""
    tensor_of, start_of, end_of = [], [], []
    for i, n in enumerate(sizes):
        starts = range(0, n, chunk)
        tensor_of += [i] * len(starts)
        start_of += starts
        end_of += [min(s + chunk, n) for s in starts]
    return tensor_of, start_of, end_of


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(t)


class _Tables:
    """The launch tables of one step, packed into one host buffer (pinned on a GPU) and copied to
    the device with one asynchronous copy: per list a row of data pointers, the chunk table, and
    per-tensor fp32 scalars. ``aligned``: every pointer is 16-byte aligned (128-bit accesses are
    then safe; one misaligned tensor sends the whole launch down the element-wise path)."""

    def __init__(self, lists, scalars, device):
        sizes = [t.numel() for t in lists[0]]
        chunk = chunk_size(sum(sizes), device)
        pointers = [t.data_ptr() for ts in lists for t in ts]
        self.aligned = all(p % ALIGN == 0 for p in pointers)
        tensor_of, start_of, end_of = chunk_table(sizes, chunk)
        ints = pointers + tensor_of + start_of + end_of
        floats = [v for row in scalars for v in row]
        n_int, n_chunks, n_t = len(ints), len(tensor_of), len(sizes)
        pin = device.type == "cuda" and torch.cuda.is_available() and not _is_fake(lists[0][0])
        host = torch.empty(n_int + (len(floats) + 1) // 2, dtype=torch.int64, pin_memory=pin)
        host[:n_int] = torch.tensor(ints, dtype=torch.int64)
        if floats:
            host.view(torch.float32)[2 * n_int:2 * n_int + len(floats)] = torch.tensor(floats, dtype=torch.float32)
        dev = host.to(device, non_blocking=True) if device.type != "cpu" else host
        self.lists = [dev[i * n_t:(i + 1) * n_t] for i in range(len(lists))]
        base = len(pointers)
        self.chunks = [dev[base + k * n_chunks:base + (k + 1) * n_chunks] for k in range(3)]
        f32 = dev.view(torch.float32)[2 * n_int:]
        self.scalars = [f32[k * n_t:(k + 1) * n_t] for k in range(len(scalars))]
        self.grid = (n_chunks,)


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
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else []) \
        + ([master_params] if has_master else [])
    tab = _Tables(lists, [step_sizes, bc2_sqrts], dev)
    p, g, m, v = tab.lists[:4]
    vmax = tab.lists[4] if amsgrad else v
    masters = tab.lists[-1] if has_master else p
    _adam_kernel[tab.grid](
        p, g, m, v, vmax, masters, *tab.chunks, *tab.scalars,
        beta1, beta2, eps, weight_decay, 1.0 - lr * weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], S_DTYPE=_TL[exp_avgs[0].dtype],
        DECOUPLED=decoupled, HAS_WD=weight_decay != 0, AMSGRAD=amsgrad, MAXIMIZE=maximize,
        HAS_MASTER=has_master, ALIGNED=tab.aligned, BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_sgd(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
                     maximize, first):
    """One SGD step over same-dtype lists, in place. ``first``: the buffers are uninitialized and
    are set to the (decayed) gradient, as torch does on a buffer's first step."""
    if not params:
        return
    has_momentum = momentum != 0
    _check_lists(params=params, grads=grads, momentum_buffers=momentum_buffers if has_momentum else None)
    dev = params[0].device
    tab = _Tables([params, grads] + ([momentum_buffers] if has_momentum else []), [], dev)
    p_table, g_table = tab.lists[:2]
    _sgd_kernel[tab.grid](
        p_table, g_table, tab.lists[2] if has_momentum else p_table, *tab.chunks,
        lr, momentum, dampening, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        HAS_MOMENTUM=has_momentum, FIRST=first, NESTEROV=nesterov, MAXIMIZE=maximize,
        ALIGNED=tab.aligned, BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_adagrad(params, grads, state_sums, clrs, eps, weight_decay, maximize):
    """One Adagrad step over same-dtype lists, in place; clrs per tensor (its decayed lr)."""
    if not params:
        return
    _check_lists(params=params, grads=grads, state_sums=state_sums)
    dev = params[0].device
    tab = _Tables([params, grads, state_sums], [clrs], dev)
    _adagrad_kernel[tab.grid](
        *tab.lists, *tab.chunks, *tab.scalars, eps, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        MAXIMIZE=maximize, ALIGNED=tab.aligned, BLOCK_SIZE=_block(dev), num_warps=4)


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
    extra = ([grad_avgs] if centered else []) + ([momentum_buffers] if momentum > 0 else [])
    tab = _Tables([params, grads, square_avgs] + extra, [], dev)
    p_table, g_table, sq_table = tab.lists[:3]
    ga_table = tab.lists[3] if centered else sq_table
    b_table = tab.lists[-1] if momentum > 0 else sq_table
    _rmsprop_kernel[tab.grid](
        p_table, g_table, sq_table, ga_table, b_table, *tab.chunks, lr, alpha, eps, weight_decay, momentum,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        CENTERED=centered, HAS_MOMENTUM=momentum > 0, MAXIMIZE=maximize, ALIGNED=tab.aligned,
        BLOCK_SIZE=_block(dev), num_warps=4)


def multi_tensor_adabound(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step_sizes, lowers,
                          uppers, beta1, beta2, eps, weight_decay, amsbound):
    """One AdaBound step over same-dtype lists, in place; step sizes and bounds per tensor."""
    if not params:
        return
    _check_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                 max_exp_avg_sqs=max_exp_avg_sqs if amsbound else None)
    dev = params[0].device
    tab = _Tables([params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsbound else []),
                  [step_sizes, lowers, uppers], dev)
    p_table, g_table, m_table, v_table = tab.lists[:4]
    _adabound_kernel[tab.grid](
        p_table, g_table, m_table, v_table, tab.lists[4] if amsbound else v_table, *tab.chunks,
        *tab.scalars, beta1, beta2, eps, weight_decay,
        P_DTYPE=_TL[params[0].dtype], G_DTYPE=_TL[grads[0].dtype], HAS_WD=weight_decay != 0,
        AMSBOUND=amsbound, ALIGNED=tab.aligned, BLOCK_SIZE=_block(dev), num_warps=4)
