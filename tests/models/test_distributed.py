"""``torchrun --nproc_per_node=2 -m dlkern.train``: two gloo processes, each on half of every
global batch, follow the same loss curve as one process on the whole batch: with DDP, and with
FSDP2 (``--fsdp``: sharded parameters, dlkern's optimizers on the shards, on the reference path and
on both kernel backends), whose distributed checkpoint resumes exactly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlkern.backend import availability
from dlkern.train import train

REPO = Path(__file__).resolve().parents[2]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_BACKENDS = [b for b in ("triton", "cuda") if not availability(b, DEVICE)]
needs_dist = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
ARGS = ["gpt", "--tiny", "--steps", "6", "--batch-size", "8", "--device", "cpu", "--no-eval", "--no-progress"]


def _torchrun(args, tmp_path, module=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if DEVICE.type == "cpu":  # the kernel backends on CPU tensors: interpreter and emulation
        env.update(TRITON_INTERPRET="1", DLKERN_CUDA_EMULATE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *(["-m", "dlkern.train"] if module else []), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _single(backend, steps=6, name="gpt", batch_size=8, **kw):
    return train(name, tiny=True, steps=steps, batch_size=batch_size, backend=backend, device="cpu",
                 evaluate=False, progress=False, **kw)["losses"]


@needs_dist
def test_two_processes_match_one_on_the_combined_batch(tmp_path):
    _torchrun([*ARGS, "--backend", "reference", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    single = _single("reference")
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single), rtol=1e-5, atol=1e-6)
    assert single[-1] != single[0]   # the parameters did move


@needs_dist
@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_fsdp_two_processes_match_one_on_the_combined_batch(tmp_path, backend):
    _torchrun([*ARGS, "--backend", backend, "--fsdp", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert (tmp_path / "checkpoint" / "meta.pt").exists() and list((tmp_path / "checkpoint").glob("*.distcp"))
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(_single(backend)),
                               rtol=1e-5, atol=1e-6)


@needs_dist
def test_fsdp_distributed_checkpoint_resumes_exactly(tmp_path):
    worker = Path(__file__).with_name("fsdp_worker.py")
    _torchrun([str(worker), str(tmp_path), "reference", "3", "6"], tmp_path, module=False)
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["steps"] == 6 and len(resumed["losses"]) == 6
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(_single("reference")),
                               rtol=1e-5, atol=1e-6)


@needs_dist
@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS[:1]])
def test_fsdp_channels_last_convnext_matches_one_process(tmp_path, backend):
    """Conv weights in channels_last (dense, permuted): sharded by FSDP2 and stepped by dlkern's
    optimizer on the shards, the same losses as one process. Batch 4 (2 per rank), 3 steps: the
    interpreted kernels make each step of the Triton case cost ~10 s on CPU."""
    _torchrun(["convnext", "--tiny", "--steps", "3", "--batch-size", "4", "--device", "cpu", "--no-eval",
               "--no-progress", "--backend", backend, "--fsdp", "--channels-last", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    torch.testing.assert_close(torch.tensor(result["losses"]),
                               torch.tensor(_single(backend, steps=3, name="convnext", batch_size=4,
                                                                channels_last=True)),
                               rtol=1e-5, atol=1e-6)
