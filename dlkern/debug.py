"""Debugging aid used by the tests: fill every kernel output with NaN before the kernel runs, so
an element a kernel forgot to write shows up as NaN instead of stale memory that happens to match.
Enabled by ``DLKERN_DEBUG_NAN_FILL=1`` or :func:`set_debug_nan_fill`."""
import os

import torch

_nan_fill = os.environ.get("DLKERN_DEBUG_NAN_FILL", "0") == "1"


def set_debug_nan_fill(enabled: bool) -> None:
    """Turn NaN-filling of kernel outputs on or off (Triton launchers and the compiled builds)."""
    global _nan_fill
    _nan_fill = bool(enabled)
    from dlkern import _ext
    for mod in (_ext._C, _ext._C_emu, _ext._C_cpu):
        if mod is not None:
            mod.set_debug_nan_fill(_nan_fill)


def debug_nan_fill() -> bool:
    return _nan_fill


def new_empty(*shape, dtype, device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs (NaN-filled when the debug flag is on)."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if _nan_fill and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def new_empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """``torch.empty_like`` (keeps channels_last and other dense layouts), NaN-filled when on."""
    out = torch.empty_like(t, dtype=dtype)
    if _nan_fill and out.is_floating_point():
        out.fill_(float("nan"))
    return out
