"""Adam and AdamW (and AMSGrad) on the multi-tensor kernels. Subclasses of torch's optimizers:
the constructor (and its errors), param groups, state_dict layout, hooks and schedulers are
torch's own, so checkpoints move both ways; only ``step`` runs dlkern's kernels.
``foreach``/``fused`` are accepted and apply when the step runs torch's implementation
(the reference backend, e.g. on CPU under ``auto``).

``master_weights=True`` (a group setting, saved with the groups): fp16/bf16 parameters are updated
through an fp32 copy kept in the optimizer state under ``"master_param"``; their ``exp_avg``,
``exp_avg_sq`` (and ``max_exp_avg_sq``) are fp32 too. The kernels read the master, write it and
the parameter's rounding in one pass; the reference runs torch's Adam on the masters and copies
them back. A checkpoint loaded into ``torch.optim.Adam(W)`` casts the states to the parameter
dtype (and carries ``master_param`` along unused); loaded back, the states are fp32 again."""
from __future__ import annotations

import math

import torch
from torch.optim.adam import adam as torch_adam

from dlkern import backend as _backend
from dlkern.optim._engine import KernelStepMixin, by_dtype, scalar, step_spec

ADAM_STEP = step_spec("adam_step", ("multi_tensor_adam",))
_FUSED_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _has_master(group, p):
    return bool(group.get("master_weights")) and p.dtype in _LOW_PRECISION


class _AdamKernelStep(KernelStepMixin):
    step_spec = ADAM_STEP
    _decoupled_default = False

    def __init__(self, params, *args, master_weights: bool = False, **kwargs):
        self._master_weights = master_weights  # read by add_param_group during torch's __init__
        super().__init__(params, *args, **kwargs)

    def add_param_group(self, param_group):
        param_group.setdefault("master_weights", self._master_weights)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict):
        # A torch checkpoint has no master_weights: the groups keep this optimizer's setting.
        groups = [dict(g) for g in state_dict["param_groups"]]
        for saved, current in zip(groups, self.param_groups):
            saved.setdefault("master_weights", current.get("master_weights", False))
        super().load_state_dict({**state_dict, "param_groups": groups})
        # torch cast every state to its parameter's dtype: master-weight states become fp32 again,
        # from the checkpoint's own values (the master exactly as saved).
        for saved, group in zip(groups, self.param_groups):
            for pid, p in zip(saved["params"], group["params"]):
                if not _has_master(group, p) or pid not in state_dict["state"]:
                    continue
                for key, value in state_dict["state"][pid].items():
                    if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                        self.state[p][key] = value.to(p.device, torch.float32, copy=True)

    def _state(self, group, p):
        """The state of p in torch's layout (fp32 states and ``master_param`` with master weights)."""
        state = self.state[p]
        master = _has_master(group, p)
        if len(state) == 0:
            dtype = torch.float32 if master else p.dtype
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
                state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if master and "master_param" not in state:  # first step, or a checkpoint from torch
            state["master_param"] = p.detach().float()
        return state

    def _torch_step_group(self, group):
        if any(_has_master(group, p) for p in group["params"]):
            self._torch_master_step(group)
        else:
            self._torch_fused_step(group)

    def _torch_master_step(self, group):
        """torch's Adam math on the fp32 masters (fp32 params as they are), rounded back."""
        params = [p for p in group["params"] if p.grad is not None]
        states = [self._state(group, p) for p in params]
        masters = [s.get("master_param", p) for s, p in zip(states, params)]
        torch_adam(
            masters, [p.grad.float() if m is not p else p.grad for m, p in zip(masters, params)],
            [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], [s["step"] for s in states],
            foreach=False, decoupled_weight_decay=group.get("decoupled_weight_decay", self._decoupled_default),
            amsgrad=group["amsgrad"], beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
        with torch.no_grad():
            for m, p in zip(masters, params):
                if m is not p:
                    p.copy_(m)

    def _torch_fused_step(self, group):
        """torch's step; when the user chose no implementation and every parameter is a CPU float
        tensor, torch's fused CPU kernel runs: about 6x faster than its default loop at 10M
        parameters, same math."""
        fused = group.get("fused")
        auto_fused = (fused is None and not group.get("foreach") and not group.get("differentiable")
                      and all(p.device.type == "cpu" and p.dtype in _FUSED_CPU_DTYPES for p in group["params"]))
        if auto_fused:
            group["fused"] = True
        try:
            super()._torch_step_group(group)
        finally:
            group["fused"] = fused

    def _kernel_step_group(self, group, params, grads, backend):
        amsgrad = group["amsgrad"]
        states = [self._state(group, p) for p in params]  # torch's layout, so state_dicts interchange
        adam_kernel_step(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else None,
            [s.get("master_param") for s in states], [s["step"] for s in states], backend,
            beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], decoupled=group.get("decoupled_weight_decay", self._decoupled_default),
            maximize=group["maximize"])


def adam_kernel_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
                     backend, *, beta1, beta2, lr, weight_decay, eps, decoupled, maximize):
    """One Adam/AdamW step with the multi-tensor kernels of ``backend``, in place: the step counts
    advance, each tensor's bias corrections are computed on the host in float64 (as torch does),
    one launch per dtype group. max_exp_avg_sqs: a list for AMSGrad, else None; master_params:
    per tensor an fp32 master or None."""
    if not params:
        return
    beta1, beta2, lr = scalar(beta1), scalar(beta2), scalar(lr)
    amsgrad = max_exp_avg_sqs is not None
    torch._foreach_add_(state_steps, 1)
    step_sizes, bc2_sqrts = [], []
    for s in state_steps:
        n = s.item()
        step_sizes.append(lr / (1 - beta1 ** n))
        bc2_sqrts.append(math.sqrt(1 - beta2 ** n))
    vmax = max_exp_avg_sqs if amsgrad else [None] * len(params)
    masters = master_params if master_params is not None else [None] * len(params)
    launch = _backend.launchers(backend, params[0].device).multi_tensor_adam
    for ps, gs, ms, vs, vms, ws, ss, bs in by_dtype(params, grads, exp_avgs, exp_avg_sqs, vmax, masters,
                                                    step_sizes, bc2_sqrts):
        launch(ps, gs, ms, vs, vms if amsgrad else None, ws if ws[0] is not None else None, ss, bs,
               beta1, beta2, eps, weight_decay, lr, decoupled, amsgrad, maximize)


class Adam(_AdamKernelStep, torch.optim.Adam):
    """Drop-in for ``torch.optim.Adam`` (``backend=`` picks the step's backend)."""


class AdamW(_AdamKernelStep, torch.optim.AdamW):
    """Drop-in for ``torch.optim.AdamW`` (``backend=`` picks the step's backend)."""
    _decoupled_default = True
