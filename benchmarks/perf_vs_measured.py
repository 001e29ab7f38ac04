"""Measured (``dlkern bench`` on a GPU) against predicted (``dlkern perf``), per bench case.

    python benchmarks/perf_vs_measured.py BENCH.json PERF.json [--arch sm_90a] [--out FILE.csv]

Joins the bench rows of the triton and cuda providers (fwd, bwd, and the optimizer step, which
the bench times as fwd) with the perf model's pass predictions (the picked configs) on the same
op, case, dtype and mode, and writes measured_us, predicted_us and measured / predicted. Prints the
median and the spread of that ratio: the model's error (it predicts a lower bound, so ratios are
expected to be >= 1; how much above 1 is what the model misses)."""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlkern.bench.report import load  # noqa: E402
from dlkern.perf.report import pass_rows  # noqa: E402


def join(bench_rows, perf_records, arch):
    predicted = {(r["op"], r["case"], r["dtype"], "fwd" if r["mode"] == "step" else r["mode"], r["backend"]): r
                 for r in pass_rows(perf_records, arch)}
    out = []
    for b in bench_rows:
        p = predicted.get((b["op"], b["case"], b["dtype"], b["mode"], b["provider"]))
        if p is None or not b.get("ms"):
            continue
        measured = float(b["ms"]) * 1e3
        out.append({"op": b["op"], "case": b["case"], "dtype": b["dtype"], "mode": b["mode"], "backend": b["provider"],
                    "measured_us": round(measured, 2), "predicted_us": p["predicted_us"],
                    "measured_over_predicted": round(measured / p["predicted_us"], 3),
                    "predicted_pct_roofline": p["pct"], "kernels": "+".join(p["kernels"])})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench")
    ap.add_argument("perf")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    _, bench_rows = load(args.bench)
    rows = join(bench_rows, json.loads(Path(args.perf).read_text())["records"], args.arch)
    out = Path(args.out) if args.out else Path(args.perf).with_name("perf_vs_measured.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["op"])
        w.writeheader()
        w.writerows(rows)
    ratios = [r["measured_over_predicted"] for r in rows]
    if ratios:
        q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else [ratios[0]] * 9
        print(f"{len(rows)} cases: measured / predicted median {statistics.median(ratios):.2f}, "
              f"p10 {q[0]:.2f}, p90 {q[-1]:.2f}; wrote {out}")
    else:
        print(f"no bench row matched a perf prediction; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
