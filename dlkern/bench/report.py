"""Benchmark results as an aligned table, CSV + JSON files (with the run's metadata) and PNG plots.

Plots are drawn from the files, not from a live run, so a committed result can be re-plotted later:
``python benchmarks/plot.py benchmarks/results/<stamp>_<device>.json``.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from dlkern.bench.harness import COLUMNS, Row

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------
def dlkern_version() -> str:
    try:
        from importlib.metadata import version
        return version("dlkern")
    except Exception:  # not installed: running from a checkout
        import dlkern
        return getattr(dlkern, "__version__", "unknown")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict:
    import torch
    from dlkern import _ext
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": None if _ext.triton_import_error() else __import__("triton").__version__,
        "dlkern": dlkern_version(),
    }


def machine_load() -> dict:
    """The machine's load as a run starts: other processes' work distorts CPU timings."""
    load1, load5, _ = os.getloadavg()
    return {"loadavg_1min": round(load1, 2), "loadavg_5min": round(load5, 2), "cores": os.cpu_count()}


def metadata(device, ceilings=None, argv=None, load=None) -> dict:
    import torch
    from dlkern.bench.harness import cpu_clock
    return {
        "device": ceilings.device if ceilings else str(device),
        "device_type": str(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        **versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "dlkern_backend": os.environ.get("DLKERN_BACKEND", "auto"),
        "argv": list(sys.argv if argv is None else argv),
        "ceilings": dataclasses.asdict(ceilings) if ceilings else None,
        "intra_op_threads": torch.get_num_threads(),
        "cpu_clock": cpu_clock()[1] if str(device).startswith("cpu") else None,
        "load_at_start": load if load is not None else machine_load(),
    }


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
def _num(x, digits=3) -> str:
    if x is None or x == "":
        return "-"
    x = float(x)
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def _table_order(rows: list[Row]) -> list[Row]:
    """Per (op, case, dtype): the providers that ran, grouped by mode; then one line per provider
    that did not run, its modes merged (the reason is the same in every mode)."""
    from dlkern.bench.harness import MODES

    out = []
    for key in dict.fromkeys((r.op, r.case, r.dtype) for r in rows):
        block = [r for r in rows if (r.op, r.case, r.dtype) == key]
        providers = list(dict.fromkeys(r.provider for r in block))
        modes = list(dict.fromkeys(r.mode for r in block))
        ran = [r for r in block if r.ms is not None]
        out += sorted(ran, key=lambda r: (MODES.index(r.mode), providers.index(r.provider)))
        idle = {}
        for r in block:
            if r.ms is None:
                idle.setdefault((r.provider, r.numerics), []).append(r)
        for group in idle.values():
            label = "all" if len(group) == len(modes) > 1 else ",".join(r.mode for r in group)
            out.append(dataclasses.replace(group[0], mode=label))
    return out


def format_table(rows: list[Row], width: int = 70) -> str:
    """Aligned lines (see :func:`_table_order`); long reasons are cut to ``width`` (the files keep
    them whole)."""
    head = ("op", "case", "dtype", "mode", "provider", "ms", "p20-p80", "GB/s", "TFLOP/s",
            "%roof", "speedup", "numerics")
    lines = [head]
    noisy_base = {(r.op, r.case, r.dtype, r.mode) for r in rows if r.provider == "torch" and r.noisy}
    for r in _table_order(rows):
        # "~": the spread is too wide for the ratio (see harness.NOISY_SPREAD)
        spread = f"{_num(r.ms_p20)}-{_num(r.ms_p80)}" + ("~" if r.noisy else "") if r.ms else "-"
        unsupported = r.noisy or (r.op, r.case, r.dtype, r.mode) in noisy_base
        status = r.numerics if len(r.numerics) <= width else r.numerics[:width - 1] + "…"
        lines.append((r.op, r.case, r.dtype, r.mode, r.provider, _num(r.ms, 4), spread,
                      _num(r.gbps, 4), _num(r.tflops), _num(r.roofline_pct),
                      _num(r.speedup_vs_torch) + ("x?" if unsupported else "x") if r.speedup_vs_torch else "-",
                      status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {5, 6, 7, 8, 9, 10}  # numbers align right
    out = []
    for k, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def write(rows: list[Row], meta: dict, out_dir) -> tuple[Path, Path]:
    """``<out_dir>/<stamp>_<device>.csv`` and ``.json``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"{stamp}_{_slug(meta['device'])}"
    records = [{c: getattr(r, c) for c in COLUMNS} for r in rows]
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in rec.items()} for rec in records)
    with open(base.with_suffix(".json"), "w") as f:
        json.dump({"meta": meta, "columns": list(COLUMNS), "rows": records}, f, indent=1)
    return base.with_suffix(".csv"), base.with_suffix(".json")


def load(path) -> tuple[dict, list[dict]]:
    """(meta, rows) from a result file written by :func:`write`; a CSV file takes its metadata
    from the JSON file beside it, if there is one."""
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data.get("meta", {}), data["rows"]
    sibling = path.with_suffix(".json")
    meta = json.loads(sibling.read_text()).get("meta", {}) if sibling.exists() else {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("ms", "ms_p20", "ms_p80", "gbps", "tflops", "roofline_pct", "speedup_vs_torch",
                  "max_err", "tol", "bytes", "flops"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    return meta, rows


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def plot(path, out_dir=None) -> list[Path]:
    """One PNG per op × mode: GB/s (or ms when the op has no byte count) per case, one bar per
    provider, one panel per dtype. Returns the files written (next to ``path`` by default)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    meta, rows = load(path)
    out_dir = Path(out_dir) if out_dir else path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    timed = [r for r in rows if r.get("ms")]
    written = []
    for op, mode in sorted({(r["op"], r["mode"]) for r in timed}):
        sel = [r for r in timed if r["op"] == op and r["mode"] == mode]
        use_bw = all(r.get("gbps") for r in sel)
        metric, label = ("gbps", "GB/s (higher is better)") if use_bw else ("ms", "ms (lower is better)")
        dtypes = sorted({r["dtype"] for r in sel})
        fig, axes = plt.subplots(1, len(dtypes), figsize=(5 + 2.5 * len(dtypes), 4), squeeze=False)
        for ax, dtype in zip(axes[0], dtypes):
            part = [r for r in sel if r["dtype"] == dtype]
            cases = list(dict.fromkeys(r["case"] for r in part))
            providers = list(dict.fromkeys(r["provider"] for r in part))
            width = 0.8 / len(providers)
            for j, prov in enumerate(providers):
                vals = {r["case"]: r[metric] for r in part if r["provider"] == prov}
                xs = [i + j * width for i, c in enumerate(cases) if c in vals]
                ax.bar(xs, [vals[c] for c in cases if c in vals], width, label=prov)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, rotation=30,
                          ha="right", fontsize=8)
            ax.set_title(dtype, fontsize=9)
            ax.set_ylabel(label)
            if use_bw and meta.get("ceilings"):
                ax.axhline(meta["ceilings"]["copy_gbps"], color="gray", ls="--", lw=1, label="copy")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(" — ".join(filter(None, (f"{op} {mode}", meta.get("device")))), fontsize=10)
        fig.tight_layout()
        target = out_dir / f"{path.stem}_{op}_{mode.replace('+', '_')}.png"
        fig.savefig(target, dpi=110)
        plt.close(fig)
        written.append(target)
    return written
