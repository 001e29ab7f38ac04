"""The CUDA kernels: cubins of the torch-free kernel files and the launches their launchers make.

Every ``csrc/**/*.cu`` compiles on its own (no torch header) with setup.py's nvcc flags
(:mod:`dlkern.toolchain`) to a cubin per arch, cached by the content hash of the sources. Every
function in it (every template instance) gets a record with its resources and loops (``case``
``"*"``: not tied to a launch). For the ops in :data:`LAUNCH_RULES`, each bench case also gets
records of the instance the launcher would start, with its grid and block, found by rules
re-derived from the launcher code (named in each rule's docstring). This table is data written
from the C++ source, not read from it: a changed launcher needs its rule updated.

CUDA launches have no interpreter count: the memory bound uses the op's minimum bytes (a pass of
several kernels shares them, and its FLOPs, by instructions, as the Triton passes do). A rule may
give a launch's hot-loop trips (the attention kernels: the tile arithmetic of their launchers;
their hot loop is then the innermost loop with tensor-core ops, which holds the rolled tile-load
loops, counted once per trip; a function of the kernel's facts where the grid depends on them, as
the register-blocked depthwise forward's) or the bytes its hot loop loads; else the trips are the
op's minimum bytes over what one trip loads.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from dlkern.perf import model, sass
from dlkern.toolchain import NVCC_FLAGS, find_tool

REPO_CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_TYPES = {"bfloat16": "__nv_bfloat16", "float16": "__half", "float32": "float"}
FILE_OPS = {  # kernel file -> the ops it serves (for the unmatched template-instance records)
    "attention/attention_fwd.cu": ["scaled_dot_product_attention", "flash_attn_varlen"],
    "attention/attention_bwd.cu": ["scaled_dot_product_attention", "flash_attn_varlen"],
    "attention/attention_paged.cu": ["flash_attn_with_kvcache"],
    "conv/causal_conv1d.cu": ["causal_conv1d", "causal_conv1d_update"],
    "conv/depthwise_conv2d.cu": ["depthwise_conv2d"], "conv/dilated_conv1d.cu": ["dilated_conv1d"],
    "conv/wavenet.cu": ["wavenet_layer"], "flows/act_norm.cu": ["act_norm"],
    "flows/affine_coupling.cu": ["affine_coupling"], "flows/inv_conv1x1.cu": ["inv_conv1x1"],
    "norm/channel_norm_fwd.cu": ["batch_norm", "group_norm", "group_norm_silu", "instance_norm"],
    "norm/channel_norm_bwd.cu": ["batch_norm", "group_norm", "group_norm_silu", "instance_norm"],
    "norm/row_norm.cu": ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"],
    "norm/weight_norm.cu": ["weight_norm"], "optim/multi_tensor.cu": ["adamw_step"],
    "scan/selective_scan.cu": ["selective_scan"], "scan/state_update.cu": ["selective_state_update"],
}


def _arch_flag(arch):
    return f"-arch={arch}"


def compile_file(rel: str, arch: str) -> Path:
    """csrc/<rel> -> cached cubin for ``arch``."""
    from dlkern.perf.tcompile import cache_dir

    h = hashlib.sha256()
    for p in sorted(REPO_CSRC.rglob("*")):
        if p.suffix in (".h", ".cuh") and "emu" not in p.parts:
            h.update(p.read_bytes())
    h.update((REPO_CSRC / rel).read_bytes())
    h.update(json.dumps([NVCC_FLAGS, arch]).encode())
    out = cache_dir() / "cuda" / h.hexdigest()[:20] / (rel.replace("/", "_").removesuffix(".cu") + f".{arch}.cubin")
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    tmp = out.with_suffix(".tmp")
    subprocess.run([nvcc, "-cubin", _arch_flag(arch), *NVCC_FLAGS, f"-I{REPO_CSRC}", "-DDLK_WITH_CUDA=1",
                    str(REPO_CSRC / rel), "-o", str(tmp)], check=True, capture_output=True, text=True)
    tmp.replace(out)
    return out


def demangle(names) -> dict[str, str]:
    names = list(names)
    tool = find_tool("cu++filt") or "c++filt"
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def short_name(demangled: str) -> str:
    """``dlk::row_norm_fwd_cached_kernel<__nv_bfloat16, 2, false, false>`` from a demangled symbol."""
    name = demangled.removeprefix("void ").replace("(anonymous namespace)::", "")
    depth = 0
    for i, ch in enumerate(name):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            return name[:i]
    return name


def instances(arch, files=None) -> list[dict]:
    """Every function of every kernel file: {file, symbol, demangled, facts, cubin}."""
    from dlkern.perf.pipeline import function_facts

    out = []
    for rel in files or FILE_OPS:
        cubin = compile_file(rel, arch)
        funcs = sass.read_cubin(str(cubin))
        names = demangle(funcs)
        for sym, fn in funcs.items():
            out.append({"file": rel, "symbol": sym, "demangled": names[sym], "cubin": str(cubin),
                        "facts": function_facts(fn)})
    return out


# ---------------------------------------------------------------------------------------------
# Launch rules: (sample, dtype name, arch) -> [(mode, instance prefix, grid(facts) , threads, smem)]
# ---------------------------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def _fill(arch, threads, smem=0):
    """SMs x resident blocks of the instance (the launchers' max_blocks_per_sm x num_sms)."""
    spec = model.ARCHS[arch]
    return lambda facts: spec.sms * model.blocks_per_sm(spec, threads, facts["registers"],
                                                        smem + facts["static_shared"])[0]


def _row_norm_shape(cols, vec, max_values, preferred, max_threads):
    """csrc/norm/row_norm.cu choose_shape (inputs of the bench cases are aligned and cols % V == 0)."""
    if cols % vec == 0:
        chunks_total = cols // vec
        for pass_ in range(2):
            chunks = 1
            while chunks <= 8 and chunks * vec <= max_values:
                threads = _cdiv(_cdiv(chunks_total, chunks), 32) * 32
                if threads <= (preferred if pass_ == 0 else max_threads(chunks * vec)):
                    return chunks, threads
                chunks *= 2
    return 0, min(1024, _cdiv(_cdiv(cols, 8), 32) * 32)


def rule_row_norm(op_name, sample, dt, arch):
    """row_norm.cu fwd_launch / bwd_choose: cached kernel with 1-8 chunks of V = 16 B per thread
    (fwd: <= 64 values, preferring <= 256 threads; bwd: <= 16 values, <= 512 threads), else the
    uncached kernel; grid = min(rows, SMs x resident blocks); weight (and bias) as template flags."""
    x = sample.args[0]
    cols = x.shape[-1]
    rows = x.numel() // cols
    T = CU_TYPES[dt]
    vec = 16 // x.element_size()
    rms = "rms" in op_name
    residual = op_name.startswith("add_")
    b = "true" if rms else "false"
    out = []
    chunks, threads = _row_norm_shape(cols, vec, 64, 256, lambda v: 1024 if v <= 32 else 512)
    fill = _fill(arch, threads)
    has_b = "false" if rms else "true"  # the bench cases: weight, and a bias for LayerNorm
    name = (f"row_norm_fwd_cached_kernel<{T}, {chunks}, {b}, {str(residual).lower()}, true, {has_b}>" if chunks
            else f"row_norm_fwd_uncached_kernel<{T}, {b}, {str(residual).lower()}>")
    out.append(("fwd", name, lambda f, fill=fill: (min(rows, fill(f)), 1, 1), threads, 0))
    chunks, threads = _row_norm_shape(cols, vec, 16, 512, lambda v: 1024 if v <= 8 else 512)
    fill = _fill(arch, threads)
    name = (f"row_norm_bwd_cached_kernel<{T}, {chunks}, {b}, true, {has_b}>" if chunks
            else f"row_norm_bwd_uncached_kernel<{T}, {b}, true, {has_b}>")
    out.append(("bwd", name, lambda f, fill=fill: (min(rows, fill(f)), 1, 1), threads, 0))
    return out


# Attention (csrc/attention): the tile shapes and launches of attention_fwd.cu / attention_bwd.cu.
_HEAD_DIMS = (16, 32, 64, 96, 128, 256)


def _head_dim(D):
    """dispatch_head_dim: the template head dim serving D."""
    return next(d for d in _HEAD_DIMS if D <= d)


def attention_block_m(sample):
    """kFwdBQ of attention_fwd.cu: the query rows of a block."""
    D, es = sample.args[0].shape[-1], sample.args[0].element_size()
    return 128 if es == 2 and D <= 128 else 64


def attention_block_n(sample):
    """kFwdBK of attention_fwd.cu: the keys per hot-loop trip."""
    D, es = _head_dim(sample.args[0].shape[-1]), sample.args[0].element_size()
    return (64 if D <= 128 else 32) if es == 2 else (64 if D <= 64 else 32 if D <= 128 else 16)


def attention_bwd_tiles(D, es):
    """bwd_tiles of attention_common.cuh for template head dim D: (main rows of a block, rows of
    each streamed tile); dK/dV: keys x query tiles, dQ: queries x key tiles."""
    if es == 2:
        return (64 if D <= 128 else 32), (64 if D <= 64 else 32 if D <= 128 else 16)
    if D <= 32:
        return 64, 64
    if D <= 96:
        return (64, 32) if D == 64 else (32, 32)
    return (32 if D <= 128 else 16), 16


def _cuda_attention_trips(seqs, causal, outer, inner, keys_outer, split):
    """Hot-loop trips per program of a CUDA attention kernel, from the launcher's own arithmetic:
    programs tile the outer sequence (queries; keys for dK/dV) of every (lq, lk, causal offset) in
    ``seqs`` by ``outer`` and stream the other by ``inner``; programs past a sequence's end count 0.
    split: the forward's (unmasked, masked) pair (full tiles below the block's diagonal run the loop
    copy without masks); else the one loop's trips."""
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    unmasked = masked = 0
    longest = max((lk if keys_outer else lq) for lq, lk, _ in seqs)
    for lq, lk, off in seqs:
        for start in range(0, lk if keys_outer else lq, outer):
            if keys_outer:  # dkdv: query tiles from the first that sees the block's keys
                q_start = (max(0, start - off) if causal else 0) // inner * inner
                masked += cdiv(lq - q_start, inner) if q_start < lq else 0
                continue
            end = max(0, min(lk, start + outer + off)) if causal else lk  # Scorer::key_end
            n = cdiv(end, inner)
            full = min(lk // inner, max(0, start + off + 1) // inner) if causal else lk // inner
            unmasked += min(full, n) if split else 0
            masked += n - min(full, n) if split else n
    programs = cdiv(longest, outer) * len(seqs)
    return (unmasked / programs, masked / programs) if split else masked / programs


def _attention_launches(sample, dt, seqs, causal, batch, heads, delta_rows):
    """The launches of attention_fwd / attention_bwd for one call: seqs = [(lq, lk, causal offset)]
    per sequence (the padded layout: one entry, the batch in ``batch``); grids use the longest.
    Forward (attention_fwd.cu fwd_launch): 128 threads, kFwdBQ queries per block, smem Q + K + V
    tiles (BQ + 2 BK) x (D + 16 B), grid (cdiv(Lq, BQ), Hq, B), attention_fwd_kernel<T, D, causal,
    false, false> (no bias/dropout in the bench cases).
    Backward (attention_bwd.cu delta_launch, bwd_launch): delta, 128 threads, grid min(cdiv(rows,
    4), 2^20); dK/dV, grid (cdiv(Lk, main), Hkv, B), 2 main threads, one launch (D > 128: two, dV
    then dK), loop over the group's query heads x query tiles; dQ, grid (cdiv(Lq, main), Hq, B).
    smem (2 main + 4 streamed) x (D + 16 B) (+ 4 streamed floats for dK/dV)."""
    q = sample.args[0]
    hq, hkv = heads
    D, es = _head_dim(q.shape[-1]), q.element_size()
    T, c = CU_TYPES[dt], str(causal).lower()
    lq, lk = max(s[0] for s in seqs), max(s[1] for s in seqs)
    ld = (D + 16 // es) * es
    bq, bk = attention_block_m(sample), attention_block_n(sample)
    main, streamed = attention_bwd_tiles(D, es)
    tiles = (2 * main + 4 * streamed) * ld
    out = [("fwd", f"attention_fwd_kernel<{T}, {D}, {c}, false, false>",
            lambda f: (_cdiv(lq, bq), hq, batch), 128, (bq + 2 * bk) * ld,
            {"trips": _cuda_attention_trips(seqs, causal, bq, bk, False, True)}),
           ("bwd", f"attention_bwd_delta_kernel<{T}>", lambda f: (min(_cdiv(delta_rows, 4), 1 << 20), 1, 1),
            128, 0, {"loaded": 2 * delta_rows * q.shape[-1] * es, "flops": 0.0})]  # none of the op's FLOPs
    dkdv = {"trips": (hq // hkv) * _cuda_attention_trips(seqs, causal, main, streamed, True, False)}
    for kind in ([1, 2] if D > 128 else [3]):
        out.append(("bwd", f"attention_bwd_dkdv_kernel<{T}, {D}, {kind}>", lambda f: (_cdiv(lk, main), hkv, batch),
                    2 * main, tiles + 4 * streamed * 4, dkdv))
    out.append(("bwd", f"attention_bwd_dq_kernel<{T}, {D}>", lambda f: (_cdiv(lq, main), hq, batch), 2 * main, tiles,
                {"trips": _cuda_attention_trips(seqs, causal, main, streamed, False, False)}))
    return out


def rule_attention(op_name, sample, dt, arch):
    """scaled_dot_product_attention (B, H, L, D) on the CUDA backend: _attention_launches (causal
    top-left unless causal_alignment="bottom_right")."""
    q, k = sample.args[0], sample.args[1]
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    causal = len(sample.args) > 5 and bool(sample.args[5])
    off = Lk - Lq if sample.kwargs.get("causal_alignment") == "bottom_right" else 0
    return _attention_launches(sample, dt, [(Lq, Lk, off)], causal, B, (H, k.shape[1]), B * H * Lq)


def rule_attention_varlen(op_name, sample, dt, arch):
    """flash_attn_varlen starts the same instances as rule_attention (runtime cu_seqlens pointers,
    no other template) on the grid (cdiv(max_seqlen, tile), heads, sequences); a block past its
    sequence's end returns at once; causal is bottom-right per sequence; delta has Hq x total_q rows."""
    from dlkern.ops.attention_varlen import sequence_lengths
    q, k = sample.args[0], sample.args[1]
    lengths_q, lengths_k = sequence_lengths(sample)
    seqs = [(a, b, b - a) for a, b in zip(lengths_q, lengths_k)]
    causal = bool(sample.kwargs.get("causal", False))
    return _attention_launches(sample, dt, seqs, causal, len(seqs), (q.shape[1], k.shape[1]),
                               q.shape[1] * q.shape[0])


def paged_splits(num_splits, batch, hkv, table_keys, sms):
    """attention_binding.cpp attention_paged_fwd: (splits, tiles per split) of 32-key tiles."""
    capacity = max(_cdiv(table_keys, 32), 1)
    splits = num_splits or min(_cdiv(2 * sms, batch * hkv), capacity, 64)
    splits = max(1, min(splits, capacity))
    per_split = _cdiv(capacity, splits)
    return _cdiv(capacity, per_split), per_split


def rule_paged(op_name, sample, dt, arch):
    """attention_paged.cu attention_paged_fwd (splits: paged_splits): attention_paged_kernel<T, D> on
    grid (Hkv, B, splits), 128 threads, static shared memory only, each warp one (query, head) row
    of the group per pass; with several splits attention_paged_combine_kernel<T>, one warp per
    output row. Trips: the hot loop is the per-key P·V loop, run by each warp for every key of its
    block's range, in each of cdiv(Lq x group, 4) passes (averaged over the blocks)."""
    q, k_cache, _, _, table = sample.args
    B, Lq, Hq, D = q.shape
    hkv, page = k_cache.shape[2], k_cache.shape[1]
    lengths = getattr(sample, "lengths", None) or [table.shape[1] * page] * B
    splits, per_split = paged_splits(int(sample.kwargs.get("num_splits", 0)), B, hkv, table.shape[1] * page,
                                     model.ARCHS[arch].sms)
    span = per_split * 32
    keys = sum(max(0, min(n, (s + 1) * span) - s * span) for n in lengths for s in range(splits))
    passes = _cdiv(Lq * (Hq // hkv), 4)
    T = CU_TYPES[dt]
    out = [("fwd", f"attention_paged_kernel<{T}, {_head_dim(D)}>", lambda f: (hkv, B, splits), 128, 0,
            {"trips": passes * keys / (B * splits)})]
    if splits > 1:
        rows = B * Lq * Hq
        out.append(("fwd", f"attention_paged_combine_kernel<{T}>", lambda f: (_cdiv(rows, 4), 1, 1), 128, 0,
                    {"loaded": splits * rows * D * 8}))
    return out


def rule_adam(op_name, sample, dt, arch):
    """multi_tensor.cu launch: one block per 16384-element chunk, block_threads(max_size, V):
    about 4 groups of V per thread, 32-256 threads; instance multi_tensor_adam_kernel<P, S>."""
    params, _, exp_avgs = sample.args[0], sample.args[1], sample.args[2]
    chunks = sum(_cdiv(p.numel(), 16384) for p in params)
    max_size = max(p.numel() for p in params)
    P, S = CU_TYPES[dt], CU_TYPES[str(exp_avgs[0].dtype).removeprefix("torch.")]
    vec = 16 // max(params[0].element_size(), exp_avgs[0].element_size())
    groups = _cdiv(min(max_size, 16384), vec)
    threads = max(32, min(256, _cdiv(_cdiv(groups, 4), 32) * 32))
    return [("step", f"multi_tensor_adam_kernel<{P}, {S}>", lambda f: (chunks, 1, 1), threads, 0)]


def rule_depthwise(op_name, sample, dt, arch):
    """depthwise_conv2d.cu fwd_launch / bwd_launch. blocked_fits (channels_last input and output, a
    square 3/5/7 filter, C % 4 == 0; the bench cases are aligned and small enough for int
    coordinates): depthwise_conv2d_fwd_cl_kernel<T, K, UNIT, FLIP> (UNIT: stride and dilation 1 in
    both dimensions), block (tile_vecs = min(C / 4, 32), 256 / tile_vecs), grid (min(cdiv(items,
    block.y), cdiv(fill, tiles)), tiles = cdiv(C / 4, tile_vecs)) over items = N x cdiv(OH, kRows) x
    cdiv(OW, 4) (kRows 2 when UNIT, else 1); dx at UNIT is that kernel with FLIP over dy. Else
    depthwise_conv2d_fwd_kernel / _dx_kernel<T, K (3/5/7 or 0), channels_last>, 256 threads,
    grid-stride over the outputs, grid = min(cdiv(total, 256), fill). dweight:
    depthwise_conv2d_dweight_kernel<T>, min(items, fill) blocks of clamp(pixels rounded up to 32, 32,
    256) threads over C x (KH x KW + 1) items, or, where the blocked forward's conditions hold for x
    and dy, depthwise_conv2d_dweight_cl_kernel<T, K, UNIT> over chunks of output rows plus
    depthwise_conv2d_dweight_sum_kernel. Every loop's trips per thread are given: the taps' loads
    are reused from L1, so the bytes do not count them."""
    from dlkern.ops.depthwise_conv2d import sample_geometry

    x, w = sample.args[0], sample.args[1]
    (sh, sw), _, (dh, dw), (oh, ow) = sample_geometry(sample)
    kh, kw = w.shape[-2], w.shape[-1]
    K = kh if kh == kw and kh in (3, 5, 7) else 0
    n, c = x.shape[0], x.shape[1]
    cl = x.dim() == 4 and x.stride(1) == 1 and c > 1
    T = CU_TYPES[dt]
    unit = sh == sw == dh == dw == 1
    fits = cl and K and c % 4 == 0   # blocked_fits (x, y and dy alike)
    blocked, flat = "depthwise_conv2d_fwd_cl_kernel", f"<{T}, {K}, {str(cl).lower()}>"
    out = []
    if fits:
        name = f"{blocked}<{T}, {K}, {str(unit).lower()}, false>"
        out.append(("fwd",) + _depthwise_blocked(name, arch, n, c, oh, ow, unit))
    else:
        out.append(("fwd",) + _depthwise_flat(f"depthwise_conv2d_fwd_kernel{flat}", arch, n * c * oh * ow))
    # backward, dy laid out as y (a channels_last model's gradients are channels_last)
    h, wd = x.shape[2], x.shape[3]
    if fits and unit:
        out.append(("bwd",) + _depthwise_blocked(f"{blocked}<{T}, {K}, true, true>", arch, n, c, h, wd, True))
    else:
        out.append(("bwd",) + _depthwise_flat(f"depthwise_conv2d_dx_kernel{flat}", arch, n * c * h * wd))
    if fits:
        # dweight_plan: chunks of output rows (about 2 blocks per SM over the channel tiles), block
        # (tile_vecs, K), the hot loop over runs of 4 output columns; then the chunk sum, blocks of
        # 32 (tap or bias, channel) entries x 8 groups of chunks, its hot loop over a group's chunks
        tile = min(c // 4, 32)
        tiles = _cdiv(c // 4, tile)
        rows = n * oh
        per_chunk = _cdiv(rows, min(max(_cdiv(2 * model.ARCHS[arch].sms, tiles), 1), rows))
        chunks = _cdiv(rows, per_chunk)
        out.append(("bwd", f"depthwise_conv2d_dweight_cl_kernel<{T}, {K}, {str(unit).lower()}>",
                    lambda f: (chunks, tiles, 1), tile * K, 0, {"trips": per_chunk * _cdiv(ow, 4)}))
        sums = c * (K * K + 1)
        fill = _fill(arch, 256)

        def sum_grid(f):   # blocks of 32 entries x 8 chunk groups
            return (max(1, min(_cdiv(sums, 32), fill(f))), 1, 1)
        out.append(("bwd", "depthwise_conv2d_dweight_sum_kernel", sum_grid, 256, 0,
                    {"trips": lambda f: _cdiv(chunks, 8) * _cdiv(sums, sum_grid(f)[0] * 32)}))
        return out
    # dweight/dbias otherwise: one block per (channel, tap or bias) item, grid-stride over items;
    # its threads stride over the N x OH x OW output pixels (the inner, hot loop)
    pixels, items = n * oh * ow, c * (kh * kw + 1)
    threads = min(max(_cdiv(pixels, 32) * 32, 32), 256)
    fill = _fill(arch, threads)

    def dw_grid(f):
        return (min(items, fill(f)), 1, 1)
    out.append(("bwd", f"depthwise_conv2d_dweight_kernel<{T}>", dw_grid, threads, 0,
                {"trips": lambda f: items / dw_grid(f)[0] * pixels / threads}))
    return out


def _depthwise_blocked(name, arch, n, c, oh, ow, unit):
    """(name, grid, threads, smem, extra) of depthwise_conv2d_fwd_cl_kernel over an (oh, ow) output."""
    vecs = c // 4
    tile = min(vecs, 32)
    rows = 256 // tile
    tiles = _cdiv(vecs, tile)
    items = n * _cdiv(oh, 2 if unit else 1) * _cdiv(ow, 4)   # kRows<UNIT> output rows, kRun columns
    fill = _fill(arch, tile * rows)

    def grid(f):
        return (max(1, min(_cdiv(items, rows), _cdiv(fill(f), tiles))), tiles, 1)
    return name, grid, tile * rows, 0, {"trips": lambda f: items / (grid(f)[0] * rows)}


def _depthwise_flat(name, arch, total):
    """(name, grid, threads, smem, extra) of an element-wise kernel, grid-stride over `total`; its taps
    hit L1, so the byte-based trip estimate would count ~1 trip: they are given."""
    fill = _fill(arch, 256)

    def grid(f):
        return (max(1, min(_cdiv(total, 256), fill(f))), 1, 1)
    return name, grid, 256, 0, {"trips": lambda f: total / (grid(f)[0] * 256)}


LAUNCH_RULES = {
    "layer_norm": rule_row_norm, "rms_norm": rule_row_norm, "add_layer_norm": rule_row_norm,
    "add_rms_norm": rule_row_norm, "scaled_dot_product_attention": rule_attention,
    "flash_attn_varlen": rule_attention_varlen, "flash_attn_with_kvcache": rule_paged,
    "adamw_step": rule_adam, "depthwise_conv2d": rule_depthwise,
}


def records(op_names, dtypes, quick, arch, errors, progress=True, log=print) -> list[dict]:
    import torch
    from tqdm import tqdm

    from dlkern.perf.launches import enumerate_launches, perf_ops
    from dlkern.perf.pipeline import _bounds, _elements, dynamic_counts, tensor_unit

    files = [f for f, ops in FILE_OPS.items() if any(o in op_names and (not quick or o in LAUNCH_RULES) for o in ops)]
    found = []
    for rel in tqdm(files, desc=f"CUDA kernels {arch}", unit="file", disable=not progress):
        try:
            found += instances(arch, [rel])
        except Exception as exc:
            errors.append(("cuda", rel, f"{arch}: {type(exc).__name__}: {str(exc)[:300]}"))
    spec = model.ARCHS[arch]
    out = []
    for inst in found:  # every template instance, unlaunched
        f = inst["facts"]
        out.append(dict(op=FILE_OPS[inst["file"]][0], case="*", dtype="*", arch=arch, backend="cuda", mode="*",
                        kernel=short_name(inst["demangled"]), symbol=inst["symbol"],
                        config=None, group=0, registers=f["registers"], spill_bytes=f["spill_bytes"],
                        shared_bytes=f["static_shared"], loop_counts=f["loop_counts"], total_counts=f["total_counts"],
                        loops=f["loops"], hot_loop=f["hot_loop"], cubin=inst["cubin"], picked=False,
                        predicted_us=None, launched=False))
    ops = perf_ops()
    for name in op_names:
        rule = LAUNCH_RULES.get(name)
        if rule is None:
            continue
        for dt in dtypes:
            for case, sample, cost, tlaunches in enumerate_launches(ops[name], getattr(torch, dt), quick, arch):
                elements = _elements(name, sample)
                case_records = []
                for group, (mode, prefix, grid_of, threads, smem, *extra) in enumerate(rule(name, sample, dt, arch), 1):
                    extra = extra[0] if extra else {}
                    inst = next((i for i in found if prefix in i["demangled"]), None)
                    if inst is None:
                        errors.append((name, case, f"cuda {arch}: no instance {prefix}"))
                        continue
                    f = inst["facts"]
                    if extra.get("trips") is not None and f.get("tensor_loops"):
                        # a tiled kernel's trips are those of its tensor-core loop, not of the tile-load
                        # loops nested in it (innermost, hence the default hot loop)
                        f = dict(f, inner_loops=f["tensor_loops"], loop_counts=f["tensor_loops"][0])
                    grid = grid_of(f)
                    blocks = grid[0] * grid[1] * grid[2]
                    per_sm, limit = model.blocks_per_sm(spec, threads, f["registers"], smem + f["static_shared"])
                    bytes_min = (cost.bwd_bytes if mode == "bwd" else cost.fwd_bytes) if cost else 0.0
                    flops = (cost.bwd_flops if mode == "bwd" else cost.fwd_flops) if cost else 0.0
                    flops = extra.get("flops", flops)
                    loaded = extra.get("loaded", bytes_min)
                    trips = extra.get("trips")
                    trips = trips(f) if callable(trips) else trips
                    dyn, trips = dynamic_counts(f, threads * blocks, loaded, loaded, trips)
                    instr, tensor = dyn.get("total", 0.0), tensor_unit(f)
                    b = model.bounds(spec, bytes_min, flops, instr, dyn.get("MUFU", 0.0), tensor, grid, per_sm)
                    case_records.append(dict(
                        op=name, case=case, dtype=dt, arch=arch, backend="cuda", mode=mode,
                        kernel=short_name(inst["demangled"]), symbol=inst["symbol"],
                        config={"threads": threads, "dynamic_shared": smem}, group=group, configs_kept=1,
                        grid=list(grid), threads=threads, registers=f["registers"], spill_bytes=f["spill_bytes"],
                        shared_bytes=smem + f["static_shared"], blocks_per_sm=per_sm, occupancy_limit=limit,
                        waves=round(model.waves(spec, blocks, per_sm), 3), loops=f["loops"], hot_loop=f["hot_loop"],
                        loop_counts=f["loop_counts"], total_counts=f["total_counts"], loop_trips=round(trips, 2),
                        instructions=instr, elements=elements,
                        instructions_per_element=round(instr / max(elements, 1), 3), bytes_min=bytes_min,
                        bytes_actual=None, flops=flops, tensor_op=tensor, mufu=dyn.get("MUFU", 0.0), memory_bound_us=round(b.memory_us, 3),
                        math_bound_us=round(b.math_us, 3), issue_bound_us=round(b.issue_us, 3),
                        launch_us=b.launch_us, predicted_us=round(b.predicted_us, 3), bound=b.bound,
                        cubin=inst["cubin"], launched=True))
                # a pass of several kernels shares its bytes and FLOPs by instructions, as Triton's
                _bounds(out, spec, case_records)
                out += case_records
    return out
