"""The benchmark harness and the ``dlkern`` CLI: files and columns, speedups, numerics verdicts,
provider availability, ``info`` and error messages. A fake op registered per test gives a
controlled op (its "wrong" peer is off by 1e-2, its "absent" peer is not installed)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlkern
from dlkern import backend, cli
from dlkern.bench import harness, report, roofline
from dlkern.registry import OPS, Cost, OpSpec, Sample, register_op

REPO = Path(__file__).resolve().parents[1]
FAKE = "zz_fake_scale"


def _scale(x, w):
    return x * w, x.sum(-1)  # a tuple of outputs, as add_layer_norm returns


def _cases(device, dtype, quick):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen).to(device, dtype)
    w = torch.randn(32, generator=gen).to(device, dtype)
    yield Sample("64x32", (x, w), {}, (0, 1))
    yield Sample("no_grad", (x[:8], w), {}, ())  # no grad inputs: fwd rows only


@pytest.fixture
def fake_op():
    spec = register_op(OpSpec(
        name=FAKE, family="test", backends=("triton",), auto_order=("triton",),
        fn=lambda x, w, *, backend=None: _scale(x, w), reference=_scale,
        samples=lambda device, dtype: _cases(device, dtype, True),
        bench_cases=_cases,
        cost=lambda s: Cost(fwd_bytes=3 * s.args[0].numel() * 4, bwd_bytes=5 * s.args[0].numel() * 4,
                            fwd_flops=1e6, bwd_flops=0),
        torch_equivalent=lambda x, w: (torch.mul(x, w), torch.sum(x, -1)),
        peers={"wrong": lambda: (lambda x, w: (x * w + 1e-2, x.sum(-1))), "absent": lambda: None},
        dtypes=(torch.float32, torch.bfloat16),
    ))
    yield spec
    OPS.pop(FAKE)


@pytest.fixture
def fixed_ceilings(monkeypatch):
    """Skip the ~1 s ceiling measurement and make % of roofline checkable."""
    ceilings = roofline.Ceilings("test device", copy_gbps=10.0, copy_mib=1, matmul_tflops=0.001,
                                 matmul="float32 8^3")
    monkeypatch.setattr(roofline, "measure", lambda device, quick=False: ceilings)
    return ceilings


def _result_files(out: Path):
    csvs, jsons = sorted(out.glob("*.csv")), sorted(out.glob("*.json"))
    assert len(csvs) == 1 and len(jsons) == 1, list(out.iterdir())
    with open(csvs[0], newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    return header, rows, json.loads(jsons[0].read_text()), jsons[0]


def _float(x):
    return float(x) if x not in ("", None) else None


def test_bench_real_op_writes_csv_and_json(tmp_path):
    # A fresh process without the interpreter (conftest turns it on): Triton's interpreter would
    # take ~30 s here, and the rows must then say why triton and cuda cannot run on CPU.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DLKERN_CUDA_EMULATE")}
    proc = subprocess.run([sys.executable, "-m", "dlkern", "bench", "layer_norm", "--quick", "--device",
                           "cpu", "--out", str(tmp_path), "--no-plot"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "layer_norm" in proc.stdout and "numerics" in proc.stdout  # the printed table
    header, rows, data, _ = _result_files(tmp_path)
    assert header == list(harness.COLUMNS)
    meta = data["meta"]
    for key in ("device", "date", "python", "torch", "triton", "cuda", "dlkern", "git_commit", "ceilings"):
        assert key in meta
    assert meta["ceilings"]["copy_gbps"] > 0 and meta["ceilings"]["matmul_tflops"] > 0
    by = {(r["mode"], r["provider"]): r for r in rows}
    for mode in harness.MODES:
        for prov in ("reference", "torch"):
            r = by[(mode, prov)]
            assert r["numerics"] == "ok" and _float(r["ms"]) > 0 and _float(r["gbps"]) > 0
        # no silent drops: every kernel backend has a row that says why it cannot run here
        assert "TRITON_INTERPRET=1" in by[(mode, "triton")]["numerics"]
        assert "DLKERN_CUDA_EMULATE=1" in by[(mode, "cuda")]["numerics"]
        assert by[(mode, "torch.compile")]["numerics"].startswith("unavailable: skipped under --quick")


def test_speedup_gbps_roofline_and_failing_provider(tmp_path, fake_op, fixed_ceilings):
    rc = cli.main(["bench", FAKE, "--quick", "--device", "cpu", "--out", str(tmp_path), "--no-plot"])
    assert rc == 1  # the "wrong" peer's numerics FAIL
    _, rows, data, _ = _result_files(tmp_path)
    assert data["meta"]["ceilings"]["copy_gbps"] == 10.0
    providers = {r["provider"] for r in rows}
    assert "absent" not in providers  # a peer that is not installed is no provider
    assert {"reference", "torch", "torch.compile", "triton", "cuda", "wrong"} <= providers
    assert {r["mode"] for r in rows if r["case"] == "no_grad"} == {"fwd"}
    interpret = backend.triton_interpreter_enabled()  # conftest turns it on without a GPU
    torch_ms = {(r["case"], r["mode"]): float(r["ms"]) for r in rows if r["provider"] == "torch"}
    for r in rows:
        if r["provider"] == "wrong":
            assert r["numerics"].startswith("FAIL: out[0]"), r
        elif r["provider"] in ("reference", "torch") or r["provider"] == "triton" and interpret:
            assert r["numerics"] == "ok", r
        else:
            assert r["numerics"].startswith("unavailable: ") and not r["ms"], r
        if not r["ms"]:
            continue
        ms, nbytes, flops = float(r["ms"]), float(r["bytes"]), float(r["flops"])
        assert float(r["speedup_vs_torch"]) == pytest.approx(torch_ms[(r["case"], r["mode"])] / ms)
        assert float(r["gbps"]) == pytest.approx(nbytes / (ms * 1e-3) / 1e9)
        fractions = [float(r["gbps"]) / 10.0] + ([flops / (ms * 1e-3) / 1e12 / 0.001] if flops else [])
        assert float(r["roofline_pct"]) == pytest.approx(100 * max(fractions))
        assert (r["tflops"] != "") == (flops > 0)
    assert any(r["provider"] == "cuda" and "no cuda implementation" in r["numerics"] for r in rows)


def test_fwd_bwd_fwd_plus_bwd_bytes(tmp_path, fake_op, fixed_ceilings):
    cli.main(["bench", FAKE, "--quick", "--device", "cpu", "--out", str(tmp_path), "--no-plot",
              "--providers", "reference"])
    _, rows, _, _ = _result_files(tmp_path)
    e = 64 * 32 * 4
    got = {r["mode"]: float(r["bytes"]) for r in rows if r["case"] == "64x32"}
    assert got == {"fwd": 3 * e, "bwd": 5 * e, "fwd+bwd": 8 * e}


def test_bwd_timing_runs_no_forward():
    calls = []

    def fn(x, w):
        calls.append(1)
        return _scale(x, w)
    sample = next(_cases(torch.device("cpu"), torch.float32, True))
    outs, _, cots = harness.run_once(_scale, sample, None, with_grads=True)
    timed = harness.timed_closure(fn, sample, "bwd", cots)
    assert len(calls) == 1  # the one forward that builds the graph
    dx, dw = timed()
    timed()
    assert len(calls) == 1
    assert torch.allclose(dx, cots[0] * sample.args[1] + cots[1][:, None])
    fwd_bwd = harness.timed_closure(fn, sample, "fwd+bwd", cots)
    fwd_bwd()
    assert len(calls) == 2  # fwd+bwd: the forward runs inside each timed call


def test_low_precision_tolerance_follows_the_reference_error():
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    truth = [x.exp()]
    ref = [x.bfloat16().exp()]  # what the reference gets in bf16
    ok = compare_one(x.bfloat16().float().exp().bfloat16(), truth, ref)
    assert ok[0], ok
    bad = compare_one(ref[0] * 1.2, truth, ref)
    assert not bad[0] and "max err" in bad[3]
    nan = ref[0].clone()
    nan[3, 3] = float("nan")
    assert not compare_one(nan, truth, ref)[0]


def compare_one(got, truth, ref):
    return harness.compare([got], truth, ref, torch.bfloat16, "out")


def test_raising_kernel_fails_but_raising_compile_is_a_reason(monkeypatch, fake_op):
    def broken(fn):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nlong traceback")
        return run
    monkeypatch.setattr(harness, "_compiled", broken)
    monkeypatch.setattr(backend, "reasons_against", lambda *a, **k: [])  # let "triton" run here

    def kernel(x, w, *, backend=None):
        raise ValueError("kernel bug")
    monkeypatch.setattr(fake_op, "fn", kernel)
    rows = harness.run([fake_op], "cpu", [torch.float32], ["fwd"], ["torch.compile", "triton"],
                       quick=True, progress=False)
    status = {r.provider: r.numerics for r in rows if r.case == "64x32"}
    assert status["torch.compile"] == "unavailable: RuntimeError: no C++ compiler"
    assert status["triton"] == "FAIL: raised ValueError: kernel bug"


def test_time_budget_records_skipped_rows(fake_op):
    rows = harness.run([fake_op], "cpu", [torch.float32], ["fwd"], ["reference"], quick=True,
                       budget_s=1e-9, progress=False)
    assert rows and all(r.numerics == "skipped: time budget exhausted" for r in rows)


def test_info_lists_every_op_with_backend_status(capsys, fake_op):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "TRITON_INTERPRET" in out and "dlkern._C" in out
    lines = out.splitlines()
    ops = dlkern.all_ops()
    assert FAKE in {op.name for op in ops}
    device = cli.default_device()
    for op in ops:
        sample = next(iter(op.samples(device, torch.float32)))
        start = next(i for i, line in enumerate(lines) if line.split()[:1] == [op.name])
        block = lines[start:start + 3]
        for i, name in enumerate(("reference", "triton", "cuda")):
            reasons = backend.reasons_against(op, name, sample.args, sample.kwargs)
            assert name in block[i]
            assert block[i].rstrip().endswith("ok" if not reasons else "; ".join(reasons))
    assert "fake_scale has no cuda implementation" in out


def test_info_markdown_table_has_a_row_per_op(capsys, fake_op):
    assert cli.main(["info", "--markdown-table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| op |") and "triton" in lines[0] and "cuda" in lines[0]
    names = [line.split("|")[1].strip().strip("`") for line in lines[2:]]
    assert names == [op.name for op in dlkern.all_ops()]
    fake_row = lines[2 + names.index(FAKE)].split("|")
    assert [c.strip() for c in fake_row[3:6]] == ["✓", "✓", "—"]  # reference, triton, cuda


def test_unknown_op_lists_registered_ops(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "layer_nrom", "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown op 'layer_nrom'" in err
    for op in dlkern.all_ops():
        assert op.name in err


def test_plot_draws_one_png_per_op_and_mode(tmp_path, fake_op, fixed_ceilings):
    cli.main(["bench", FAKE, "--quick", "--device", "cpu", "--out", str(tmp_path), "--no-plot",
              "--providers", "reference", "torch", "--dtype", "float32", "bfloat16"])
    _, _, _, json_path = _result_files(tmp_path)
    pngs = report.plot(json_path, tmp_path / "plots")
    assert sorted(p.name.split("_scale_")[1] for p in pngs) == ["bwd.png", "fwd.png", "fwd_bwd.png"]
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_validate_writes_summary_and_pytest_log(tmp_path, fake_op, fixed_ceilings):
    test_file = tmp_path / "test_tiny.py"
    test_file.write_text("def test_pass():\n    pass\n\ndef test_fail():\n    assert False\n")
    out = tmp_path / "out"
    rc = cli.main(["validate", FAKE, "--quick", "--device", "cpu", "--providers", "reference", "torch",
                   "--out", str(out), "--pytest-args", f"{test_file} -p no:cacheprovider", "--workers", "1"])
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 1 and summary["ok"] is False  # test_fail failed
    assert summary["pytest"]["tests"] == 2 and summary["pytest"]["failures"] == 1
    # The id's prefix depends on where pytest puts its rootdir (the checkout's location): compare the tail.
    (failed,) = summary["pytest"]["failed_tests"]
    assert failed.endswith("test_tiny::test_fail")
    assert "test_fail" in (out / "pytest.log").read_text()
    assert summary["bench"]["fail"] == [] and summary["bench"]["ok"] > 0
    assert (out / summary["bench"]["csv"]).exists() and (out / summary["bench"]["json"]).exists()
    assert FAKE in summary["info"]["ops"]


def test_benchmarks_run_py_is_dlkern_bench(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "registered ops: " in proc.stderr and "layer_norm" in proc.stderr


def test_train_step_benchmark_writes_every_provider(tmp_path):
    """benchmarks/train_step.py on CPU: a row per provider with a positive time, the ratios, and the
    exit status 0 when every provider ran."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--device", "cpu",
                           "--models", "bert", "--no-compile", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = tmp_path.glob("*_train_step_cpu.json")
    row = json.loads(path.read_text())["models"]["bert"]
    assert set(row) == {"kernels", "eager", "speedup vs eager"}
    assert row["kernels"]["ms"] > 0 and row["eager"]["samples_per_s"] > 0
    assert row["speedup vs eager"] == pytest.approx(row["eager"]["ms"] / row["kernels"]["ms"])
