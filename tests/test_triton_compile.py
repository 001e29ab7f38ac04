"""Every Triton kernel, in every launch configuration its launcher can pick, compiles for sm_80
and sm_90 through Triton's compiler with an explicit GPU target (no GPU needed). Registers,
spills and shared memory come from ptxas and are reported; a spill fails the test (except where
triton_compile_check.SPILLS_ALLOWED names the kernel and the reason).

The compiles run in one subprocess without TRITON_INTERPRET (see triton_compile_check.py), with
the results shared by the parametrized tests below.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
import triton_compile_check as check  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_in_subprocess(cases):
    # Split over two processes: compiling is CPU-bound and CI has two cores.
    halves = [cases[0::2], cases[1::2]]
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "triton_compile_check.py"),
                               *[f"sm{a}:{n}" for a, n in half]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_clean_env()) for half in halves if half]
    results = {}
    for p in procs:
        out, err = p.communicate(timeout=1200)
        assert p.returncode == 0, err[-4000:]
        for line in out.splitlines():
            r = json.loads(line)
            results[(r["arch"], r["name"])] = r
    return results


CASES = check.cases()


@pytest.fixture(scope="module")
def results():
    return _run_in_subprocess(CASES)


@pytest.mark.parametrize("arch,name", CASES, ids=[f"{n}-sm{a}" for a, n in CASES])
def test_compiles_without_spills(results, arch, name):
    r = results[(arch, name)]
    assert "error" not in r, f"{name} sm_{arch}: {r.get('error')}"
    line = (f"{name} sm_{arch}: {r['registers']} registers, {r['spill_bytes']} B spilled, "
            f"{r['shared_bytes']} B shared, {r['num_warps']} warps")
    print(line)
    assert r["cubin_bytes"] > 0, line
    if check.spill_allowed(name) is None:
        assert r["spill_bytes"] == 0, line
