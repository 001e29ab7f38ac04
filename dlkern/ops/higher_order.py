"""Double backward on the kernel backends. The backward kernels have no derivative of their own,
so differentiating through one (``create_graph=True``, then a second backward) cannot be served.
Every backward custom op, ``dlkern::<launcher>`` for each ``*_bwd`` launcher in the registry, gets an
autograd formula that raises :class:`BackendError` naming the dlkern ops it serves and the fix,
instead of torch's "no autograd formula was registered" (a message for dlkern's developers)."""
from __future__ import annotations

import torch

from dlkern.backend import KERNEL_BACKENDS, BackendError


def _guard(qualname: str, op_names: list[str]) -> None:
    def setup_context(ctx, inputs, output):
        ctx.backend = next((a for a in inputs if isinstance(a, str) and a in KERNEL_BACKENDS + ("cpu",)), "?")

    def backward(ctx, *grads):
        if ctx.backend in KERNEL_BACKENDS:
            where, fix = f"backend {ctx.backend!r}", 'call it with backend="reference"'
        else:
            where, fix = "its C++ CPU kernel", f"call dlkern.get_op({op_names[0]!r}).reference"
        raise BackendError(f"dlkern.{' / '.join(op_names)}: double backward (a gradient of a gradient) "
                           f"is not supported on {where}: the backward kernel {qualname} has no derivative; "
                           f"for higher-order gradients {fix}")

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


def guard_double_backward(ops) -> None:
    served: dict[str, list[str]] = {}
    for op in ops:
        for launcher in op.launchers:
            if launcher.endswith("_bwd") and hasattr(torch.ops.dlkern, launcher):
                served.setdefault(f"dlkern::{launcher}", []).append(op.name)
    for qualname, op_names in served.items():
        _guard(qualname, op_names)
