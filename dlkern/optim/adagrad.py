"""Adagrad on the multi-tensor kernel; a subclass of torch.optim.Adagrad (state created at
construction, as torch does). Sparse gradients run torch's own sparse update."""
from __future__ import annotations

import torch

from dlkern import backend as _backend
from dlkern.optim._engine import KernelStepMixin, by_dtype, scalar, step_spec

ADAGRAD_STEP = step_spec("adagrad_step", ("multi_tensor_adagrad",))


class Adagrad(KernelStepMixin, torch.optim.Adagrad):
    """Drop-in for ``torch.optim.Adagrad`` (``backend=`` picks the step's backend)."""

    step_spec = ADAGRAD_STEP
    allow_sparse = True

    def _kernel_step_group(self, group, params, grads, backend):
        lr, lr_decay = scalar(group["lr"]), group["lr_decay"]
        sums, steps = [self.state[p]["sum"] for p in params], [self.state[p]["step"] for p in params]
        torch._foreach_add_(steps, 1)
        clrs = [lr / (1 + (s.item() - 1) * lr_decay) for s in steps]
        launch = _backend.launchers(backend, params[0].device).multi_tensor_adagrad
        for ps, gs, ss, cs in by_dtype(params, grads, sums, clrs):
            launch(ps, gs, ss, cs, group["eps"], group["weight_decay"], group["maximize"])
