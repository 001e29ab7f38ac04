"""``dlkern info | bench | validate | perf | train``.

* ``info``: versions, device, compiled parts, backend, and per op × backend whether it can run here.
* ``bench``: the one harness over the registry; exits 1 if any provider's numerics FAIL, so
  ``dlkern bench --quick`` also verifies every op on its benchmark shapes.
* ``validate``: the one-command GPU check: the whole test suite, then the full benchmark, into one
  results folder with a ``summary.json`` (``benchmarks/gpu_validate.sh`` wraps it).
* ``perf``: a static GPU performance model of every kernel as it launches (no GPU; ``dlkern.perf``).
* ``train``: a model of the zoo on its embedded task (``dlkern.train``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
REPO = Path(__file__).resolve().parents[1]
# A user's results go to a folder of the user's, under the current directory; the committed ones in
# benchmarks/results/ only when asked (--out benchmarks/results).
DEFAULT_OUT = Path("dlkern-results")


class UsageError(Exception):
    """A bad command line: printed as ``dlkern <cmd>: error: ...`` with exit status 2."""


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------
def gpu_status() -> tuple[bool, str]:
    """(available, GPU name or the reason there is none)."""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    try:
        torch.cuda.init()
    except Exception as exc:  # the driver's own words say best why
        return False, str(exc).strip().splitlines()[0]
    return False, "torch.cuda.is_available() is False"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def op_status(op, device: torch.device) -> dict[str, str]:
    """backend -> "ok" or why it cannot serve the op's first sample input on ``device``."""
    from dlkern import backend

    dtype = torch.float32 if torch.float32 in op.dtypes else op.dtypes[0]
    sample = next(iter(op.samples(device, dtype)), None) or next(iter(op.bench_cases(device, dtype, True)), None)
    status = {}
    for name in ("reference",) + backend.KERNEL_BACKENDS:
        try:
            if sample is not None:
                reasons = backend.reasons_against(op, name, sample.args, sample.kwargs)
            elif name not in op.backends and name != "reference":
                reasons = [f"{op.name} has no {name} implementation"]
            else:
                reasons = backend.availability(name, device)
        except Exception as exc:  # info must describe a broken install, not die of it
            reasons = [f"could not check: {type(exc).__name__}: {exc}"]
        status[name] = "ok" if not reasons else "; ".join(reasons)
    return status


def info_dict() -> dict:
    import dlkern
    from dlkern import _ext, backend
    from dlkern.bench.report import versions

    has_gpu, gpu = gpu_status()
    try:
        interpret = "on" if backend.triton_interpreter_enabled() else "off"
    except Exception as exc:
        interpret = f"unknown ({type(exc).__name__}: {exc})"
    device = default_device()
    return {
        "versions": versions(),
        "device": gpu if has_gpu else f"no GPU: {gpu}",
        "dlkern._C": ("built; CUDA kernels usable" if _ext.cuda_module() is not None else
                      f"built; CUDA kernels not usable: {_ext.cuda_unavailable_reason()}"
                      if _ext.cuda_built() else f"not built: {_ext.cuda_unavailable_reason()}"),
        "dlkern._C_emu": ("built" if _ext.emu_module() is not None else _ext.emu_unavailable_reason())
                         + f" (DLKERN_CUDA_EMULATE={os.environ.get('DLKERN_CUDA_EMULATE', '0')})",
        "dlkern._C_cpu": ("built (CPU kernels: the selective scan's default CPU path)"
                          if _ext.cpu_module() is not None else _ext.cpu_unavailable_reason()),
        "TRITON_INTERPRET": f"{os.environ.get('TRITON_INTERPRET', '0')} (interpreter for CPU tensors: {interpret})",
        "backend": f"{dlkern.get_backend()} (DLKERN_BACKEND={os.environ.get('DLKERN_BACKEND', '')!r}"
                   + (f": {backend.env_problem})" if backend.env_problem else ")"),
        "ops_device": str(device),
        "ops": {op.name: op_status(op, device) for op in dlkern.all_ops()},
    }


def print_info(info: dict) -> None:
    v = info["versions"]
    print(f"dlkern {v['dlkern']}  python {v['python']}  torch {v['torch']} (CUDA {v['cuda']})  "
          f"triton {v['triton']}")
    for key in ("device", "dlkern._C", "dlkern._C_emu", "dlkern._C_cpu", "TRITON_INTERPRET", "backend"):
        print(f"{key + ':':18}{info[key]}")
    print(f"\nops on {info['ops_device']} (each op's first sample input):")
    width = max((len(name) for name in info["ops"]), default=0)
    for name, status in info["ops"].items():
        for i, (be, text) in enumerate(status.items()):
            print(f"  {name if i == 0 else '':{width}}  {be:9}  {text}")


def markdown_table() -> str:
    """The README's op table, from the registry: which backends each op implements."""
    import dlkern
    from dlkern import backend

    head = ["op", "family", "reference", *backend.KERNEL_BACKENDS, "torch equivalent", "peers", "dtypes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in dlkern.all_ops():
        torch_eq = op.torch_equivalent
        eq = f"`{torch_eq.__module__}.{torch_eq.__name__}`" if torch_eq is not None else "—"
        cells = [f"`{op.name}`", op.family or "—", "✓",
                 *("✓" if b in op.backends else "—" for b in backend.KERNEL_BACKENDS), eq,
                 ", ".join(sorted(op.peers)) or "—",
                 ", ".join(str(d).removeprefix("torch.") for d in op.dtypes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_info(args) -> int:
    if args.markdown_table:
        print(markdown_table())
    elif args.json:
        print(json.dumps(info_dict(), indent=1))
    else:
        print_info(info_dict())
    return 0


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
def resolve(args):
    """(ops, device, dtypes, modes, providers) from the bench options, or UsageError."""
    import dlkern
    from dlkern.bench.harness import BUILTIN_PROVIDERS, MODES
    from dlkern.bench.optim import STEPS

    registered = {op.name: op for op in [*dlkern.all_ops(), *STEPS]}  # ops, then optimizer steps
    unknown = [n for n in args.ops if n not in registered]
    if unknown:
        raise UsageError(f"unknown op{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"registered ops: {', '.join(registered)}")
    ops = [registered[n] for n in args.ops] if args.ops else list(registered.values())
    has_gpu, why = gpu_status()
    device = torch.device(args.device or ("cuda" if has_gpu else "cpu"))
    if device.type == "cuda" and not has_gpu:
        raise UsageError(f"--device cuda, but there is no GPU: {why}")
    if args.dtype:
        dtypes = list(dict.fromkeys(DTYPES[d] for d in args.dtype))
    else:  # CPU: float32 only (half precision on CPU times nothing anyone runs)
        dtypes = [torch.bfloat16] if device.type == "cuda" else [torch.float32]
    modes = list(MODES) if args.mode == "all" else [args.mode]
    providers = None
    if args.providers:
        known = set(BUILTIN_PROVIDERS) | {p for op in ops for p in op.peers}
        bad = [p for p in args.providers if p not in known]
        if bad:
            raise UsageError(f"unknown provider(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        providers = list(args.providers)
    return ops, device, dtypes, modes, providers


def bench(args, out_dir, budget_s=None, plot=True):
    """Run the harness and write the files; returns (rows, csv_path, json_path, pngs, ceilings)."""
    from dlkern.bench import harness, report, roofline

    ops, device, dtypes, modes, providers = resolve(args)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        set_bench_threads(args.threads)
    try:
        return _bench(args, out_dir, budget_s, plot, ops, device, dtypes, modes, providers)
    finally:
        torch.set_num_threads(threads_before)


def _bench(args, out_dir, budget_s, plot, ops, device, dtypes, modes, providers):
    from dlkern.bench import harness, report, roofline

    load = report.machine_load()
    ceilings = roofline.measure(device, args.quick)
    print(ceilings.describe(), flush=True)
    if device.type == "cpu":
        print(f"CPU timing: {harness.cpu_clock()[1]}, providers interleaved; load at start "
              f"{load['loadavg_1min']} on {load['cores']} cores", flush=True)
    rows = harness.run(ops, device, dtypes, modes, providers, args.quick, ceilings, budget_s,
                       progress=None)
    print(report.format_table(rows), flush=True)
    csv_path, json_path = report.write(rows, report.metadata(device, ceilings, load=load), out_dir)
    pngs = report.plot(json_path) if plot else []
    fails = [r for r in rows if r.failed]
    counts = {k: sum(r.numerics.startswith(k) for r in rows) for k in ("ok", "FAIL", "unavailable", "skipped")}
    print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; wrote {csv_path} and {json_path}"
          + (f" and {len(pngs)} plots" if pngs else ""))
    noisy = [r for r in rows if r.noisy]
    if noisy:
        print(f"{len(noisy)} of {sum(1 for r in rows if r.ms)} timed rows are noisy (p20-p80 spread over "
              f"{harness.NOISY_SPREAD:.0%} of the median, marked ~; their ratios, marked x?, are not "
              f"supported): the machine's load was {load['loadavg_1min']} on {load['cores']} cores at the start")
    for r in fails:
        print(f"FAIL {r.op} {r.case} {r.dtype} {r.mode} {r.provider}: {r.numerics}", file=sys.stderr)
    return rows, csv_path, json_path, pngs, ceilings


def set_bench_threads(threads) -> None:
    """CPU benchmarks run on one intra-op thread unless the user chose (``--threads``,
    ``OMP_NUM_THREADS``): ratios are measured one thread, interleaved (on CPU time, which another
    process's load does not inflate), and torch's default of one thread per core is the setting
    that a busy machine distorts most."""
    from dlkern.threads import user_thread_count

    wanted = user_thread_count(threads)
    if wanted == "auto":
        torch.set_num_threads(1)
    elif wanted is not None:
        torch.set_num_threads(wanted)


def cmd_bench(args) -> int:
    rows = bench(args, args.out, args.budget_s, plot=not args.no_plot)[0]
    return 1 if any(r.failed for r in rows) else 0


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def run_pytest(pytest_args: list[str], log_path: Path, timeout_s: float, workers: int) -> dict:
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        result = _pytest(pytest_args, junit, log_path, timeout_s, workers)
        if junit.exists():
            root = ET.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root)
            for key in ("tests", "failures", "errors", "skipped"):
                result[key] = sum(int(s.get(key, 0)) for s in suites)
            result["failed_tests"] = [f"{case.get('classname')}::{case.get('name')}"
                                      for case in root.iter("testcase")
                                      if case.find("failure") is not None or case.find("error") is not None][:100]
    return result


def _pytest(pytest_args, junit, log_path, timeout_s, workers) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", f"--junitxml={junit}", *pytest_args]
    if workers > 1:
        try:
            import xdist  # noqa: F401
            cmd += ["-n", str(workers)]
        except ImportError:
            pass
    start = time.monotonic()
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        # A session of its own, so a timeout ends the xdist workers too, not only pytest.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, timed_out = proc.wait(), True
    return {"rc": rc, "timed_out": timed_out, "duration_s": round(time.monotonic() - start, 1),
            "log": log_path.name, "command": shlex.join(cmd)}


def kernel_summary(rows) -> dict:
    """Per op/dtype/mode/provider: geometric-mean speedup vs torch eager over the cases, best %
    of roofline and best GB/s, for every provider but the reference and torch eager (the baseline)."""
    import math

    groups = {}
    for r in rows:
        if r.ms and r.numerics == "ok" and r.provider not in ("reference", "torch"):
            groups.setdefault(f"{r.op}/{r.dtype}/{r.mode}/{r.provider}", []).append(r)
    summary = {}
    for key, rs in sorted(groups.items()):
        speedups = [r.speedup_vs_torch for r in rs if r.speedup_vs_torch]
        summary[key] = {
            "cases": len(rs),
            "speedup_vs_torch_geomean": round(math.exp(sum(map(math.log, speedups)) / len(speedups)), 3)
            if speedups else None,
            "best_roofline_pct": round(max((r.roofline_pct or 0) for r in rs), 1),
            "best_gbps": round(max((r.gbps or 0) for r in rs), 1),
        }
    return summary


def cmd_validate(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
               "budget_s": args.budget_s, "info": info_dict()}
    if args.build_rc is not None:
        summary["build"] = {"rc": args.build_rc, "log": args.build_log, "duration_s": args.build_s}
    print(f"[validate] pytest -> {out / 'pytest.log'}", flush=True)
    summary["pytest"] = run_pytest(shlex.split(args.pytest_args), out / "pytest.log",
                                   args.pytest_share * args.budget_s, args.workers)
    print(f"[validate] pytest: {json.dumps({k: v for k, v in summary['pytest'].items() if k != 'failed_tests'})}",
          flush=True)
    # The benchmark gets what is left, less a margin for the last measurement and the files.
    left = args.budget_s - (time.monotonic() - start) - 30
    bench_start = time.monotonic()
    try:
        rows, csv_path, json_path, _, ceilings = bench(args, out, budget_s=max(left, 1), plot=False)
        summary["bench"] = {
            "csv": csv_path.name, "json": json_path.name, "rows": len(rows),
            "duration_s": round(time.monotonic() - bench_start, 1),
            "ceilings": ceilings.describe(),
            **{k: sum(r.numerics.startswith(k) for r in rows) for k in ("ok", "unavailable", "skipped")},
            "fail": [f"{r.op} {r.case} {r.dtype} {r.mode} {r.provider}: {r.numerics}" for r in rows if r.failed],
            "kernels": kernel_summary(rows),
        }
    except Exception as exc:  # the summary must still be written
        summary["bench"] = {"error": f"{type(exc).__name__}: {exc}", "fail": ["bench did not run"]}
    p = summary["pytest"]
    summary["ok"] = bool(p["rc"] == 0 and not p["timed_out"] and not summary["bench"]["fail"]
                         and summary.get("build", {}).get("rc", 0) == 0)
    summary["duration_s"] = round(time.monotonic() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[validate] {'OK' if summary['ok'] else 'FAILED'} in {summary['duration_s']} s; "
          f"summary in {out / 'summary.json'}", flush=True)
    return 0 if summary["ok"] else 1


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------
def _bench_threads(text: str) -> int:
    from dlkern.threads import user_thread_count
    try:
        n = user_thread_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if n == "auto":
        raise argparse.ArgumentTypeError("bench takes a thread count (1 is the default on CPU)")
    return n


def add_bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("ops", nargs="*", help="ops to run (default: every registered op)")
    p.add_argument("--quick", action="store_true", help="small cases, short timing")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), metavar="DTYPE",
                   help="float32 | float16 | bfloat16 (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--mode", choices=("fwd", "bwd", "fwd+bwd", "all"), default="all")
    p.add_argument("--providers", nargs="+", metavar="NAME",
                   help="reference torch torch.compile triton cuda and peer names (default: all)")
    p.add_argument("--threads", type=_bench_threads, help="intra-op threads on CPU (default: 1, unless "
                   "OMP_NUM_THREADS is set)")


# ---------------------------------------------------------------------------------------------
# perf
# ---------------------------------------------------------------------------------------------
def cmd_perf(args) -> int:
    from dlkern.perf import report
    from dlkern.perf.pipeline import run_perf

    # --quick models sm_90a alone unless --arch says otherwise (the CI subset; the compile test covers sm_80)
    arch = args.arch or ("sm_90a" if args.quick else "sm_90a,sm_80")
    archs = [a.strip() for a in arch.split(",") if a.strip()]
    out = Path(args.out)
    if args.readme_only:
        if not (out / "perf.json").exists() and not (out / "perf.json.gz").exists():
            raise UsageError(f"--readme-only: no {out / 'perf.json'}; run dlkern perf --out {out} first")
    else:
        dtypes = [str(DTYPES[d]).removeprefix("torch.") for d in (args.dtype or ["bfloat16"])]
        try:
            records = run_perf(args.ops, quick=args.quick, archs=archs, out=out, dtypes=list(dict.fromkeys(dtypes)),
                               cuda=not args.no_cuda, progress=not args.no_progress, merge=args.merge)
        except ValueError as exc:  # unknown op/arch, TRITON_INTERPRET set: the user's to fix
            raise UsageError(str(exc)) from None
        for arch in archs:
            print(report.format_table(records, arch))
        meta = json.loads((out / "perf.json").read_text())["meta"]
        for op, case, message in meta["errors"]:
            print(f"not modelled: {op} {case}: {message}", file=sys.stderr)
        print(f"\n{len(records)} kernel records in {meta['duration_s']} s; wrote {out / 'perf.json'}, "
              f"{out / 'perf.csv'} and {out / 'perf.png'} (all PREDICTED, not measured)")
    if args.readme or args.readme_only:
        report.update_readme(REPO / "README.md", out / "perf.json")
        print(f"rewrote the 'Predicted performance (no GPU)' block of {REPO / 'README.md'}")
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from dlkern.train import add_arguments
    add_arguments(p)


def run_training(args) -> int:
    from dlkern.train import run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlkern", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, compiled parts, per-op backend availability")
    p.add_argument("--markdown-table", action="store_true", help="print the README's op x backend table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="benchmark ops against torch, torch.compile and peers")
    add_bench_options(p)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--budget-s", type=float, help="stop timing after this many seconds (rows say so)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("validate", help="GPU validation: the whole test suite, then the full benchmark")
    add_bench_options(p)
    p.add_argument("--out", required=True, help="results folder for summary.json, pytest.log, CSV, JSON")
    p.add_argument("--budget-s", type=float, default=540, help="total seconds (default: %(default)s)")
    p.add_argument("--pytest-share", type=float, default=0.6, help="share of the budget pytest may use")
    p.add_argument("--pytest-args", default="tests", help="arguments for pytest (default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="pytest-xdist workers when installed")
    p.add_argument("--build-rc", type=int, help="exit status of the build step (recorded in the summary)")
    p.add_argument("--build-log", help="build log file name (recorded in the summary)")
    p.add_argument("--build-s", type=float, help="build duration (recorded in the summary)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("perf", help="static GPU performance model of every launched kernel (PREDICTED, no GPU)")
    p.add_argument("ops", nargs="*", help="ops to model (default: every registered op and optimizer step)")
    p.add_argument("--quick", action="store_true",
                   help="CI subset: the bench's quick cases, the first config each autotuned call keeps, sm_90a")
    p.add_argument("--arch", help="comma-separated targets (default: sm_90a,sm_80; sm_90a with --quick)")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), metavar="DTYPE", help="default: bfloat16")
    p.add_argument("--out", default=str(Path("dlkern-results") / "perf"), help="results folder (default: %(default)s)")
    p.add_argument("--no-cuda", action="store_true", help="model the Triton kernels only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--readme", action="store_true", help="also rewrite the README's predicted-performance block")
    p.add_argument("--readme-only", action="store_true", help="rewrite the README block from OUT/perf.json; run nothing")
    p.add_argument("--merge", action="store_true",
                   help="keep OUT/perf.json's records of the ops not named (replace only the ops run)")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("train", help="train a model of the zoo on its embedded task (no download)")
    add_train_arguments(p)
    p.set_defaults(func=run_training)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"dlkern {args.command}: error: {exc}\n")
