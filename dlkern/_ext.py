"""Failure-tolerant loading of the optional parts: triton (with dlkern.kernels), the CUDA
extension ``dlkern._C``, its CPU emulation build ``dlkern._C_emu`` and the CPU C++ kernels
``dlkern._C_cpu``.

Nothing here raises: a missing part is ``None`` plus the reason, so ``import dlkern`` always works
and ``dlkern info`` can say what is absent and why. Everything is loaded once, at import, so the
backend chooser only reads module attributes; torch.compile traces that without graph breaks.
"""
from __future__ import annotations

import importlib


def _try_import(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, but also OSError from a broken shared library
        return None, f"{type(exc).__name__}: {exc}"


_triton, _triton_error = _try_import("triton")
kernels, kernels_error = _try_import("dlkern.kernels.launchers") if _triton is not None else (None, _triton_error)
_C, _C_error = _try_import("dlkern._C")
_C_emu, _C_emu_error = _try_import("dlkern._C_emu")
_C_cpu, _C_cpu_error = _try_import("dlkern._C_cpu")


def triton_version() -> str:
    return getattr(_triton, "__version__", "not installed")


def triton_import_error() -> str | None:
    return kernels_error


def cuda_built() -> bool:
    return _C is not None


def cuda_module():
    """``dlkern._C`` when it was built with CUDA kernels and a CUDA device is usable, else None."""
    import torch
    return _C if _C is not None and torch.cuda.is_available() else None


def cuda_unavailable_reason() -> str:
    if _C is None:
        return ("the CUDA extension dlkern._C is not built (reinstall with nvcc and a CUDA build of "
                f"torch, or DLKERN_BUILD_CUDA=1): {_C_error}")
    return "no CUDA device is available (torch.cuda.is_available() is False)"


def emu_module():
    """``dlkern._C_emu``: the CUDA kernels compiled for the CPU emulation layer, or None."""
    return _C_emu


def emu_unavailable_reason() -> str:
    return f"the CUDA emulation build dlkern._C_emu is not available: {_C_emu_error}"


def cpu_module():
    """``dlkern._C_cpu``: the CPU C++ kernels (fast default paths on CPU tensors), or None."""
    return _C_cpu


def cpu_unavailable_reason() -> str:
    return f"the CPU kernels dlkern._C_cpu are not built: {_C_cpu_error}"
