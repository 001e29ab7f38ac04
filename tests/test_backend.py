"""The backend chooser: precedence, errors for backends asked for by name, and auto's fallback."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import dlkern
from dlkern import backend as B
from dlkern.registry import OpSpec

F = dlkern.nn.functional


def test_precedence_call_over_context_over_global():
    dlkern.set_backend("triton")
    assert dlkern.get_backend() == "triton"
    with dlkern.use_backend("reference"):
        assert dlkern.get_backend() == "reference"
        with dlkern.use_backend("cuda"):
            assert dlkern.get_backend() == "cuda"
        assert dlkern.get_backend() == "reference"
    assert dlkern.get_backend() == "triton"
    op = dlkern.get_op("layer_norm")
    x = torch.randn(2, 8)
    assert B.choose(op, (x, (8,)), {}, backend="reference") == "reference"


def test_context_restored_after_exception():
    with pytest.raises(RuntimeError):
        with dlkern.use_backend("reference"):
            raise RuntimeError("boom")
    assert dlkern.get_backend() == "auto"


@pytest.mark.parametrize("bad", ["gpu", "Triton", "", None])
def test_bad_backend_name_names_argument_and_choices(bad):
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'reference', 'triton', 'cuda'"):
        dlkern.set_backend(bad)
    with pytest.raises(ValueError, match="backend must be one of"):
        F.layer_norm(torch.randn(2, 4), (4,), backend=bad or "x")


def test_env_variable_sets_default_and_is_validated():
    code = "import dlkern; print(dlkern.get_backend())"
    env = dict(os.environ, DLKERN_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "reference", out.stderr


def test_bad_env_variable_warns_and_runs_the_reference():
    """``import dlkern`` never fails on the environment: a value that is no backend warns, the
    reference runs, and ``dlkern info`` says why."""
    code = ("import torch, dlkern; print(dlkern.get_backend()); "
            "print(dlkern.nn.functional.layer_norm(torch.ones(2, 4), (4,)).abs().sum().item())")
    env = dict(os.environ, DLKERN_BACKEND="bogus")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["reference", "0.0"], out.stdout
    assert "DLKERN_BACKEND='bogus' is not one of" in out.stderr and "reference backend runs instead" in out.stderr
    info = subprocess.run([sys.executable, "-m", "dlkern", "info"], env=env, capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    line = next(ln for ln in info.stdout.splitlines() if ln.startswith("backend:"))
    assert "reference" in line and "'bogus' is not one of" in line, line


def test_auto_on_cpu_is_reference_without_warning():
    op = dlkern.get_op("rms_norm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert B.choose(op, (torch.randn(3, 5), (5,)), {}) == "reference"


def test_named_backend_never_falls_back(monkeypatch):
    x = torch.randn(4, 16, dtype=torch.float64)  # fp64: the kernels do not take it
    if B.availability("triton", x.device):
        pytest.skip("triton unavailable here: " + "; ".join(B.availability("triton", x.device)))
    with pytest.raises(dlkern.BackendError, match=r"backend 'triton' cannot serve.*dtype torch.float64"):
        F.layer_norm(x, (16,), backend="triton")


def test_cuda_backend_on_cpu_explains_itself(monkeypatch):
    monkeypatch.setenv("DLKERN_CUDA_EMULATE", "0")
    with pytest.raises(dlkern.BackendError, match="needs a CUDA device.*DLKERN_CUDA_EMULATE=1"):
        F.rms_norm(torch.randn(2, 8), (8,), backend="cuda")


def test_triton_on_cpu_without_interpreter_explains_itself(monkeypatch):
    if dlkern._ext.kernels is None:
        pytest.skip("triton is not importable")
    monkeypatch.setattr(dlkern._ext.kernels, "INTERPRET", False)
    with pytest.raises(dlkern.BackendError, match="TRITON_INTERPRET=1"):
        F.layer_norm(torch.randn(2, 8), (8,), backend="triton")


def test_auto_on_cuda_falls_back_with_one_warning(monkeypatch):
    """Simulate CUDA inputs no kernel backend can serve: auto warns once (naming every reason)
    and runs the reference."""
    op = OpSpec(name="fake_op", fn=None, reference=None,
                supports=lambda backend, x: [f"{backend} dislikes this input"])
    monkeypatch.setattr(B, "_device_of", lambda tensors: torch.device("cuda"))
    monkeypatch.setattr(B, "availability", lambda backend, device: [])
    B._warned.clear()
    with pytest.warns(RuntimeWarning, match="triton: triton dislikes this input.*cuda: cuda dislikes"):
        assert B.choose(op, (torch.randn(2),), {}) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: silent
        assert B.choose(op, (torch.randn(2),), {}) == "reference"


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device"):
        B._device_of([torch.randn(2), torch.randn(2, device="meta")])


def test_import_without_triton_or_extension_still_works():
    """``import dlkern`` survives a missing triton and extension; ops run the reference and
    ``dlkern info`` says why."""
    code = ("import sys; sys.modules['triton'] = None; sys.modules['dlkern._C'] = None\n"
            "import torch, dlkern\n"
            "y = dlkern.nn.functional.layer_norm(torch.randn(2, 8), (8,))\n"
            "print(dlkern.backend.availability('triton', torch.device('cuda'))[0])\n"
            "print(dlkern._ext.cuda_unavailable_reason())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert out.returncode == 0, out.stderr
    assert "triton is not importable" in out.stdout
    assert "dlkern._C is not built" in out.stdout
