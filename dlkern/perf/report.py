"""Files and tables of a ``dlkern perf`` run: perf.json, perf.csv, perf.png, the terminal table and
the README block. Every number shown is labelled *predicted*."""
from __future__ import annotations

import csv
import json
from pathlib import Path

CSV_COLUMNS = ("op", "case", "dtype", "arch", "backend", "mode", "kernel", "config", "picked", "registers",
               "spill_bytes", "shared_bytes", "blocks_per_sm", "waves", "instructions_per_element", "bytes_min",
               "bytes_actual", "flops", "memory_bound_us", "math_bound_us", "issue_bound_us", "predicted_us",
               "bound", "predicted_pct_roofline", "cubin")
README_BEGIN = "<!-- dlkern perf --readme: begin (generated from benchmarks/results/perf/perf.json.gz) -->"
README_END = "<!-- dlkern perf --readme: end -->"


def write(records, meta, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "perf.json", "csv": out / "perf.csv", "png": out / "perf.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "records": records}, separators=(",", ":"), default=str))
    with open(paths["csv"], "w", newline="") as f:  # launched kernels (perf.json also has every CUDA instance)
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in (r for r in records if r.get("launched", True)):
            w.writerow([json.dumps(r.get(c)) if isinstance(r.get(c), (dict, list)) else r.get(c) for c in CSV_COLUMNS])
    try:
        plot(records, paths["png"])
    except ImportError:  # matplotlib is a bench extra
        paths.pop("png")
    return paths


def pass_rows(records, arch="sm_90a"):
    """One row per (op, case, dtype, mode, backend): the picked configs' predicted pass time."""
    rows = {}
    for r in records:
        if r["arch"] != arch or not r.get("picked"):
            continue
        key = (r["op"], r["case"], r["dtype"], r["mode"], r["backend"])
        row = rows.setdefault(key, {"op": r["op"], "case": r["case"], "dtype": r["dtype"], "mode": r["mode"],
                                    "backend": r["backend"], "kernels": [], "predicted_us": r["pass_predicted_us"],
                                    "pct": r["predicted_pct_roofline"], "bound": [], "peer": r.get("peer")})
        row["kernels"].append(r["kernel"])
        row["bound"].append(r["bound"])
    return list(rows.values())


def format_table(records, arch="sm_90a") -> str:
    rows = pass_rows(records, arch)
    head = f"{'op':30} {'case':34} {'mode':5} {'backend':7} {'pred. µs':>10} {'pred. % roofline':>17}  bound / peer"
    lines = [f"PREDICTED on {arch} (static model, no GPU)", head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["op"], r["case"], r["mode"], r["backend"])):
        peer = f"  {r['peer']['ratio']:.2f}x {r['peer']['name']}" if r.get("peer") else ""
        lines.append(f"{r['op'][:30]:30} {r['case'][:34]:34} {r['mode']:5} {r['backend']:7} "
                     f"{r['predicted_us']:10.1f} {r['pct'] or 0:16.1f}%  {'+'.join(sorted(set(r['bound'])))}{peer}")
    return "\n".join(lines)


def summary(records, arch="sm_90a") -> dict:
    """(op, mode, backend) -> median predicted % of roofline over its cases."""
    groups = {}
    for r in pass_rows(records, arch):
        if r["pct"] is not None:
            groups.setdefault((r["op"], r["mode"], r["backend"]), []).append(r["pct"])
    return {k: sorted(v)[len(v) // 2] for k, v in sorted(groups.items())}


def plot(records, path: Path, arch="sm_90a"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(records, arch)
    labels = sorted({f"{op} {mode}" for op, mode, _ in s})
    fig, ax = plt.subplots(figsize=(10, max(4, 0.28 * len(labels))))
    for i, backend in enumerate(("triton", "cuda")):
        vals = [s.get((lab.rsplit(" ", 1)[0], lab.rsplit(" ", 1)[1], backend), 0) for lab in labels]
        ax.barh([y + (i - 0.5) * 0.4 for y in range(len(labels))], vals, height=0.4, label=backend)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("PREDICTED % of roofline (median over bench cases; static model, not measured)")
    ax.set_title(f"dlkern perf: predicted % of roofline on {arch}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def readme_block(data: dict, arch="sm_90a") -> str:
    """The README section body, from a perf.json's contents."""
    records, meta = data["records"], data["meta"]
    s = summary(records, arch)
    ops = sorted({(op, mode) for op, mode, _ in s})
    c = meta["ceilings"][arch]
    lines = [README_BEGIN,
             f"Predicted by `dlkern perf` on {meta['date'][:10]} for {c['device']}, {arch}: "
             f"{c['bandwidth'] / 1e12:.1f} TB/s, {c['tensor_flops'] / 1e12:.0f} TFLOP/s bf16, {c['sms']} SMs at "
             f"{c['clock_hz'] / 1e9:.2f} GHz, {meta['launch_us']:.0f} µs launch floor; bf16, the median over "
             "each op's bench cases of roofline time / predicted time. **Predicted from the compiled SASS, "
             "not measured**: the prediction is the largest of the lower bounds, so it is an upper bound on "
             "speed, and 100 % means that no bound above the op's roofline was found.", "",
             "| op | pass | Triton % roofline | CUDA % roofline |", "|---|---|---|---|"]
    for op, mode in ops:
        t, cu = s.get((op, mode, "triton")), s.get((op, mode, "cuda"))
        lines.append(f"| `{op}` | {mode} | {'—' if t is None else f'{t:.0f} %'} | {'—' if cu is None else f'{cu:.0f} %'} |")
    lines += ["", "Not modelled: caches (re-reads are charged once, at DRAM), latency hiding and memory-level "
              "parallelism, clocks under load, shared-memory bank conflicts, dependency stalls.",
              README_END]
    return "\n".join(lines)


def load(path: Path) -> dict:
    """A perf.json, or the gzipped copy committed under benchmarks/results/perf."""
    import gzip
    path = Path(path)
    if not path.exists() and path.with_suffix(".json.gz").exists():
        path = path.with_suffix(".json.gz")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def update_readme(readme: Path, perf_json: Path) -> str:
    """Rewrite the marked block of ``readme`` (append the section if it has none); returns the block."""
    block = readme_block(load(perf_json))
    text = readme.read_text()
    if README_BEGIN in text and README_END in text:
        a, b = text.index(README_BEGIN), text.index(README_END) + len(README_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n## Predicted performance (no GPU)\n\n" + block + "\n"
    readme.write_text(text)
    return block
