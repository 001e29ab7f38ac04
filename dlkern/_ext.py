"""Lazy, failure-tolerant loading of the optional compiled parts and of triton.

Nothing here raises: each loader returns the module or ``None`` and remembers why it is missing,
so ``import dlkern`` always works and ``dlkern info`` can say what is absent and why.
"""
from __future__ import annotations

import functools
import importlib


@functools.lru_cache(maxsize=None)
def _load(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # ImportError, but also OSError from a broken shared library
        return None, f"{type(exc).__name__}: {exc}"


def triton_import_error() -> str | None:
    return _load("triton")[1]


def cuda_module():
    """``dlkern._C`` when it was built with CUDA kernels and a CUDA driver is usable, else None."""
    mod, _ = _load("dlkern._C")
    if mod is None:
        return None
    import torch
    return mod if torch.cuda.is_available() else None


def cuda_built() -> bool:
    return _load("dlkern._C")[0] is not None


def cuda_unavailable_reason() -> str:
    mod, err = _load("dlkern._C")
    if mod is None:
        return ("the CUDA extension dlkern._C is not built (reinstall with nvcc and a CUDA build of "
                f"torch, or DLKERN_BUILD_CUDA=1): {err}")
    return "no CUDA device is available (torch.cuda.is_available() is False)"


def emu_module():
    """``dlkern._C_emu``: the CUDA kernels compiled for the CPU emulation layer, or None."""
    return _load("dlkern._C_emu")[0]


def emu_unavailable_reason() -> str:
    return f"the CUDA emulation build dlkern._C_emu is not available: {_load('dlkern._C_emu')[1]}"
