"""``dlkern train`` as a user drives it: bad arguments are one line and exit 2, Ctrl-C checkpoints
the last whole step, ``--resume --steps N`` continues to the new total."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlkern.train import main, train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "unknown model 'nosuch'"),
    (["gpt", "--steps", "0"], "--steps: must be a positive integer, got '0'"),
    (["gpt", "--steps", "-5"], "--steps: must be a positive integer"),
    (["gpt", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["gpt", "--device", "cuda"] if not torch.cuda.is_available() else ["gpt", "--device", "tpu"], "device"),
    (["gpt", "--resume", "--out", "{tmp}/none"], "--resume: no checkpoint at"),
])
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exc:   # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_resume_with_more_steps_continues_to_the_new_total(tmp_path):
    kw = dict(tiny=True, batch_size=8, backend="reference", device="cpu", evaluate=False, progress=False,
              out=tmp_path, log=lambda *a: None)
    train("gpt", steps=4, **kw)
    more = train("gpt", steps=6, resume=True, **kw)
    assert more["steps"] == 6 and len(more["losses"]) == 6
    assert torch.load(tmp_path / "checkpoint.pt")["step"] == 6
    with pytest.raises(ValueError, match="checkpoint is at step 6; --steps 5 leaves nothing"):
        train("gpt", steps=5, resume=True, **kw)


def _cli(tmp_path, *extra):
    return [sys.executable, "-m", "dlkern.train", "gpt", "--tiny", "--steps", "3000", "--batch-size", "8",
            "--backend", "reference", "--device", "cpu", "--no-eval", "--no-progress", "--out", str(tmp_path), *extra]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_checkpoints_the_last_step_and_resume_ends_as_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(_cli(tmp_path / "whole"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli(out, "--save-every", "2"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)   # the periodic checkpoint shows the loop is running (its handler installed)
    assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after step" in err and "--resume" in err and "Traceback" not in err
    saved = torch.load(ckpt)
    done = saved["step"]
    assert 2 <= done < 3000 and len(saved["losses"]) == done   # a whole step, not a half-applied one
    resumed = subprocess.run(_cli(out, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want = json.loads((tmp_path / "whole" / "result.json").read_text())["losses"]
    got = json.loads((out / "result.json").read_text())["losses"]
    assert len(got) == 3000 and got == want
