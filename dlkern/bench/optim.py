"""Optimizer steps for ``dlkern bench``. They are not functional ops, so they stay out of the op
registry (whose generic tests call ops on sample inputs); the harness times them like an op whose
spec says ``mutates_inputs`` (every run gets its own copy of the state).

``adamw_step``: one AdamW step over a model-like list of tensors (10 matrices and 10 bias vectors,
about 10M parameters; 110k on CPU under --quick): ``reference`` is torch's math as dlkern's default
path runs it (torch's fused kernel on CPU), ``torch`` is ``torch.optim.AdamW(fused=True)``,
``triton`` / ``cuda`` dlkern's multi-tensor kernels. Bytes: read p, g, m, v and write p, m, v at
their own dtypes: 28 per fp32 parameter, 14 when all four are bf16, 22 for bf16 params and grads with
fp32 moments (shared/PERF.md)."""
from __future__ import annotations

import weakref

import torch
from torch.optim.adam import adam as torch_adam

from dlkern.optim._engine import _supports, choose_backend
from dlkern.optim.adam import ADAM_STEP, adam_kernel_step
from dlkern.registry import Cost, OpSpec, Sample

HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, maximize=False)


def adamw_step_ref(params, grads, exp_avgs, exp_avg_sqs, state_steps):
    """torch's AdamW step in place (its fused kernel on CPU, as dlkern's CPU default runs it).
    Lists of equal-sized tensors; state_steps: CPU float scalars. Returns params."""
    torch_adam(params, grads, exp_avgs, exp_avg_sqs, [], state_steps, fused=params[0].is_cpu or None,
               decoupled_weight_decay=True, amsgrad=False, **HYPER)
    return params


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, state_steps, *, backend=None):
    """One AdamW step in place on the backend dlkern.optim.AdamW would choose. Returns params."""
    chosen = choose_backend(ADAM_STEP, params, {}, backend)
    if chosen == "reference":
        return adamw_step_ref(params, grads, exp_avgs, exp_avg_sqs, state_steps)
    adam_kernel_step(params, grads, exp_avgs, exp_avg_sqs, None, None, state_steps, chosen, decoupled=True,
                     **HYPER)
    return params


# torch's fused step keeps its step counts on the parameters' device: each CPU step count of a
# sample gets one device twin, made once, so the timed torch step copies nothing.
_device_steps = weakref.WeakKeyDictionary()


def adamw_step_torch(params, grads, exp_avgs, exp_avg_sqs, state_steps):
    """``torch.optim.AdamW(fused=True)``'s step. Returns params."""
    device = params[0].device
    if device.type != "cpu":
        state_steps = [_device_steps.setdefault(s, s.to(device)) for s in state_steps]
    torch_adam(params, grads, exp_avgs, exp_avg_sqs, [], state_steps, fused=True, decoupled_weight_decay=True,
               amsgrad=False, **HYPER)
    return params


def _cases(device, dtype, quick):
    rows = 10 if quick and device.type == "cpu" else 1000
    shapes = [(rows, 1000)] * 10 + [(1000,)] * 10
    gen = torch.Generator().manual_seed(0)
    make = lambda scale: [(torch.randn(s, generator=gen) * scale).to(device, dtype) for s in shapes]  # noqa: E731
    params, grads, exp_avgs = make(1.0), make(1e-2), make(1e-3)
    exp_avg_sqs = [v.abs() for v in make(1e-5)]
    steps = [torch.tensor(10.0) for _ in shapes]  # a step some way into training
    numel = sum(p.numel() for p in params)
    yield Sample(f"{numel / 1e6:.2f}M params, {len(shapes)} tensors",
                 (params, grads, exp_avgs, exp_avg_sqs, steps))


def _cost(sample):
    params, grads, exp_avgs, exp_avg_sqs = sample.args[:4]
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return Cost(fwd_bytes=2 * size(params) + size(grads) + 2 * size(exp_avgs) + 2 * size(exp_avg_sqs), bwd_bytes=0)


ADAMW_STEP = OpSpec(
    name="adamw_step", family="optim", fn=adamw_step, reference=adamw_step_ref,
    supports=lambda backend, params, *rest: _supports(backend, params[0], params, {}),
    bench_cases=_cases, cost=_cost, torch_equivalent=adamw_step_torch, launchers=ADAM_STEP.launchers,
    mutates_inputs=True)

STEPS = (ADAMW_STEP,)
