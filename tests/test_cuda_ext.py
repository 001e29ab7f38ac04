"""The compiled extensions: dlkern._C (CUDA kernels, built wherever nvcc and a CUDA build of torch
exist, GPU or not) and dlkern._C_emu (the same kernels for the CPU emulation layer) expose every
launcher the registry names, with working argument checks."""
import os
import shutil

import pytest
import torch

import dlkern
from dlkern import _ext

LAUNCHERS = sorted({name for op in dlkern.all_ops() if "cuda" in op.backends for name in op.launchers})
CAN_BUILD_CUDA = bool(shutil.which("nvcc")) and torch.version.cuda is not None and \
    os.environ.get("DLKERN_BUILD_CUDA") != "0"


@pytest.mark.skipif(not CAN_BUILD_CUDA, reason="needs nvcc and a CUDA build of torch to build dlkern._C")
def test_cuda_extension_was_built():
    assert _ext.cuda_built(), _ext.cuda_unavailable_reason()


@pytest.mark.parametrize("module_name", ["_C", "_C_emu"])
def test_exposes_every_registered_launcher(module_name):
    mod = getattr(_ext, module_name)
    if mod is None:
        pytest.skip(f"dlkern.{module_name} is not built: {getattr(_ext, module_name + '_error')}")
    missing = [name for name in LAUNCHERS + ["set_debug_nan_fill"] if not callable(getattr(mod, name, None))]
    assert not missing, f"dlkern.{module_name} lacks launchers: {missing}"


@pytest.mark.skipif(_ext._C is None or torch.cuda.is_available(), reason="needs dlkern._C and no GPU")
def test_cuda_launcher_rejects_cpu_tensors_clearly():
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _ext._C.layer_norm_fwd(torch.randn(2, 8), None, None, None, 1e-5)


def test_gpu_build_has_no_fast_math_and_names_its_approximations():
    """What the emulation tests is what the GPU runs: no --use_fast_math (which would make every
    expf, tanhf, sqrtf and division approximate on the GPU only); a kernel that wants an
    approximation names it, and the emulation defines each name it uses."""
    import re
    from pathlib import Path
    from dlkern.toolchain import NVCC_FLAGS
    assert not any("fast_math" in f or "fast-math" in f for f in NVCC_FLAGS), NVCC_FLAGS
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    emu = (csrc / "emu" / "cuda_emu.h").read_text()
    used = set()
    for src in [*csrc.rglob("*.cu"), *csrc.rglob("*.cuh")]:
        if "emu" not in src.parts:
            used |= set(re.findall(r"\b(__(?:expf|logf|log2f|powf|fdividef|sinf|cosf|tanf))\(", src.read_text()))
    assert used >= {"__expf", "__fdividef"}
    for name in used:
        assert re.search(rf"\b{name}\(", emu), f"{name} is used by a kernel but not defined by the emulation"
