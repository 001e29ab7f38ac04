"""One quick ``dlkern perf`` run shared by the tests in this folder. It runs in a subprocess
without TRITON_INTERPRET (the tests' conftest enables the interpreter, which changes the launch
configurations); compiled artifacts are cached under ~/.cache/dlkern/perf (DLKERN_PERF_CACHE)."""
import json
import subprocess
import sys

import pytest
from perf_helpers import clean_env

pytest.importorskip("triton")


@pytest.fixture(scope="session")
def perf_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    proc = subprocess.run([sys.executable, "-m", "dlkern", "perf", "--quick", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True, env=clean_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((out / "perf.json").read_text())
    data["out"] = out
    data["stdout"] = proc.stdout
    return data
