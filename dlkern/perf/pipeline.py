"""The ``dlkern perf`` pipeline: enumerate, compile, read, count, predict, write. All *predicted*.

Per launched kernel (one record per autotune config the pruner keeps; ``--quick``: the first):

* bytes: the interpreter counts each Triton kernel on small CPU cases (:mod:`.traffic`); the
  counted launches of the same kernel whose constexprs (code-path flags first) match the GPU
  launch give its bytes as a multiple of the pass's minimum, applied to the GPU case
  (``bytes_actual``: distinct addresses, ``bytes_requested``: every active lane), capped at the
  bytes the launch's tensor arguments span;
* issued instructions: the hot loop's trip count is not in the SASS; it is the bytes the kernel
  requests divided by the bytes one pass of the loop loads over all threads (its LDG / LDGSTS
  widths), except for attention, whose loop count is the number of key (or query) blocks.
  Instructions outside the hot loop count once per thread. ``instructions_per_element`` divides
  by the op's elements (the first tensor's numel; attention: query x key pairs);
* bounds (:func:`dlkern.perf.model.bounds`): memory = the kernel's counted unique bytes (CUDA: the
  op's minimum) / bandwidth; math = the pass's FLOPs, shared among its kernels by issued
  instructions, / the peak of the unit its SASS uses (HGMMA, HMMA, else FMA); issue = the larger
  of instructions / issue rate and MUFU results / SFU rate, stretched when the grid leaves SMs
  idle or ends in a partial wave; plus the launch floor. The prediction is the largest;
* ``picked``: of the configs an autotuned call keeps, the one with the smallest predicted time
  (the autotuner times them on a GPU; the model's choice stands in for it);
* ``predicted_pct_roofline``: the pass's roofline time (its minimum bytes and FLOPs at peak) over
  its predicted time, with this record's config and the picked configs of its other kernels.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dlkern.perf import model, sass

ATTENTION_OPS = ("scaled_dot_product_attention",)
VARLEN_ATTENTION_OPS = ("flash_attn_varlen",)

# Best published figure per (op, mode), shared/PERF.md (H100 SXM, bf16): ("TB/s" | "TFLOP/s", value,
# who). Memory-bound figures scale to the H200 by its copy rate (4.3 / 3.0), compute-bound ones stay.
PEERS = {
    ("scaled_dot_product_attention", "fwd"): ("TFLOP/s", 655.0, "FA3"),
    ("scaled_dot_product_attention", "bwd"): ("TFLOP/s", 560.0, "FA3"),
    ("layer_norm", "fwd"): ("TB/s", 3.0 * 4.3 / 3.0, "quack"),
    ("rms_norm", "fwd"): ("TB/s", 3.0 * 4.3 / 3.0, "quack"),
    ("layer_norm", "bwd"): ("TB/s", 1.4 * 4.3 / 3.0, "Liger"),
    ("rms_norm", "bwd"): ("TB/s", 1.4 * 4.3 / 3.0, "Liger"),
    ("adamw_step", "step"): ("TB/s", 2.1 * 4.3 / 3.0, "torch fused"),
}


def _elements(op_name, sample) -> int:
    import torch
    first = next((a for a in sample.args if isinstance(a, (torch.Tensor, list, tuple))), None)
    if op_name in ATTENTION_OPS:
        q, k = sample.args[0], sample.args[1]
        return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    if op_name in VARLEN_ATTENTION_OPS:
        from dlkern.ops.attention_varlen import sequence_lengths, visible_pairs
        lq, lk = sequence_lengths(sample)
        return sample.args[0].shape[1] * visible_pairs(lq, lk, False)
    if isinstance(first, (list, tuple)):
        return sum(t.numel() for t in first if isinstance(t, torch.Tensor))
    return first.numel() if first is not None else 1


# ---------------------------------------------------------------------------------------------
# Traffic (interpreter subprocess), cached by the sources it depends on
# ---------------------------------------------------------------------------------------------
def _sources_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pattern in ("kernels/*.py", "ops/*.py", "bench/optim.py", "optim/*.py", "perf/traffic.py", "perf/launches.py",
                    "registry.py"):
        for p in sorted(root.glob(pattern)):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:20]


def traffic(op_names, dtype, log=print) -> dict:
    """op -> [{case, mode, bytes_min, launches}] from :mod:`dlkern.perf.traffic` (cached)."""
    from dlkern.perf.tcompile import cache_dir

    folder = cache_dir() / "traffic" / f"{_sources_hash()}_{dtype}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [n for n in op_names if not (folder / f"{n}.json").exists()]
    if missing:
        log(f"counting bytes in Triton's interpreter: {', '.join(missing)}")
        out = folder / "batch.json"
        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run([sys.executable, "-m", "dlkern.perf.traffic", "--dtype", dtype, "--out", str(out), *missing],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"traffic counting failed: {proc.stderr[-2000:]}")
        for name, value in json.loads(out.read_text()).items():
            (folder / f"{name}.json").write_text(json.dumps(value))
    return {n: json.loads((folder / f"{n}.json").read_text()) for n in op_names}


def _counted(entries) -> list[dict]:
    """Every counted launch with its pass's mode and minimum bytes."""
    out = []
    for e in entries if isinstance(entries, list) else []:
        for la in e["launches"]:
            out.append(dict(la, mode=e["mode"], case=e["case"], bytes_min=max(e["bytes_min"], 1)))
    return out


def match_traffic(counted, launch) -> dict | None:
    """The counted launches of the same kernel and pass whose constexprs agree most with the
    launch's (the flags that pick a code path: FUSED, HAS_W, ...; tile sizes count less), as
    fractions of their pass's minimum bytes, averaged; None if the kernel was never counted."""
    same = [c for c in counted if c["kernel"] == launch.kernel and c["mode"] == launch.mode]
    if not same:
        return None
    flags = {k: v for k, v in launch.kwargs.items() if k.isupper() and isinstance(v, (bool, int, str))}

    def score(c):
        return sum((2 if not k.startswith("BLOCK") else 1) for k, v in flags.items() if c["meta"].get(k) == v)
    best = max(map(score, same))
    pick = [c for c in same if score(c) == best]
    avg = lambda key: sum(c[key] / c["bytes_min"] for c in pick) / len(pick)  # noqa: E731
    first = pick[0]
    return {"unique": avg("unique_loaded") + avg("unique_stored"), "loaded": avg("loaded"), "stored": avg("stored"),
            "cases": sorted({c["case"] for c in pick}), "raw": first, "bytes_min_case": first["bytes_min"]}


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
def kernel_facts(cubin: str, function: str | None = None) -> dict:
    """Resources, loops and opcode counts of one function of a cubin (the only one if None)."""
    funcs = sass.read_cubin(cubin)
    return function_facts(funcs[function] if function else next(iter(funcs.values())))


def function_facts(fn) -> dict:
    hot = fn.hot_loop()
    loops = fn.loops()
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    mma = [lp for lp in loops if tensor_unit({"total_counts": fn.counts(lp)})]
    mma_inner = [lp for lp in mma if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in mma)]
    return {
        # innermost loops with tensor-core ops, largest first: the tile loops of a CUDA kernel, whose
        # rolled tile-load loops (nested in them) are the innermost loops
        "tensor_loops": sorted((fn.counts(lp) for lp in mma_inner), key=lambda c: -c.get("total", 0)),
        # innermost loops, largest first (attention splits its key loop into masked and unmasked copies)
        "inner_loops": sorted((fn.counts(lp) for lp in inner), key=lambda c: -c.get("total", 0)),
        "function": fn.name, "registers": fn.registers, "spill_bytes": fn.stack, "local_bytes": fn.local,
        "static_shared": fn.shared, "total_counts": fn.counts(), "loop_counts": fn.counts(hot) if hot else {},
        "loops": len(fn.loops()),
        "hot_loop": [fn.instrs[hot[0]].addr, fn.instrs[hot[1]].addr] if hot else None,
        "loop_load_bytes": (fn.global_bytes(hot, "LDG") + fn.global_bytes(hot, "LDGSTS")) if hot else 0,
        "loop_store_bytes": fn.global_bytes(hot, "STG") if hot else 0,
    }


def dynamic_counts(facts, threads_total, loaded_bytes, stored_bytes, trips=None) -> tuple[dict, float]:
    """(opcode class -> thread-instructions issued by the launch, hot-loop trips per thread), see
    the module docstring; ``trips`` overrides the byte-based estimate where it is known; a pair
    (unmasked, masked) gives the trips of the two largest inner loops, masked the larger (an
    attention kernel whose causal diagonal runs in a masked copy of its loop)."""
    loops = facts.get("inner_loops") or []
    if isinstance(trips, tuple) and len(loops) >= 2:
        counts = {k: float(v) for k, v in facts["total_counts"].items()}
        for loop, n in zip(loops, (trips[1], trips[0])):
            for k, v in loop.items():
                counts[k] = counts.get(k, 0.0) + v * (n - 1.0)
        return {k: threads_total * v for k, v in counts.items()}, float(sum(trips))
    if isinstance(trips, tuple):
        trips = sum(trips)
    if trips is None:
        trips = 1.0
        if facts["loop_counts"].get("total"):
            if facts["loop_load_bytes"] and loaded_bytes:
                trips = loaded_bytes / (threads_total * facts["loop_load_bytes"])
            elif facts["loop_store_bytes"] and stored_bytes:
                trips = stored_bytes / (threads_total * facts["loop_store_bytes"])
    trips = max(float(trips), 1.0) if facts["loop_counts"] else 1.0
    counts = {k: threads_total * (v - facts["loop_counts"].get(k, 0) + facts["loop_counts"].get(k, 0) * trips)
              for k, v in facts["total_counts"].items()}
    return counts, trips


def tensor_unit(facts) -> str:
    counts = facts["total_counts"]
    return "HGMMA" if counts.get("HGMMA") else "HMMA" if counts.get("HMMA") else ""


def attention_trips(kernel, sample, block_m, block_n):
    """Hot-loop trips of the attention kernels (a loop over key blocks, or query blocks for
    dK/dV): their loads are reused across the tile, so the byte-based estimate does not apply.
    Causal: (unmasked trips, masked trips) per program on average, for the kernels that loop over
    the tiles left of the diagonal without masks and over the diagonal tiles with them (square
    case: a block of `outer` rows crosses outer/inner diagonal tiles)."""
    q, k = sample.args[0], sample.args[1]
    causal = len(sample.args) > 5 and bool(sample.args[5])
    lq, lk = q.shape[2], k.shape[2]
    if "delta" in kernel:
        return None
    inner, outer, length = (block_m, block_n, lq) if "dkdv" in kernel else (block_n, block_m, lk)
    if not causal:
        return -(-length // inner)
    masked = max(outer / inner, 1.0)
    return (max((length - outer) / (2 * inner), 0.0), masked)


def varlen_attention_trips(kernel, sample, block_m, block_n):
    """attention_trips for packed sequences: (unmasked, masked) tile trips per program of the grid
    (blocks of the longest sequence x sequences; programs past their sequence's end exit at once and
    count 0), each program's split computed from its own sequence's lengths as the kernels do."""
    from dlkern.ops.attention_varlen import sequence_lengths
    if "delta" in kernel:
        return None
    lengths_q, lengths_k = sequence_lengths(sample)
    causal = bool(sample.kwargs.get("causal", False))
    group = sample.args[0].shape[1] // sample.args[1].shape[1]
    dkdv = "dkdv" in kernel
    outer = block_n if dkdv else block_m
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    unmasked = masked = 0
    for lq, lk in zip(lengths_q, lengths_k):
        offset = lk - lq
        for start in range(0, lk if dkdv else lq, outer):
            if dkdv:  # query tiles [lo, mid) diagonal, [mid, full) whole, [full, lq) ragged; per group head
                lo = mid = 0
                if causal:
                    lo = max(start - offset, 0) // block_m * block_m
                    mid = min(max(cdiv(max(start + block_n - 1 - offset, 0), block_m) * block_m, lo), cdiv(lq, block_m) * block_m)
                full = lq // block_m * block_m
                unmasked += group * max(full - mid, 0) // block_m
                masked += group * (cdiv(mid - lo, block_m) + cdiv(lq - max(mid, full), block_m))
            else:     # key tiles [0, mid) whole, [mid, end) diagonal or ragged
                end = max(min(lk, start + block_m + offset), 0) if causal else lk
                mid = (min(lk, max(start + offset + 1, 0)) if causal else lk) // block_n * block_n
                unmasked += mid // block_n
                masked += cdiv(max(end - mid, 0), block_n)
    programs = cdiv(max(lengths_k if dkdv else lengths_q, default=0), outer) * len(lengths_q)
    return (unmasked / max(programs, 1), masked / max(programs, 1))


def _finish(records, arch):
    """Pick configs, fill the pass-level fields (pct of roofline, peer ratio)."""
    spec = model.ARCHS[arch]
    launched = [r for r in records if r.get("predicted_us") is not None]
    groups = {}
    for r in launched:
        groups.setdefault((r["op"], r["case"], r["dtype"], r["mode"], r["backend"], r["group"]), []).append(r)
    for rs in groups.values():
        best = min(rs, key=lambda r: r["predicted_us"])
        for r in rs:
            r["picked"] = r is best
    passes = {}
    for r in launched:
        passes.setdefault((r["op"], r["case"], r["dtype"], r["mode"], r["backend"]), []).append(r)
    for (op, case, dtype, mode, backend), rs in passes.items():
        picked_total = sum(r["predicted_us"] for r in rs if r["picked"])
        r0 = rs[0]
        ideal = model.roofline_us(spec, r0["bytes_min"], r0["flops"], any(r["tensor_op"] for r in rs))
        for r in rs:
            same_group = [x for x in rs if x["group"] == r["group"] and x["picked"]]
            total = picked_total - sum(x["predicted_us"] for x in same_group) + r["predicted_us"]
            r["pass_predicted_us"] = round(total, 3)
            r["roofline_us"] = round(ideal, 3)
            r["predicted_pct_roofline"] = round(100 * ideal / total, 1) if total else None
            peer = PEERS.get((op, mode))
            r["peer"] = None
            if peer and arch == "sm_90a" and total:
                unit, value, who = peer
                ours = (r["flops"] / (total * 1e-6) / 1e12) if unit == "TFLOP/s" else (r["bytes_min"] / (total * 1e-6) / 1e12)
                r["peer"] = {"name": who, "published": value, "unit": unit, "predicted": round(ours, 2),
                             "ratio": round(ours / value, 3)}
    return records


def triton_records(op, dtype, quick, arch, compile_bar, errors, traffic_entries) -> list[dict]:
    from dlkern.perf.launches import enumerate_launches
    from dlkern.perf.tcompile import compile_launch

    spec = model.ARCHS[arch]
    counted = _counted(traffic_entries)
    records = []
    for case, sample, cost, launches in enumerate_launches(op, dtype, quick, arch, errors):
        elements = _elements(op.name, sample)
        for la in launches:
            try:
                meta = compile_launch(la, arch)
                facts = kernel_facts(meta["cubin"])
            except Exception as exc:
                errors.append((op.name, case, f"{la.kernel} {la.config}: {type(exc).__name__}: {str(exc)[:300]}"))
                compile_bar.update(1)
                continue
            compile_bar.update(1)
            bytes_min = (cost.bwd_bytes if la.mode == "bwd" else cost.fwd_bytes) if cost else 0.0
            flops = (cost.bwd_flops if la.mode == "bwd" else cost.fwd_flops) if cost else 0.0
            t = match_traffic(counted, la)
            threads = meta["num_warps"] * 32
            blocks = la.grid[0] * la.grid[1] * la.grid[2]
            shared = max(meta["shared_bytes"], facts["static_shared"])
            per_sm, limit = model.blocks_per_sm(spec, threads, facts["registers"], shared)
            unique = t["unique"] * bytes_min if t else None
            loaded = t["loaded"] * bytes_min if t else bytes_min
            stored = t["stored"] * bytes_min if t else 0.0
            # Counts scale with the pass's minimum; a kernel whose traffic does not (the partial-sum
            # kernels: a GPU-sized number of partial rows, 4 on the interpreter) is capped at what
            # its arguments span, its requested bytes in proportion.
            cap = la.footprint()
            if unique and cap and unique > cap:
                loaded, stored, unique = loaded * cap / unique, stored * cap / unique, float(cap)
            trips = None
            if "BLOCK_N" in la.config and op.name in ATTENTION_OPS + VARLEN_ATTENTION_OPS:
                trips_of = attention_trips if op.name in ATTENTION_OPS else varlen_attention_trips
                trips = trips_of(la.kernel, sample, la.config["BLOCK_M"], la.config["BLOCK_N"])
            dyn, trips = dynamic_counts(facts, threads * blocks, loaded, stored, trips)
            instr = dyn.get("total", 0.0)
            records.append(dict(
                op=op.name, case=case, dtype=la.dtype, arch=arch, backend="triton", mode=la.mode,
                kernel=la.kernel, config=la.config or {"num_warps": meta["num_warps"], "num_stages": meta["num_stages"]},
                group=la.group, configs_kept=la.configs_kept, grid=list(la.grid), threads=threads,
                registers=facts["registers"], spill_bytes=facts["spill_bytes"], shared_bytes=shared,
                blocks_per_sm=per_sm, occupancy_limit=limit, waves=round(model.waves(spec, blocks, per_sm), 3),
                loops=facts["loops"], hot_loop=facts["hot_loop"], loop_counts=facts["loop_counts"],
                total_counts=facts["total_counts"], loop_trips=round(trips, 2),
                instructions=instr, elements=elements, instructions_per_element=round(instr / max(elements, 1), 3),
                bytes_min=bytes_min, bytes_actual=unique, bytes_requested=(loaded + stored) if t else None,
                bytes_counted_case=({"cases": t["cases"], "bytes_min": t["bytes_min_case"], **{
                    k: t["raw"][k] for k in ("loaded", "stored", "unique_loaded", "unique_stored", "atomic")}}
                    if t else None),
                flops=flops, tensor_op=tensor_unit(facts), mufu=dyn.get("MUFU", 0.0),
                cubin=meta["cubin"], spec_key=meta["key"]))
        _bounds(records, spec, [r for r in records if r["case"] == case])
    return records


def _bounds(all_records, spec, case_records):
    """Fill the three bounds of a case's records; FLOPs shared within a pass by instructions."""
    by_pass = {}
    for r in case_records:
        by_pass.setdefault(r["mode"], []).append(r)
    for rs in by_pass.values():
        # instructions of one config per autotuned call (the first kept) define the shares
        firsts = {}
        for r in rs:
            firsts.setdefault(r["group"], r)
        total_instr = sum(r["instructions"] for r in firsts.values()) or 1
        shares = {g: r["instructions"] / total_instr for g, r in firsts.items()}
        # The scaled counts come from other shapes; the pass still moves at least its minimum.
        counted = sum(r["bytes_actual"] if r["bytes_actual"] is not None else r["bytes_min"] * shares[g]
                      for g, r in firsts.items())
        floor = max(1.0, rs[0]["bytes_min"] / counted) if counted else 1.0
        for r in rs:
            share = shares[r["group"]]
            moved = (r["bytes_actual"] if r["bytes_actual"] is not None else r["bytes_min"] * share) * floor
            b = model.bounds(spec, moved, r["flops"] * share, r["instructions"], r["mufu"], r["tensor_op"],
                             r["grid"], r["blocks_per_sm"])
            r.update(memory_bound_us=round(b.memory_us, 3), math_bound_us=round(b.math_us, 3),
                     issue_bound_us=round(b.issue_us, 3), launch_us=b.launch_us,
                     predicted_us=round(b.predicted_us, 3), bound=b.bound)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_perf(ops, quick=False, archs=("sm_90a", "sm_80"), out=None, dtypes=("bfloat16",), cuda=True,
             progress=True, log=print, merge=False) -> list[dict]:
    """Model ``ops`` (all when empty) and write OUT/perf.json; ``merge`` keeps an existing
    OUT/perf.json's records and errors of the other ops (returns only this run's records)."""
    import torch
    from tqdm import tqdm

    from dlkern.perf import report
    from dlkern.perf.launches import enumerate_launches, perf_ops

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise ValueError("dlkern perf compiles for the GPU: unset TRITON_INTERPRET (it selects the interpreter's "
                         "launch configurations)")
    start = time.monotonic()
    registered = perf_ops()
    unknown = [n for n in ops if n not in registered]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(map(repr, unknown))}; registered: {', '.join(registered)}")
    bad = [a for a in archs if a not in model.ARCHS]
    if bad:
        raise ValueError(f"unknown arch(s) {', '.join(bad)}; known: {', '.join(model.ARCHS)}")
    selected = [registered[n] for n in (ops or registered)]
    errors, records = [], []
    counted = {}
    for dtype in dtypes:
        counted[dtype] = traffic([op.name for op in selected], dtype, log)
    total = 0
    for arch in archs:
        for dtype in dtypes:
            for op in selected:
                total += sum(len(ls) for _, _, _, ls in enumerate_launches(op, getattr(torch, dtype), quick, arch))
    bar = tqdm(total=total, desc="compiling Triton launches", unit="kernel", disable=not progress)
    for arch in archs:
        for dtype in dtypes:
            for op in selected:
                bar.set_postfix_str(f"{arch} {op.name}")
                records += _finish(triton_records(op, getattr(torch, dtype), quick, arch, bar, errors,
                                                  counted[dtype].get(op.name)), arch)
    bar.close()
    if cuda:
        from dlkern.perf import cuda as cuda_side
        for arch in archs:
            records += _finish(cuda_side.records([op.name for op in selected], dtypes, quick, arch, errors,
                                                 progress=progress, log=log), arch)
    meta = {"what": "dlkern perf: a static performance model. Every time and percentage is PREDICTED "
                    "from compiled machine code, never measured.",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick, "archs": list(archs),
            "dtypes": list(dtypes), "ceilings": {a: model.ARCHS[a].__dict__ for a in archs},
            "launch_us": model.LAUNCH_US, "errors": [list(e) for e in errors],
            "duration_s": round(time.monotonic() - start, 1)}
    if out is not None:
        kept, kept_errors = _kept(Path(out), {op.name for op in selected}) if merge else ([], [])
        if merge:
            meta["errors"] += kept_errors
            meta["merged"] = f"{len(kept)} records of other ops kept from the previous perf.json"
        report.write(kept + records, meta, Path(out))
    return records


def _kept(out: Path, rerun: set) -> tuple[list, list]:
    """The records and errors of ops outside ``rerun`` in OUT/perf.json (or its .gz), if any."""
    from dlkern.perf import report
    if not (out / "perf.json").exists() and not (out / "perf.json.gz").exists():
        return [], []
    old = report.load(out / "perf.json")
    return ([r for r in old["records"] if r["op"] not in rerun],
            [e for e in old["meta"].get("errors", []) if e[0] not in rerun])
