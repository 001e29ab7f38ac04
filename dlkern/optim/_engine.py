"""What the dlkern optimizers share: the backend choice for a param group, collecting the
tensors that have gradients (with torch's errors), and splitting lists by dtype so each launch of
a multi-tensor kernel sees one pointer type per list."""
from __future__ import annotations

from collections import defaultdict

import torch

from dlkern.backend import check_backend_name, choose
from dlkern.registry import OpSpec

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _supports(backend, first_param, params, group):
    reasons = []
    if group.get("differentiable") or group.get("capturable"):
        reasons.append("differentiable/capturable param groups run torch's own implementation")
    for p in params:
        if p.dtype not in KERNEL_DTYPES:
            reasons.append(f"parameter dtype {p.dtype} is not supported (float32, float16, bfloat16)")
            break
        if not p.is_contiguous():
            reasons.append("parameters must be contiguous for the multi-tensor kernels")
            break
        if p.grad is not None and p.grad.is_sparse:
            reasons.append("sparse gradients run torch's own implementation")
            break
    return reasons


def step_spec(name, launchers):
    """An OpSpec for an optimizer step, for the backend chooser. Not in the op registry: the
    registry's generic tests and benchmarks call functional ops; steps are tested in tests/optim."""
    return OpSpec(name=name, family="optim", fn=None, reference=None, supports=_supports,
                  launchers=launchers, backends=("triton", "cuda"), auto_order=("triton", "cuda"))


def choose_backend(op, params, group, backend):
    if not params:
        return "reference"
    return choose(op, (params[0], params, group), {}, backend)


def params_with_grads(group, name, allow_sparse=False):
    """(params, grads) of a group, skipping params without gradient; sparse gradients raise
    unless the optimizer handles them (then the step's supports() routes them to torch)."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse and not allow_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        params.append(p)
        grads.append(p.grad if p.grad.is_sparse or p.grad.is_contiguous() else p.grad.contiguous())
    return params, grads


def by_dtype(*lists):
    """Split parallel lists into groups with equal dtypes in every list: {key: lists}."""
    groups = defaultdict(lambda: tuple([] for _ in lists))
    for items in zip(*lists):
        key = tuple(t.dtype if isinstance(t, torch.Tensor) else None for t in items)
        for bucket, item in zip(groups[key], items):
            bucket.append(item)
    return groups.values()


def scalar(v):
    """A tensor hyper-parameter (tensor lr) as a Python float."""
    return v.item() if isinstance(v, torch.Tensor) else v


class KernelStepMixin:
    """``step`` for a torch optimizer subclass: per param group, the chosen backend runs either
    the subclass's multi-tensor kernel step (``_kernel_step_group``) or torch's own step."""

    step_spec: OpSpec  # set by each optimizer
    allow_sparse = False  # True where torch's optimizer takes sparse gradients

    def __init__(self, *args, backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = None if backend is None else check_backend_name(backend)
        # torch's fused Adam sets this, and GradScaler then leaves unscaling and the inf check to
        # step(); the kernel steps take unscaled gradients, so GradScaler must do both (it then
        # skips step() when a gradient is inf/NaN).
        self._step_supports_amp_scaling = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = params_with_grads(group, type(self).__name__, self.allow_sparse)
            chosen = choose_backend(self.step_spec, params, group, self.backend)
            if chosen == "reference":
                self._torch_step_group(group)
            elif params:
                self._kernel_step_group(group, params, grads, chosen)
        return loss

    def _torch_step_group(self, group):
        """torch's own step for one group (the others are hidden for the call)."""
        groups, self.param_groups = self.param_groups, [group]
        try:
            torch_step = super().step
            # Once any instance of torch's class exists, torch has wrapped its step with the hook
            # runner; our own step already ran the hooks, so call the step inside the wrapper.
            torch_step.__wrapped__(self) if getattr(torch_step, "hooked", False) else torch_step()
        finally:
            self.param_groups = groups
