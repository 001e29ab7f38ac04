"""The CUDA kernels: cubins of the torch-free kernel files and the launches their launchers make.

Every ``csrc/**/*.cu`` compiles on its own (no torch header) with setup.py's nvcc flags
(:mod:`dlkern.toolchain`) to a cubin per arch, cached by the content hash of the sources. Every
function in it (every template instance) gets a record with its resources and loops (``case``
``"*"``: not tied to a launch). For the ops in :data:`LAUNCH_RULES`, each bench case also gets
records of the instance the launcher would start, with its grid and block, found by rules
re-derived from the launcher code (named in each rule's docstring). This table is data written
from the C++ source, not read from it: a changed launcher needs its rule updated.

CUDA launches have no interpreter count: the memory bound uses the op's minimum bytes, and the
loop trip estimate uses the bytes the Triton twin was counted to load and store for that pass.
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
    "norm/channel_norm.cu": ["batch_norm", "group_norm", "group_norm_silu", "instance_norm"],
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


def rule_attention(op_name, sample, dt, arch):
    """attention_fwd.cu fwd_launch: 4 warps (128 threads) of kFwdMT m16 query tiles each (16-bit:
    2 up to D 128, so 128 query rows; else 1, 64 rows), key tiles of kFwdBK (16-bit: 64 up to D 128,
    32 above; fp32: 64 / 32 / 16), smem (BQ + 2 BK) x (D + 16 B) (Q, K, V); grid (cdiv(Lq, BQ), Hq,
    B), instance attention_fwd_kernel<T, D, causal, bias, dropout> (this rule: no bias/dropout)."""
    B, H, Lq, _ = sample.args[0].shape
    causal = len(sample.args) > 5 and bool(sample.args[5])
    return [_attention_fwd_launch(sample, dt, causal, (_cdiv(Lq, attention_block_m(sample)), H, B))]


def rule_attention_varlen(op_name, sample, dt, arch):
    """flash_attn_varlen's forward starts the same attention_fwd_kernel instance as rule_attention
    (runtime cu_seqlens pointers, no other template) on the grid (cdiv(max_seqlen_q, BQ), Hq,
    sequences); a block past its sequence's end returns at once."""
    q, cu_q, max_q = sample.args[0], sample.args[3], sample.args[5]
    grid = (_cdiv(max_q, attention_block_m(sample)), q.shape[1], cu_q.shape[0] - 1)
    return [_attention_fwd_launch(sample, dt, bool(sample.kwargs.get("causal", False)), grid)]


def _attention_fwd_launch(sample, dt, causal, grid):
    q = sample.args[0]
    D = next(d for d in (16, 32, 64, 96, 128, 256) if q.shape[-1] <= d)  # dispatch_head_dim
    es = q.element_size()
    bq, bk = attention_block_m(sample), attention_block_n(sample)
    smem = (bq + 2 * bk) * (D + 16 // es) * es
    name = f"attention_fwd_kernel<{CU_TYPES[dt]}, {D}, {str(causal).lower()}, false, false>"
    return ("fwd", name, lambda f: grid, 128, smem)


def attention_block_m(sample):
    """kFwdBQ of attention_fwd.cu: the query rows of a block."""
    D, es = sample.args[0].shape[-1], sample.args[0].element_size()
    return 128 if es == 2 and D <= 128 else 64


def attention_block_n(sample):
    """kFwdBK of attention_fwd.cu: the keys per hot-loop trip."""
    D, es = sample.args[0].shape[-1], sample.args[0].element_size()
    D = next(d for d in (16, 32, 64, 96, 128, 256) if D <= d)
    return (64 if D <= 128 else 32) if es == 2 else (64 if D <= 64 else 32 if D <= 128 else 16)


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
    """depthwise_conv2d.cu fwd_launch: depthwise_conv2d_fwd_kernel<T, K (3/5/7 or 0), channels_last>,
    256 threads, grid-stride over N x C x OH x OW outputs, grid = min(cdiv(total, 256), fill)."""
    x, w = sample.args[0], sample.args[1]
    kh, kw = w.shape[-2], w.shape[-1]
    K = kh if kh == kw and kh in (3, 5, 7) else 0
    cl = x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1
    stride = sample.args[3] if len(sample.args) > 3 and isinstance(sample.args[3], int) else 1
    n, c, h, wd = x.shape
    total = n * c * _cdiv(h, stride) * _cdiv(wd, stride)
    fill = _fill(arch, 256)
    return [("fwd", f"depthwise_conv2d_fwd_kernel<{CU_TYPES[dt]}, {K}, {str(cl).lower()}>",
             lambda f: (max(1, min(_cdiv(total, 256), fill(f))), 1, 1), 256, 0)]


LAUNCH_RULES = {
    "layer_norm": rule_row_norm, "rms_norm": rule_row_norm, "add_layer_norm": rule_row_norm,
    "add_rms_norm": rule_row_norm, "scaled_dot_product_attention": rule_attention,
    "flash_attn_varlen": rule_attention_varlen,
    "adamw_step": rule_adam, "depthwise_conv2d": rule_depthwise,
}


def records(op_names, dtypes, quick, arch, errors, progress=True, log=print) -> list[dict]:
    import torch
    from tqdm import tqdm

    from dlkern.perf.launches import enumerate_launches, perf_ops
    from dlkern.perf.pipeline import (ATTENTION_OPS, VARLEN_ATTENTION_OPS, _elements, attention_trips,
                                      dynamic_counts, tensor_unit, varlen_attention_trips)

    files = [f for f, ops in FILE_OPS.items() if any(o in op_names and (not quick or o in LAUNCH_RULES) for o in ops)]
    if quick:  # the launched instances only: the files of the ops with launch rules (not attention_bwd)
        files = [f for f in files if f != "attention/attention_bwd.cu"]
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
                for mode, prefix, grid_of, threads, smem in rule(name, sample, dt, arch):
                    inst = next((i for i in found if prefix in i["demangled"]), None)
                    if inst is None:
                        errors.append((name, case, f"cuda {arch}: no instance {prefix}"))
                        continue
                    f = inst["facts"]
                    grid = grid_of(f)
                    blocks = grid[0] * grid[1] * grid[2]
                    per_sm, limit = model.blocks_per_sm(spec, threads, f["registers"], smem + f["static_shared"])
                    bytes_min = (cost.bwd_bytes if mode == "bwd" else cost.fwd_bytes) if cost else 0.0
                    flops = (cost.bwd_flops if mode == "bwd" else cost.fwd_flops) if cost else 0.0
                    # block_m only counts for dK/dV (not launched here)
                    trips = None
                    if name in ATTENTION_OPS:
                        trips = attention_trips(prefix, sample, 0, attention_block_n(sample))
                    elif name in VARLEN_ATTENTION_OPS:
                        trips = varlen_attention_trips(prefix, sample, attention_block_m(sample),
                                                       attention_block_n(sample))
                    dyn, trips = dynamic_counts(f, threads * blocks, bytes_min, bytes_min, trips)
                    instr, tensor = dyn.get("total", 0.0), tensor_unit(f)
                    b = model.bounds(spec, bytes_min, flops, instr, dyn.get("MUFU", 0.0), tensor, grid, per_sm)
                    out.append(dict(
                        op=name, case=case, dtype=dt, arch=arch, backend="cuda", mode=mode,
                        kernel=short_name(inst["demangled"]), symbol=inst["symbol"],
                        config={"threads": threads, "dynamic_shared": smem}, group=1, configs_kept=1,
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
    return out
