"""``dlkern bench adamw_step``: the optimizer step runs through the one harness (numerics against
the float64 reference for every provider, each on its own copy of the state) and the cost model
counts 28 bytes per fp32 parameter."""
import csv

import pytest
import torch

from dlkern import cli
from dlkern.backend import availability
from dlkern.bench import harness
from dlkern.bench.optim import ADAMW_STEP, _cases

needs_cuda_backend = pytest.mark.skipif(
    bool(availability("cuda", torch.device("cuda" if torch.cuda.is_available() else "cpu"))),
    reason="the cuda backend (or its emulation build) is not available")


@needs_cuda_backend
def test_bench_adamw_step_rows(tmp_path, monkeypatch, device):
    # Triton's interpreter is left out (slow at 110k parameters; its kernels are tested in
    # test_optimizers); the (emulated) CUDA kernels stand for the kernel providers. Timing is
    # replaced by one call: what is checked is the wiring, numerics and cost model.
    monkeypatch.setattr(harness, "time_interleaved",
                        lambda fns, device, quick: [(fn(), (1.0, 1.0, 1.0))[1] for fn in fns])
    rc = cli.main(["bench", "adamw_step", "--quick", "--device", device.type, "--dtype", "float32", "--out",
                   str(tmp_path), "--no-plot", "--providers", "reference", "torch", "cuda"])
    assert rc == 0
    (csv_path,) = tmp_path.glob("*.csv")
    with open(csv_path, newline="") as f:
        rows = {r["provider"]: r for r in csv.DictReader(f)}
    numel = sum(p.numel() for p in next(_cases(device, torch.float32, True)).args[0])
    assert numel == (110_000 if device.type == "cpu" else 10_010_000)
    for provider in ("reference", "torch", "cuda"):
        row = rows[provider]
        # A provider that ran on state another run had already stepped would be off the truth.
        assert row["numerics"] == "ok", row
        assert float(row["bytes"]) == 28 * numel and float(row["gbps"]) == pytest.approx(28 * numel / 1e-3 / 1e9)


@needs_cuda_backend
def test_adamw_step_kernel_matches_torch_on_the_same_state(device):
    sample = next(_cases(device, torch.float32, True))
    ours, theirs = harness._fresh(ADAMW_STEP, sample), harness._fresh(ADAMW_STEP, sample)
    for _ in range(2):
        ADAMW_STEP.fn(*ours.args, backend="cuda")
        ADAMW_STEP.torch_equivalent(*theirs.args)
    for a, b in zip(ours.args, theirs.args):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    assert all(s.item() == 12.0 for s in ours.args[4])
