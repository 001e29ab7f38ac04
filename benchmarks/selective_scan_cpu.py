"""CPU benchmark of the selective scan (issue #7): forward+backward at (batch 2, dim 256, L 2048,
N 16) fp32 for dlkern's default CPU path, the sequential reference (the oracle) and a log-depth
parallel scan in plain PyTorch (dlkern.bench.baselines). Prints the times and the ratios and
writes them to benchmarks/results/<stamp>_selective_scan_cpu.json.

    python benchmarks/selective_scan_cpu.py [--threads 1] [--shape 2 256 2048 16]
"""
import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dlkern.bench import timeit  # noqa: E402
from dlkern.bench.baselines import selective_scan_logdepth  # noqa: E402
from dlkern.ops.selective_scan import make_inputs, selective_scan, selective_scan_ref  # noqa: E402

PROVIDERS = {"dlkern (default CPU path)": selective_scan, "sequential reference": selective_scan_ref,
             "torch log-depth scan": selective_scan_logdepth}


def fwd_bwd(fn, args):
    leaves = [a.detach().requires_grad_(True) for a in args]
    cot = torch.randn(args[0].shape)

    def run():
        out = fn(*leaves, delta_softplus=True)
        return torch.autograd.grad(out, leaves, cot)
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--shape", type=int, nargs=4, default=(2, 256, 2048, 16), metavar=("B", "D", "L", "N"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = make_inputs(*args.shape)
    rows = {}
    for name, fn in PROVIDERS.items():
        ms, p20, p80 = timeit(fwd_bwd(fn, inputs), torch.device("cpu"))
        rows[name] = {"ms": ms, "ms_p20": p20, "ms_p80": p80}
        print(f"{name:28s} fwd+bwd {ms:10.1f} ms  (p20 {p20:.1f}, p80 {p80:.1f})", flush=True)
    ours = rows["dlkern (default CPU path)"]["ms"]
    ratios = {f"speedup vs {k}": v["ms"] / ours for k, v in rows.items() if not k.startswith("dlkern")}
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    result = {"op": "selective_scan", "mode": "fwd+bwd", "dtype": "float32", "shape_BDLN": list(args.shape),
              "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "date_utc": stamp, "providers": rows, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}_selective_scan_cpu_{args.threads}t.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
