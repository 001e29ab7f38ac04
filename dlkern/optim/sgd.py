"""SGD (momentum, dampening, Nesterov, weight decay, maximize) on the multi-tensor kernel; a
subclass of torch.optim.SGD, so everything but ``step`` is torch's own."""
from __future__ import annotations

import torch

from dlkern import backend as _backend
from dlkern.optim._engine import KernelStepMixin, by_dtype, scalar, step_spec

SGD_STEP = step_spec("sgd_step", ("multi_tensor_sgd",))


class SGD(KernelStepMixin, torch.optim.SGD):
    """Drop-in for ``torch.optim.SGD`` (``backend=`` picks the step's backend)."""

    step_spec = SGD_STEP

    def _kernel_step_group(self, group, params, grads, backend):
        momentum = group["momentum"]
        launch = _backend.launchers(backend, params[0].device).multi_tensor_sgd
        args = (scalar(group["lr"]), momentum, group["dampening"], scalar(group["weight_decay"]),
                group["nesterov"], group["maximize"])
        if momentum == 0:
            for ps, gs in by_dtype(params, grads):
                launch(ps, gs, None, *args, False)
            return
        # Buffers that do not exist yet start as the gradient itself (torch's first step).
        first, later = ([], [], []), ([], [], [])
        for p, g in zip(params, grads):
            buf = self.state[p].get("momentum_buffer")
            target = later if buf is not None else first
            if buf is None:
                buf = self.state[p]["momentum_buffer"] = torch.empty_like(p, memory_format=torch.preserve_format)
            for lst, item in zip(target, (p, g, buf)):
                lst.append(item)
        for is_first, (ps, gs, bs) in ((True, first), (False, later)):
            for dps, dgs, dbs in by_dtype(ps, gs, bs):
                launch(dps, dgs, dbs, *args, is_first)
