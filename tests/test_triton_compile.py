"""Every Triton kernel variant that the launchers start on the bench's quick cases compiles for
sm_80 and sm_90a through Triton's compiler, with the JIT's own specialization (no GPU needed).
Registers, spills and shared memory come from ptxas and are reported; a spill fails the test
(except where triton_compile_check.SPILLS_ALLOWED names the kernel and the reason).

The compiles run in subprocesses without TRITON_INTERPRET (see triton_compile_check.py); the
results are shared by the tests below.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
import triton_compile_check as check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = sorted({a for a, _ in check.TARGETS})


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DLKERN_DEBUG_NAN_FILL")}
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def results():
    # Two processes: compiling is CPU-bound and CI has two cores.
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "triton_compile_check.py"), str(i), "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env())
             for i in range(2)]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        assert p.returncode == 0, err[-4000:]
        rows += [json.loads(line) for line in out.splitlines()]
    return rows


def test_every_op_has_launched_variants(results):
    import dlkern
    names = {r["name"].split(".")[0] for r in results}
    missing = [op.name for op in dlkern.all_ops() if "triton" in op.backends and op.name not in names]
    assert not missing, f"no Triton launch enumerated for {missing}"


@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_spills(results, arch):
    rows = [r for r in results if r["arch"] == arch]
    assert rows
    errors = [f"{r['name']}: {r['error'][:300]}" for r in rows if "error" in r]
    assert not errors, "\n".join(errors)
    bad = []
    for r in rows:
        line = (f"{r['name']} {r['dtype']} {arch}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
                f"{r['shared_bytes']} B shared, {r['num_warps']} warps")
        print(line)
        assert r["cubin_bytes"] > 0, line
        if r["spill_bytes"] and check.spill_allowed(r["kernel"], r["dtype"], arch) is None:
            bad.append(line)
    assert not bad, "\n".join(bad)
