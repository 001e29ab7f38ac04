"""torch.autocast for dlkern's ops: each public op follows the policy torch applies to its torch
equivalent, on every backend, so a model gives the same dtypes with dlkern as with torch.

torch's policies (ATen/autocast_mode.h and autocast_mode.cpp; tests/test_autocast.py checks the
table below against the shipped header and against torch's CPU behaviour):

* ``LOWER``: convolutions and scaled-dot-product attention run in the autocast dtype (fp16/bf16)
  on CPU and CUDA;
* ``FP32_ON_CUDA``: layer_norm, rms_norm and group_norm run in fp32 under CUDA autocast; CPU
  autocast leaves them alone (they run on the given dtypes, e.g. bf16 input with fp32 weight);
* ``NONE``: batch_norm, instance_norm, weight norm and the ops torch has no equivalent of (the
  scan, the flow layers): no cast.

As in torch, a cast applies to floating-point tensors other than float64, and the op itself runs
with autocast off, so its internals (the reference's matmuls, say) are not cast again: the
dtypes an op computes in do not depend on the backend that serves it.
"""
from __future__ import annotations

import functools

import torch

LOWER = {"cpu": "lower", "cuda": "lower"}
FP32_ON_CUDA = {"cuda": "fp32"}
NONE: dict = {}


def _first_tensor(args, kwargs):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for a in kwargs.values():
        if isinstance(a, torch.Tensor):
            return a
    return None


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def cast_args(policy: dict, device_type: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments as torch's autocast would hand them to the op on ``device_type`` (autocast
    enabled there): unchanged, or eligible tensors cast to fp32 or to the autocast dtype."""
    kind = policy.get(device_type)
    if kind is None:
        return args, kwargs
    dtype = torch.float32 if kind == "fp32" else torch.get_autocast_dtype(device_type)
    cast = lambda a: a.to(dtype) if _eligible(a) else a  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def follows_autocast(policy: dict):
    """Decorator for a public op: under ``torch.autocast`` on the device of its first tensor
    argument, cast the arguments by ``policy`` (a device type -> "lower" | "fp32" table) and run
    the op with autocast off on that device."""
    def wrap(fn):
        @functools.wraps(fn)
        def op(*args, **kwargs):
            t = _first_tensor(args, kwargs)
            if t is None:
                return fn(*args, **kwargs)
            device_type = t.device.type
            if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
                return fn(*args, **kwargs)
            args, kwargs = cast_args(policy, device_type, args, kwargs)
            with torch.autocast(device_type, enabled=False):
                return fn(*args, **kwargs)
        op.autocast_policy = policy
        return op
    return wrap
