"""Triton LayerNorm / RMSNorm over the last dimension, forward and backward, with an optional fused
residual add. One kernel pair serves both norms (``IS_RMS`` drops the mean and the bias).

Data layout: ``x`` is (M, N) with contiguous columns and any row stride; statistics are fp32.
Two code paths per kernel, chosen from N on the host:
* fused (N <= MAX_FUSED_N): a (BLOCK_M, BLOCK_N) tile holds whole rows in registers, so x is read
  once; several short rows share a program so small N still fills the GPU.
* looped (longer rows): one row per program, swept in BLOCK_N chunks (mean pass, variance pass,
  output pass). Extra reads of the row mostly hit L2.

Backward is deterministic: program p owns rows [p*R, (p+1)*R) and writes its dweight/dbias
partial sums to row p of an fp32 buffer (one program per resident block slot: SMs x blocks per
SM); one more kernel sums the partial rows in a fixed order and casts dweight to its dtype.
"""
import torch
import triton
import triton.language as tl

from dlkern.debug import new_empty

MAX_FUSED_N = 8192     # longest row kept in registers (larger tiles spill, see tests/test_triton_compile.py)
LOOP_BLOCK_N = 4096    # chunk width of the looped path
TILE_ELEMS = 4096      # target elements per program for short rows


@triton.jit
def _load_input(x_rows, res_rows, out_rows, cols, mask, HAS_RES: tl.constexpr):
    """x (fp32) for the columns ``cols`` of a tile of rows; with a residual, x + res is rounded to
    the storage dtype and stored first, and the rounded value is what gets normalized: the backward
    re-reads exactly that stored value."""
    x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(res_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s = x.to(out_rows.dtype.element_ty)
        tl.store(out_rows + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    return x


@triton.jit
def _row_norm_fwd_kernel(
    X, RES, W, B, Y, RES_OUT, MEAN, RSTD,          # pointers (RES/W/B/RES_OUT/MEAN may be unused)
    M, N, stride_x, stride_res, stride_y, stride_res_out,   # sizes and row strides (elements)
    eps,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FUSED: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows = rows.to(tl.int64)  # row * stride can pass 2**31
    x_rows = X + rows[:, None] * stride_x
    res_rows = RES + rows[:, None] * stride_res
    y_rows = Y + rows[:, None] * stride_y
    out_rows = RES_OUT + rows[:, None] * stride_res_out
    if FUSED:
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols < N)[None, :]
        x = _load_input(x_rows, res_rows, out_rows, cols, mask, HAS_RES)
        if IS_RMS:
            xc = x
        else:
            mean = tl.sum(x, axis=1) / N
            xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
        y = xc * rstd[:, None]
        if HAS_W:
            y *= tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            y += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Looped path (BLOCK_M == 1). With a residual, the first sweep writes s = x + res and the
        # later sweeps read s back, so they see the rounded value like the fused path.
        src_rows = x_rows
        if HAS_RES:
            src_rows = out_rows
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols < N)[None, :]
            x = _load_input(x_rows, res_rows, out_rows, cols, mask, HAS_RES)
            if IS_RMS:
                acc += x * x
            else:
                acc += x
        if IS_RMS:
            mean = tl.zeros([BLOCK_M], tl.float32)
            var = tl.sum(acc, axis=1) / N
        else:
            mean = tl.sum(acc, axis=1) / N
            # Second sweep for the variance: sum((x - mean)^2) does not cancel like E[x^2] - mean^2.
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = row_ok[:, None] & (cols < N)[None, :]
                x = tl.load(src_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
                xc = tl.where(mask, x - mean[:, None], 0.0)
                acc += xc * xc
            var = tl.sum(acc, axis=1) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols < N)[None, :]
            x = tl.load(src_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_W:
                y *= tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            if HAS_B:
                y += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            tl.store(y_rows + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if not IS_RMS:
        tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _row_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DRES, DX, DW_PART, DB_PART,   # pointers (W/MEAN/DRES/partials may be unused)
    COEF,                                               # (M, 2) fp32 scratch of the looped path
    M, N, stride_dy, stride_x, stride_dres, stride_dx,  # sizes and row strides (elements)
    rows_per_program,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_DB: tl.constexpr, HAS_DRES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FUSED: tl.constexpr,
):
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    part_row = pid.to(tl.int64) * N
    if FUSED:
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        if HAS_W:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK_N], tl.float32)
        db_acc = tl.zeros([BLOCK_N], tl.float32)
        for r0 in range(row_start, row_end, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            row_ok = rows < row_end
            rows = rows.to(tl.int64)
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
            if IS_RMS:
                xhat = x * rstd[:, None]
            else:
                mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
                xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            g = dy
            if HAS_W:
                g = dy * w[None, :]
            c1 = tl.sum(xhat * g, axis=1) / N
            if IS_RMS:
                dx = (g - xhat * c1[:, None]) * rstd[:, None]
            else:
                c2 = tl.sum(g, axis=1) / N
                dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
            if HAS_DRES:
                dx += tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_W:
                dw_acc += tl.sum(dy * xhat, axis=0)
            if HAS_DB:
                db_acc += tl.sum(dy, axis=0)
        if HAS_W:
            tl.store(DW_PART + part_row + cols, dw_acc, mask=col_ok)
        if HAS_DB:
            tl.store(DB_PART + part_row + cols, db_acc, mask=col_ok)
    else:
        # Looped path (rows longer than a register tile). Pass 1 sweeps each row once for its two
        # reduction coefficients and parks them in COEF (2 floats per row). Pass 2 runs column
        # chunk by column chunk over all of the program's rows, so dw/db for a chunk accumulate in
        # registers and reach the partial row with one store: no read-modify-write per row.
        for row in range(row_start, row_end):
            row64 = tl.cast(row, tl.int64)  # (an int under the interpreter: no .to)
            rstd = tl.load(RSTD + row64)
            mean = 0.0
            if not IS_RMS:
                mean = tl.load(MEAN + row64)
            acc1 = tl.zeros([BLOCK_N], tl.float32)
            acc2 = tl.zeros([BLOCK_N], tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(DY + row64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                if HAS_W:
                    g *= tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                acc1 += xhat * g
                acc2 += g
            tl.store(COEF + 2 * row64, tl.sum(acc1, axis=0) / N)
            if not IS_RMS:
                tl.store(COEF + 2 * row64 + 1, tl.sum(acc2, axis=0) / N)
        tl.debug_barrier()  # pass 2's threads read coefficients other threads stored
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            if HAS_W:
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            dw_acc = tl.zeros([BLOCK_N], tl.float32)
            db_acc = tl.zeros([BLOCK_N], tl.float32)
            for row in range(row_start, row_end):
                row64 = tl.cast(row, tl.int64)
                rstd = tl.load(RSTD + row64)
                c1 = tl.load(COEF + 2 * row64)
                mean = 0.0
                c2 = 0.0
                if not IS_RMS:
                    mean = tl.load(MEAN + row64)
                    c2 = tl.load(COEF + 2 * row64 + 1)
                x = tl.load(X + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                g = dy
                if HAS_W:
                    g = dy * w
                dx = (g - xhat * c1 - c2) * rstd
                if HAS_DRES:
                    dx += tl.load(DRES + row64 * stride_dres + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + row64 * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
                if HAS_W:
                    dw_acc += dy * xhat
                if HAS_DB:
                    db_acc += dy
            if HAS_W:
                tl.store(DW_PART + part_row + cols, dw_acc, mask=mask)
            if HAS_DB:
                tl.store(DB_PART + part_row + cols, db_acc, mask=mask)


@triton.jit
def _sum_partials_kernel(
    DW_PART, DB_PART, DW, DB,                # (P, N) fp32 partial rows -> (N,) sums in DW/DB's dtypes
    P, N,
    HAS_W: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dweight / dbias: the column sums of the backward's partial rows, in a fixed order
    (deterministic), cast to the output dtype in the same pass: one launch for both."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dw = tl.zeros([BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_N], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        prow = p0 + tl.arange(0, BLOCK_P)
        offs = prow.to(tl.int64)[:, None] * N + cols[None, :]
        mask = (prow < P)[:, None] & col_ok[None, :]
        if HAS_W:
            dw += tl.sum(tl.load(DW_PART + offs, mask=mask, other=0.0), axis=0)
        if HAS_DB:
            db += tl.sum(tl.load(DB_PART + offs, mask=mask, other=0.0), axis=0)
    if HAS_W:
        tl.store(DW + cols, dw.to(DW.dtype.element_ty), mask=col_ok)
    if HAS_DB:
        tl.store(DB + cols, db.to(DB.dtype.element_ty), mask=col_ok)


# ---------------------------------------------------------------------------------------------
# Launch configuration: plain data derived from N, shared by the launchers and the compile test.
# ---------------------------------------------------------------------------------------------
def launch_config(n_cols: int) -> dict:
    """Meta-parameters for a row of ``n_cols`` elements (same choice for forward and backward)."""
    if n_cols <= MAX_FUSED_N:
        block_n = triton.next_power_of_2(n_cols)
        block_m = max(1, min(16, TILE_ELEMS // block_n))
        fused = True
    else:
        block_n, block_m, fused = LOOP_BLOCK_N, 1, False
    tile = block_m * block_n
    # About 8 elements per thread keeps the backward (x, dy, xhat, dx live at once) near 128 registers.
    num_warps = min(16, max(1, tile // 256))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, FUSED=fused, num_warps=num_warps)


def all_launch_configs() -> list[dict]:
    """Every configuration ``launch_config`` can return (the compile test compiles each one)."""
    sizes = [2 ** k for k in range(0, MAX_FUSED_N.bit_length())] + [MAX_FUSED_N + 1]
    unique = {tuple(sorted(launch_config(n).items())) for n in sizes}
    return [dict(c) for c in sorted(unique)]


def programs_per_sm(cfg: dict) -> int:
    """Blocks of the backward that fit on one SM at once: about 64 registers per thread for
    tiles up to 4096 elements (2 blocks of 512 threads), 100+ for the 8192-wide tile (1 block),
    within the 2048-thread limit."""
    threads = 32 * cfg["num_warps"]
    regs = 128 if cfg["FUSED"] and cfg["BLOCK_M"] * cfg["BLOCK_N"] > 4096 else 64
    return max(1, min(2048 // threads, 65536 // (regs * threads)))


def _num_programs(device: torch.device, cfg: dict) -> int:
    """Backward programs: one resident wave (SMs x blocks per SM), so there are as few partial
    rows of dweight/dbias as keep every SM busy."""
    if device.type == "cuda":
        return programs_per_sm(cfg) * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter runs programs one after another; few keeps Python overhead low


SUM_BLOCK_P, SUM_BLOCK_N = 32, 64   # the partial-sum kernel's tile (N / 64 programs of 4 warps)


def _sum_partials(dw_part, db_part, weight_dtype, n, device):
    """(dweight in weight_dtype or None, dbias fp32 or None) from the partial rows, one launch."""
    dw = new_empty(n, dtype=weight_dtype, device=device) if dw_part is not None else None
    db = new_empty(n, dtype=torch.float32, device=device) if db_part is not None else None
    part = dw_part if dw_part is not None else db_part
    if part is None:
        return dw, db
    if n > 0:
        _sum_partials_kernel[(triton.cdiv(n, SUM_BLOCK_N),)](
            part, db_part if db_part is not None else part, dw if dw is not None else db,
            db if db is not None else dw, part.shape[0], n,
            HAS_W=dw_part is not None, HAS_DB=db_part is not None, BLOCK_P=SUM_BLOCK_P,
            BLOCK_N=SUM_BLOCK_N, num_warps=4)
    return dw, db


def _check_2d(name, t):
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name} must be 2-D with contiguous columns; got shape {tuple(t.shape)} "
                         f"strides {t.stride()}")


def _row_norm_fwd(x, weight, bias, residual, eps, is_rms):
    _check_2d("x", x)
    M, N = x.shape
    y = new_empty(M, N, dtype=x.dtype, device=x.device)
    mean = new_empty(M, dtype=torch.float32, device=x.device)
    rstd = new_empty(M, dtype=torch.float32, device=x.device)
    res_out = None
    if residual is not None:
        _check_2d("residual", residual)
        res_out = new_empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y, res_out, mean, rstd
    cfg = launch_config(N)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]),)
    _row_norm_fwd_kernel[grid](
        x, residual if residual is not None else x, weight if weight is not None else x,
        bias if bias is not None else x, y, res_out if res_out is not None else y, mean, rstd,
        M, N, x.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
        res_out.stride(0) if res_out is not None else 0, eps,
        IS_RMS=is_rms, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RES=residual is not None, **cfg)
    return y, res_out, mean, rstd


def _row_norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias, is_rms):
    _check_2d("x", x)
    if dy.stride(-1) != 1:  # e.g. the expanded, stride-0 gradient of y.sum()
        dy = dy.contiguous()
    _check_2d("dy", dy)
    if dresidual is not None:
        dresidual = dresidual if dresidual.stride(-1) == 1 else dresidual.contiguous()
        _check_2d("dresidual", dresidual)
    M, N = x.shape
    dx = new_empty(M, N, dtype=x.dtype, device=x.device)
    cfg = launch_config(N)
    if M == 0:  # no rows: the sums are empty sums
        dw = torch.zeros(N, dtype=weight.dtype, device=x.device) if weight is not None else None
        return dx, dw, torch.zeros(N, dtype=torch.float32, device=x.device) if has_bias else None
    programs = max(1, min(_num_programs(x.device, cfg), triton.cdiv(M, cfg["BLOCK_M"])))
    rows_per_program = max(1, triton.cdiv(triton.cdiv(M, programs), cfg["BLOCK_M"])) * cfg["BLOCK_M"]
    programs = max(1, triton.cdiv(M, rows_per_program))
    dw_part = new_empty(programs, N, dtype=torch.float32, device=x.device) if weight is not None else None
    db_part = new_empty(programs, N, dtype=torch.float32, device=x.device) if has_bias else None
    coef = new_empty(M, 2, dtype=torch.float32, device=x.device) if not cfg["FUSED"] else rstd
    if N > 0:
        _row_norm_bwd_kernel[(programs,)](
            dy, x, weight if weight is not None else x, mean if mean is not None else rstd, rstd,
            dresidual if dresidual is not None else dy, dx,
            dw_part if dw_part is not None else rstd, db_part if db_part is not None else rstd, coef,
            M, N, dy.stride(0), x.stride(0), dresidual.stride(0) if dresidual is not None else 0,
            dx.stride(0), rows_per_program,
            IS_RMS=is_rms, HAS_W=weight is not None, HAS_DB=has_bias,
            HAS_DRES=dresidual is not None, **cfg)
    dw, db = _sum_partials(dw_part, db_part, weight.dtype if weight is not None else None, N, x.device)
    return dx, dw, db  # db fp32: the op casts it to bias's dtype


# ---------------------------------------------------------------------------------------------
# Launchers: the same names and signatures as the CUDA launchers in dlkern._C.
# ---------------------------------------------------------------------------------------------
def layer_norm_fwd(x, weight, bias, residual, eps):
    """x (M, N) -> (y (M, N), residual_out (M, N) or None, mean (M,) fp32, rstd (M,) fp32)."""
    return _row_norm_fwd(x, weight, bias, residual, eps, is_rms=False)


def rms_norm_fwd(x, weight, residual, eps):
    """x (M, N) -> (y (M, N), residual_out (M, N) or None, rstd (M,) fp32)."""
    y, res_out, _, rstd = _row_norm_fwd(x, weight, None, residual, eps, is_rms=True)
    return y, res_out, rstd


def layer_norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias):
    """-> (dx (M, N), dweight (N,) in weight's dtype or None, dbias (N,) fp32 or None); dresidual is
    added to dx. weight may have another floating dtype than x (fp32 parameters, half x)."""
    return _row_norm_bwd(dy, x, weight, mean, rstd, dresidual, has_bias, is_rms=False)


def rms_norm_bwd(dy, x, weight, rstd, dresidual):
    """-> (dx (M, N), dweight (N,) or None); dresidual is added to dx."""
    dx, dw, _ = _row_norm_bwd(dy, x, weight, None, rstd, dresidual, False, is_rms=True)
    return dx, dw


# ---------------------------------------------------------------------------------------------
# What the compile test builds for sm_80/sm_90: every launch configuration with the heaviest flag
# set (LayerNorm, weight, bias, residual), plus the RMSNorm and 16-bit variants of the largest
# fused and the looped configurations.
# ---------------------------------------------------------------------------------------------
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def _signature(kernel, dtype):
    ints = {"M", "N", "rows_per_program"} | {a for a in kernel.arg_names if a.startswith("stride")}
    sig = {}
    for a in kernel.arg_names:
        if a in ints:
            sig[a] = "i32"
        elif a == "eps":
            sig[a] = "fp32"
        elif a in ("MEAN", "RSTD", "DW_PART", "DB_PART"):
            sig[a] = "*fp32"
        elif a.isupper() and a not in ("IS_RMS", "HAS_W", "HAS_B", "HAS_RES", "HAS_DB", "HAS_DRES",
                                        "BLOCK_M", "BLOCK_N", "FUSED"):
            sig[a] = _PTR[dtype]
        else:
            sig[a] = "constexpr"
    return sig
