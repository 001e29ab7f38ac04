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


class OpsServed:
    """Context manager recording which dlkern kernel ops ran while active, and how often: proof that
    a patched model really runs dlkern (``with OpsServed() as seen: model(x).sum().backward()`` ->
    ``seen.counts == {"layer_norm_fwd": 4, "layer_norm_bwd": 4, ...}``; ``seen.families`` ->
    ``{"layer_norm", ...}``). It sees the custom ops below autograd, on every backend."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self._mode = None

    @property
    def families(self) -> set[str]:
        """Op families served: ``layer_norm`` for ``layer_norm_fwd`` / ``layer_norm_bwd``."""
        return {name.rsplit("_", 1)[0] if name.endswith(("_fwd", "_bwd")) else name for name in self.counts}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = self.counts

        class _Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace == "dlkern":
                    counts[func._opname] = counts.get(func._opname, 0) + 1
                return func(*args, **(kwargs or {}))

        self._mode = _Record()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
