"""Run by test_distributed.py under ``torchrun --nproc_per_node=2``: FSDP2 training interrupted
after ``--stop-at`` steps (a distributed checkpoint), then resumed to the end in the same process
group. Rank 0 writes the resumed run's result to OUT/resumed.json."""
import json
import sys
from pathlib import Path

import torch.distributed as dist

from dlkern.train import train


def main(out: str, backend: str, stop_at: int, steps: int):
    dist.init_process_group("gloo")   # ours, so train() leaves it alive between the two runs
    kw = dict(tiny=True, steps=steps, batch_size=8, backend=backend, device="cpu", evaluate=False,
              progress=False, fsdp=True, out=out, log=lambda *a: None)
    first = train("gpt", stop_at=stop_at, **kw)
    assert first["steps"] == stop_at
    resumed = train("gpt", resume=True, **kw)
    if dist.get_rank() == 0:
        (Path(out) / "resumed.json").write_text(json.dumps(resumed))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
