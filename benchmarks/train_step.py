"""End-to-end training-step time of the model zoo (issue #9): each model at its default config and
batch size on its task; one step = forward + backward + optimizer step, for three providers:

* ``kernels``: dlkern's default backend (on CUDA tensors: the Triton/CUDA kernels and the
  multi-tensor optimizer kernel),
* ``eager``: the same model on the reference backend (torch's ops and torch's optimizer step),
* ``compile``: the reference model under ``torch.compile`` (inductor).

Prints steps/s and samples/s with the ratios to eager and compile, and writes
benchmarks/results/<stamp>_train_step_<device>.json. On CPU ``kernels`` is the CPU default path
(the reference, plus the selective scan's C++ kernel), so the numbers mean most on a GPU.

    python benchmarks/train_step.py [--device cuda] [--models gpt mamba ...] [--no-compile]
"""
import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

import dlkern  # noqa: E402
from dlkern.bench import timeit  # noqa: E402
from dlkern.models import create_model, get_entry, get_task, list_models  # noqa: E402
from dlkern.train import make_optimizer  # noqa: E402

PROVIDERS = {"kernels": ("auto", False), "eager": ("reference", False), "compile": ("reference", True)}


def train_step(name, device, backend, compiled):
    """A closure running one training step of ``name`` (fixed batch) on ``backend``."""
    entry = get_entry(name)
    task = get_task(entry.task)
    torch.manual_seed(0)
    model = create_model(name).to(device).train()
    optimizer = make_optimizer(model, entry.train, backend)
    net = torch.compile(model) if compiled else model
    batch = task.batch_for_step(0, 0, entry.train.batch_size, device)

    def step():
        with dlkern.use_backend(backend):
            loss = task.loss(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step, entry.train.batch_size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list_models(), metavar="NAME")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = {}
    for name in args.models:
        rows[name] = {}
        for provider, (backend, compiled) in PROVIDERS.items():
            if compiled and args.no_compile:
                continue
            try:
                step, batch = train_step(name, device, backend, compiled)
                ms, p20, p80 = timeit(step, device)
            except Exception as exc:  # a provider that cannot run is reported, the others still run
                rows[name][provider] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                print(f"{name:13s} {provider:8s} FAILED {rows[name][provider]['error']}", flush=True)
                continue
            rows[name][provider] = {"ms": ms, "ms_p20": p20, "ms_p80": p80, "samples_per_s": batch * 1e3 / ms}
            print(f"{name:13s} {provider:8s} {ms:9.2f} ms/step  {batch * 1e3 / ms:10.0f} samples/s", flush=True)
        ours = rows[name].get("kernels", {}).get("ms")
        for other in ("eager", "compile"):
            if ours and "ms" in rows[name].get(other, {}):
                rows[name][f"speedup vs {other}"] = rows[name][other]["ms"] / ours
                print(f"{name:13s} kernels vs {other}: {rows[name][f'speedup vs {other}']:.2f}x", flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {"benchmark": "train_step", "device": gpu or platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "date_utc": stamp, "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}_train_step_{device.type}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    failed = [f"{m}/{p}" for m, r in rows.items() for p, v in r.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
