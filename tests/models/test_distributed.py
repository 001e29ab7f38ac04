"""``torchrun --nproc_per_node=2 -m dlkern.train``: two gloo processes, each on half of every
global batch, follow the same loss curve as one process on the whole batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlkern.train import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_processes_match_one_on_the_combined_batch(tmp_path):
    args = ["gpt", "--tiny", "--steps", "6", "--batch-size", "8", "--backend", "reference", "--device", "cpu",
            "--no-eval", "--no-progress", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "dlkern.train", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    single = train("gpt", tiny=True, steps=6, batch_size=8, backend="reference", device="cpu",
                   evaluate=False, progress=False)
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert single["losses"][-1] != single["losses"][0]   # the parameters did move
