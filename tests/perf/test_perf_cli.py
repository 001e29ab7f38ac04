"""``dlkern perf``'s command line: user mistakes are one-line errors, and ``import dlkern`` does not
import the perf package."""
import subprocess
import sys

import pytest
from perf_helpers import clean_env


@pytest.mark.parametrize("args,message", [
    (["no_such_op"], "unknown op(s) 'no_such_op'"),
    (["--arch", "sm_70"], "unknown arch(s) sm_70"),
    (["--readme-only", "--out", "/nonexistent/perf"], "no /nonexistent/perf/perf.json"),
])
def test_usage_errors_are_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "dlkern", "perf", "--no-progress", *args],
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_interpreter_set_is_a_usage_error():
    env = dict(clean_env(), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "dlkern", "perf", "layer_norm"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr and "Traceback" not in proc.stderr


def test_import_dlkern_does_not_load_the_perf_model():
    code = "import sys, dlkern; print(any(m.startswith('dlkern.perf') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_merge_keeps_only_the_other_ops_records(tmp_path):
    """``--merge``: an existing perf.json's records and errors of the ops not rerun are kept, those
    of the rerun ops are dropped (they are replaced by the new run's)."""
    import gzip
    import json

    from dlkern.perf.pipeline import _kept
    old = {"meta": {"errors": [["layer_norm", "c1", "x"], ["rms_norm", "c2", "y"]]},
           "records": [{"op": "layer_norm", "case": "a"}, {"op": "rms_norm", "case": "b"},
                       {"op": "adamw_step", "case": "c"}]}
    assert _kept(tmp_path, {"layer_norm"}) == ([], [])           # nothing to keep yet
    (tmp_path / "perf.json.gz").write_bytes(gzip.compress(json.dumps(old).encode()))
    records, errors = _kept(tmp_path, {"layer_norm"})
    assert [r["op"] for r in records] == ["rms_norm", "adamw_step"]
    assert errors == [["rms_norm", "c2", "y"]]


def test_every_cuda_kernel_file_named_by_the_model_exists():
    """A full run compiles each FILE_OPS file; a stale name (the channel-norm file was split in two)
    became a compile error in the run's errors and no CUDA instance records for those ops."""
    from dlkern.perf.cuda import FILE_OPS, REPO_CSRC

    missing = [rel for rel in FILE_OPS if not (REPO_CSRC / rel).is_file()]
    assert not missing, f"FILE_OPS names kernel files that do not exist: {missing}"
    on_disk = {str(p.relative_to(REPO_CSRC)) for p in REPO_CSRC.rglob("*.cu") if "emu" not in p.parts}
    assert on_disk <= set(FILE_OPS), f"kernel files the model never reads: {sorted(on_disk - set(FILE_OPS))}"
