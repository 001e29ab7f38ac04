"""RMSprop (alpha, centered, momentum, weight decay, maximize) on the multi-tensor kernel; a
subclass of torch.optim.RMSprop with torch's state layout."""
from __future__ import annotations

import torch

from dlkern import backend as _backend
from dlkern.optim._engine import KernelStepMixin, by_dtype, scalar, step_spec

RMSPROP_STEP = step_spec("rmsprop_step", ("multi_tensor_rmsprop",))


class RMSprop(KernelStepMixin, torch.optim.RMSprop):
    """Drop-in for ``torch.optim.RMSprop`` (``backend=`` picks the step's backend)."""

    step_spec = RMSPROP_STEP

    def _kernel_step_group(self, group, params, grads, backend):
        momentum, centered = group["momentum"], group["centered"]
        sq, gavg, bufs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:  # torch's lazily created state
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if momentum > 0:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if centered:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            sq.append(state["square_avg"])
            gavg.append(state.get("grad_avg"))
            bufs.append(state.get("momentum_buffer"))
            steps.append(state["step"])
        torch._foreach_add_(steps, 1)
        launch = _backend.launchers(backend, params[0].device).multi_tensor_rmsprop
        for ps, gs, sqs, gas, bs in by_dtype(params, grads, sq, gavg, bufs):
            launch(ps, gs, sqs, gas if centered else None, bs if momentum > 0 else None, scalar(group["lr"]),
                   group["alpha"], group["eps"], group["weight_decay"], momentum, centered, group["maximize"])
