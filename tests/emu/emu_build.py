"""Builds the test kernels of tests/emu/kernels against the CUDA CPU emulation layer (csrc/emu). The
flags mirror ``emu_extension()`` in setup.py. Imported by conftest.py and by the ASan subprocess."""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
KERNELS = Path(__file__).resolve().parent / "kernels"


def emu_cflags(asan: bool = False) -> list[str]:
    flags = ["-O2", "-std=c++20", "-DDLK_EMULATION", "-include", str(CSRC / "emu" / "cuda_emu.h"), "-pthread",
             "-Wno-unknown-pragmas"]
    return flags + (["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else [])


def emu_include_dirs() -> list[str]:
    # The shims (cuda_runtime.h, ...) must come before anything else that could provide those names.
    return [str(CSRC / "emu" / "include"), str(CSRC), str(KERNELS)]


def emu_runtime_sources() -> list[str]:
    """The emulation runtime, as setup.py compiles it into dlkern._C_emu."""
    return sorted(str(p) for p in (CSRC / "emu").glob("*.cpp"))


def cxx_unavailable() -> str | None:
    if not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler on PATH"
    if not shutil.which("ninja"):
        return "torch.utils.cpp_extension.load needs ninja"
    return None


def build_planted(build_dir: Path, name: str, asan: bool = False):
    """Compile planted.cu and fragments.cu (each through a wrapper that includes emu/poison.h first, as
    setup.py does for every .cu), the emulator runtime and the pybind11 binding into the module ``name``."""
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    wrappers = []
    for kernel_file in ("planted.cu", "fragments.cu"):
        wrapper = build_dir / (Path(kernel_file).stem + "_emu.cpp")
        wrapper.write_text(f'#include "emu/poison.h"\n#include "{kernel_file}"\n')
        wrappers.append(str(wrapper))
    return load(
        name=name,
        sources=[str(KERNELS / "bindings.cpp")] + wrappers + emu_runtime_sources(),
        extra_cflags=emu_cflags(asan),
        extra_ldflags=["-pthread"] + (["-fsanitize=address"] if asan else []),
        extra_include_paths=emu_include_dirs(),
        build_directory=str(build_dir),
        verbose=False,
    )
