"""The perf model's machine-code facts agree with independent reads of the same binaries, and its
byte counts and files are consistent."""
import re
import subprocess

import pytest

from dlkern.perf import sass
from dlkern.toolchain import find_tool


def _sample(records, n=12):
    """A spread of launched records: the first picked one of each (backend, op, arch)."""
    seen, out = set(), []
    for r in records:
        key = (r["backend"], r["op"], r["arch"])
        if r.get("launched", True) and r.get("picked") and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def test_opcode_counts_agree_with_nvdisasm(perf_quick):
    """cuobjdump -sass (what the model reads) and nvdisasm (a second disassembler) give the same
    tensor-core, global-load and total counts for every sampled kernel."""
    checked = 0
    for r in _sample(perf_quick["records"]):
        funcs = sass.read_cubin(r["cubin"])
        name = r.get("symbol") or next(iter(funcs))
        ours = funcs[name].counts()
        other = sass.nvdisasm_counts(r["cubin"], name)
        for key in ("HGMMA", "HMMA", "LDG.128", "LDG.32", "LDG.16", "LDGSTS", "MUFU", "total"):
            assert ours.get(key, 0) == other.get(key, 0), (r["kernel"], r["arch"], key, ours, other)
        assert ours == r["total_counts"], r["kernel"]
        checked += 1
    assert checked >= 10


def test_registers_agree_with_ptxas(perf_quick):
    """Registers from cuobjdump -res-usage (the model) equal what ptxas -v reports compiling the kept
    PTX of the same Triton kernel."""
    checked = 0
    for r in _sample(perf_quick["records"]):
        if r["backend"] != "triton":
            continue
        ptx = r["cubin"].removesuffix(".cubin") + ".ptx"
        log = subprocess.run([find_tool("ptxas"), "-v", f"--gpu-name={r['arch']}", ptx, "-o", "/dev/null"],
                             capture_output=True, text=True).stderr
        # Triton passes --regAllocOptLevel=2 (a ptxas 13 workaround); register counts can differ by a few without it
        regs = int(re.search(r"Used (\d+) registers", log).group(1))
        assert abs(regs - r["registers"]) <= max(8, r["registers"] // 8), (r["kernel"], r["arch"], regs, r["registers"])
        checked += 1
    assert checked >= 5


def test_interpreter_bytes_cover_the_minimum(perf_quick):
    """Every counted Triton pass moves at least its op's minimum bytes (the cost models are minima)."""
    from dlkern.perf.pipeline import traffic
    ops = sorted({r["op"] for r in perf_quick["records"] if r["backend"] == "triton"})
    counted = traffic(ops, "bfloat16", log=lambda *a: None)
    below, passes = [], 0
    for op, entries in counted.items():
        assert isinstance(entries, list), f"{op}: {entries}"
        for e in entries:
            moved = sum(la["unique_loaded"] + la["unique_stored"] for la in e["launches"])
            passes += 1
            if moved < e["bytes_min"] * (1 - 1e-6):
                below.append(f"{op} {e['case']} {e['mode']}: counted {moved} B < minimum {e['bytes_min']} B")
    assert passes >= 2 * len(ops) - 2
    assert not below, "\n".join(below)


def test_every_op_is_modelled(perf_quick):
    from dlkern.perf.launches import perf_ops
    for arch in perf_quick["meta"]["archs"]:
        modelled = {r["op"] for r in perf_quick["records"] if r["arch"] == arch and r["backend"] == "triton"}
        assert set(perf_ops()) <= modelled, set(perf_ops()) - modelled


def test_files_and_labels(perf_quick):
    out = perf_quick["out"]
    assert (out / "perf.csv").read_text().startswith("op,case,dtype,arch")
    assert (out / "perf.png").read_bytes()[:4] == b"\x89PNG"
    assert "PREDICTED" in perf_quick["stdout"] and "measured" not in perf_quick["stdout"].replace("not measured", "")
    for r in perf_quick["records"]:
        if r.get("launched", True):
            for key in ("registers", "spill_bytes", "shared_bytes", "blocks_per_sm", "waves", "loop_counts",
                        "instructions_per_element", "bytes_min", "flops", "memory_bound_us", "math_bound_us",
                        "issue_bound_us", "predicted_us", "predicted_pct_roofline", "cubin", "picked", "config"):
                assert key in r, (key, r["kernel"])
            assert r["predicted_us"] >= r["launch_us"]


def test_readme_block_is_generated_from_the_committed_run():
    """The README's block is what ``dlkern perf --readme-only`` makes of benchmarks/results/perf/perf.json."""
    from pathlib import Path

    from dlkern.perf.report import README_BEGIN, README_END, load, readme_block
    root = Path(__file__).resolve().parents[2]
    committed = root / "benchmarks" / "results" / "perf" / "perf.json.gz"
    if not committed.exists():
        pytest.skip("no committed perf run under benchmarks/results/perf")
    text = (root / "README.md").read_text()
    block = text[text.index(README_BEGIN):text.index(README_END) + len(README_END)]
    assert block == readme_block(load(committed))
