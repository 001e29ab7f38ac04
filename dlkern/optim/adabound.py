"""AdaBound (Luo et al., ICLR 2019, "Adaptive Gradient Methods with Dynamic Bound of Learning
Rate"): Adam whose per-element step size is clipped into bounds that close in on ``final_lr``, so
training moves from Adam-like to SGD-like. torch has no AdaBound; ``_torch_step_group`` here is
the paper's update written in PyTorch (the reference), the kernel step is the fused version.

``final_lr`` follows LR schedules as in the paper's code: the bound target is
``final_lr * lr / base_lr``, with ``base_lr`` the group's initial lr (kept in the group, so it is
saved in state_dicts)."""
from __future__ import annotations

import math

import torch

from dlkern import backend as _backend
from dlkern.optim._engine import KernelStepMixin, by_dtype, scalar, step_spec

ADABOUND_STEP = step_spec("adabound_step", ("multi_tensor_adabound",))


class AdaBound(KernelStepMixin, torch.optim.Optimizer):
    step_spec = ADABOUND_STEP

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8,
                 weight_decay=0, amsbound=False, *, backend: str | None = None):
        checks = [(lr >= 0, f"Invalid learning rate: {lr}"), (eps >= 0, f"Invalid epsilon value: {eps}"),
                  (0 <= betas[0] < 1, f"Invalid beta parameter at index 0: {betas[0]}"),
                  (0 <= betas[1] < 1, f"Invalid beta parameter at index 1: {betas[1]}"),
                  (final_lr >= 0, f"Invalid final learning rate: {final_lr}"),
                  (0 <= gamma < 1, f"Invalid gamma parameter: {gamma}"),
                  (weight_decay >= 0, f"Invalid weight_decay value: {weight_decay}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        defaults = dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, amsbound=amsbound)
        super().__init__(params, defaults, backend=backend)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("base_lr", scalar(self.param_groups[-1]["lr"]))

    def _state(self, p, amsbound):
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsbound:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        return state

    def _bounds(self, group, step):
        """(Adam step size, lower bound, upper bound) after ``step`` steps, in float64."""
        beta1, beta2 = group["betas"]
        lr = scalar(group["lr"])
        step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        final_lr = group["final_lr"] * lr / group["base_lr"]
        return (step_size, final_lr * (1 - 1 / (group["gamma"] * step + 1)),
                final_lr * (1 + 1 / (group["gamma"] * step)))

    @torch.no_grad()
    def _torch_step_group(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self._state(p, group["amsbound"])
            grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if group["amsbound"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                denom = state["max_exp_avg_sq"].sqrt().add_(group["eps"])
            else:
                denom = exp_avg_sq.sqrt().add_(group["eps"])
            step_size, lower, upper = self._bounds(group, state["step"].item())
            p.sub_(torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper).mul_(exp_avg))

    def _kernel_step_group(self, group, params, grads, backend):
        amsbound = group["amsbound"]
        states = [self._state(p, amsbound) for p in params]
        bounds = [self._bounds(group, s["step"].item()) for s in states]
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        vmax = [s.get("max_exp_avg_sq") for s in states]
        sizes, lowers, uppers = ([b[i] for b in bounds] for i in range(3))
        beta1, beta2 = group["betas"]
        launch = _backend.launchers(backend, params[0].device).multi_tensor_adabound
        for ps, gs, ms, vs, vms, ss, lo, up in by_dtype(params, grads, m, v, vmax, sizes, lowers, uppers):
            launch(ps, gs, ms, vs, vms if amsbound else None, ss, lo, up, beta1, beta2, group["eps"],
                   group["weight_decay"], amsbound)
