"""The one place that chooses between the ``reference``, ``triton`` and ``cuda`` backends.

Precedence, highest first: the per-call ``backend=`` keyword, the innermost ``use_backend(...)``
context, ``set_backend(...)``, the ``DLKERN_BACKEND`` environment variable (read at import), ``auto``.

* ``auto``: kernels for CUDA tensors (each op lists its kernel backends in preference order),
  the reference for CPU tensors. When no kernel backend can serve CUDA inputs it falls back to the
  reference with a one-time warning that names the reason.
* A backend asked for by name never falls back: it raises :class:`BackendError` naming why it
  cannot serve the inputs (device, dtype, size limit, extension not built, ...).
* ``triton`` on CPU tensors runs Triton's interpreter, which must be enabled with
  ``TRITON_INTERPRET=1`` before :mod:`dlkern.kernels` is imported.
* ``cuda`` on CPU tensors runs the emulation build ``dlkern._C_emu`` when ``DLKERN_CUDA_EMULATE=1``.
* Differentiation modes the kernels have no rule for (forward AD, torch.func's grad transforms;
  they carry a reverse-mode autograd formula only) are reasons against every kernel backend.
* Empty inputs (a tensor argument with no elements; optimizer steps aside) run the reference on
  every backend: there is nothing for a kernel to compute, and torch's answers for them (zeros
  from attention over no keys, zero parameter gradients, untouched running statistics) are the
  reference's.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch
from torch.autograd import forward_ad

from dlkern import _ext

BACKENDS = ("auto", "reference", "triton", "cuda")
KERNEL_BACKENDS = ("triton", "cuda")


class BackendError(RuntimeError):
    """A backend asked for by name cannot serve the given inputs."""


def check_backend_name(name, argument="backend"):
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name


def _backend_from_env() -> tuple[str, str | None]:
    """``DLKERN_BACKEND`` and, when its value is not a backend, why the reference runs instead:
    ``import dlkern`` never fails on the environment (``dlkern info`` shows the reason)."""
    value = os.environ.get("DLKERN_BACKEND", "auto") or "auto"
    if value in BACKENDS:
        return value, None
    problem = (f"DLKERN_BACKEND={value!r} is not one of {', '.join(map(repr, BACKENDS))}; "
               "the reference backend runs instead")
    warnings.warn(f"dlkern: {problem}", RuntimeWarning, stacklevel=2)
    return "reference", problem


_global_backend, env_problem = _backend_from_env()
_context_stack: list[str] = []
_warned: set = set()


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``auto``, ``reference``, ``triton`` or ``cuda``)."""
    global _global_backend
    _global_backend = check_backend_name(name)


def get_backend() -> str:
    """The backend in force when no per-call ``backend=`` is given."""
    return _context_stack[-1] if _context_stack else _global_backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with dlkern.use_backend("triton"): ...`` runs every dlkern op inside on that backend."""
    _context_stack.append(check_backend_name(name))
    try:
        yield
    finally:
        _context_stack.pop()


# ---------------------------------------------------------------------------------------------
# Availability: why a backend cannot run at all on a device (independent of the op)
# ---------------------------------------------------------------------------------------------
def triton_interpreter_enabled() -> bool:
    # dlkern.kernels records TRITON_INTERPRET as it was when the kernels were defined.
    return _ext.kernels is not None and _ext.kernels.INTERPRET


def cuda_emulation_requested() -> bool:
    return os.environ.get("DLKERN_CUDA_EMULATE", "0") == "1"


def availability(backend: str, device: torch.device) -> list[str]:
    """Reasons ``backend`` cannot run on ``device`` (empty list: it can)."""
    if backend == "reference":
        return []
    if backend == "triton":
        if _ext.triton_import_error():
            return [f"triton is not importable: {_ext.triton_import_error()}"]
        if device.type == "cuda":
            return []
        if device.type == "cpu":
            if triton_interpreter_enabled():
                return []
            return ["triton needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
                    "importing dlkern to run Triton's interpreter"]
        return [f"triton does not support device type {device.type!r}"]
    if backend == "cuda":
        if device.type == "cuda":
            return [] if _ext.cuda_module() is not None else [_ext.cuda_unavailable_reason()]
        if device.type == "cpu":
            if not cuda_emulation_requested():
                return ["the cuda backend needs a CUDA device (got CPU tensors); set "
                        "DLKERN_CUDA_EMULATE=1 to run the CUDA kernels in the CPU emulation build"]
            return [] if _ext.emu_module() is not None else [_ext.emu_unavailable_reason()]
        return [f"the cuda backend does not support device type {device.type!r}"]
    raise ValueError(f"unknown backend {backend!r}")


def launchers(backend: str, device: torch.device):
    """The module holding the launchers of ``backend``: Triton and CUDA launchers share names and
    signatures, so an op calls ``launchers(b, dev).layer_norm_fwd(...)`` whatever ``b`` is."""
    if backend == "triton":
        return _ext.kernels
    if backend == "cuda":
        return _ext.cuda_module() if device.type == "cuda" else _ext.emu_module()
    raise ValueError(f"backend {backend!r} has no launchers")


# ---------------------------------------------------------------------------------------------
# The chooser
# ---------------------------------------------------------------------------------------------
def _tensors_in(args, kwargs) -> list:
    """The tensor arguments, those inside list/tuple arguments too (multi-tensor optimizer steps)."""
    tensors = []
    for a in list(args) + list(kwargs.values()):
        tensors += [t for t in a if isinstance(t, torch.Tensor)] if isinstance(a, (list, tuple)) else [a]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def _device_of(tensors) -> torch.device:
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device; got {sorted(map(str, devices))}")
    return devices.pop() if devices else torch.device("cpu")


def _has_dtensor(tensors) -> bool:
    # No DTensor can exist before its module is imported: no import (and no cost) on the hot path.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def _transform_keys() -> set:
    stack = getattr(torch._C._functorch, "get_interpreter_stack", lambda: None)() or ()
    return {i.key() for i in stack}


def forward_ad_active(tensors) -> bool:
    """A tangent rides on this call: torch.func's jvp/jacfwd/hessian or ``forward_ad.make_dual``
    (never while compiling: traced graphs take no tangents, and dynamo need not trace this)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.TransformType.Jvp in _transform_keys():
        return True
    return forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def autodiff_transforms(tensors) -> list[str]:
    """The differentiation modes active on this call that the kernels have no rule for: their
    custom ops carry a reverse-mode (``torch.autograd``) formula only. Forward-mode AD would
    otherwise see a zero tangent, functorch's grad transforms a generic error."""
    if torch.compiler.is_compiling():  # as in forward_ad_active
        return []
    active = []
    if forward_ad_active(tensors):
        active.append("forward-mode AD (torch.func.jvp/jacfwd/hessian, forward_ad.make_dual)")
    if torch._C._functorch.TransformType.Grad in _transform_keys():
        active.append("a torch.func reverse-mode transform (grad, grad_and_value, vjp, jacrev)")
    return active


def reasons_against(op, backend: str, args, kwargs) -> list[str]:
    """Everything that stops ``backend`` from serving ``op`` on these inputs."""
    if backend == "reference":
        return []
    if backend not in op.backends:
        return [f"{op.name} has no {backend} implementation"]
    tensors = _tensors_in(args, kwargs)
    device = _device_of(tensors)
    reasons = availability(backend, device)
    if op.family != "optim" and _has_dtensor(tensors):  # optimizer steps step DTensors' shards (optim/_engine)
        reasons.append("DTensor inputs: the kernels take plain tensors and no DTensor sharding rule is "
                       "registered for them (call the op on .to_local() tensors where the placement allows, "
                       "or use the reference backend, which runs on DTensors)")
    if backend == "triton" and op.uses_tl_dot and device.type == "cpu" and any(
            t.dtype == torch.bfloat16 for t in tensors):
        reasons.append(f"Triton's CPU interpreter (triton {_ext.triton_version()}) computes tl.dot with bfloat16 "
                       f"operands wrongly and the triton kernels of {op.name} use it; use float16/float32 "
                       "inputs, or the reference or cuda backend, on CPU")
    for transform in autodiff_transforms(tensors):
        reasons.append(f"{transform} is active and the {backend} kernels of {op.name} have no rule for it; "
                       f"call it with backend=\"reference\" (auto does so on any device)")
    if not reasons:
        missing = [name for name in op.launchers if not hasattr(launchers(backend, device), name)]
        if missing:
            reasons.append(f"this build of the {backend} kernels has no {', '.join(missing)} (rebuild dlkern)")
    return reasons + list(op.supports(backend, *args, **kwargs))


def choose(op, args, kwargs, backend: str | None = None) -> str:
    """Pick the backend that runs ``op`` on these arguments (see the module docstring)."""
    name = check_backend_name(backend) if backend is not None else get_backend()
    if name == "reference":
        return name
    if op.family != "optim" and any(t.numel() == 0 for t in _tensors_in(args, kwargs)):
        return "reference"  # empty inputs: see the module docstring
    if name != "auto":
        reasons = reasons_against(op, name, args, kwargs)
        if reasons:
            raise BackendError(f"dlkern.{op.name}: backend {name!r} cannot serve these inputs: "
                               + "; ".join(reasons))
        return name
    if _device_of(_tensors_in(args, kwargs)).type != "cuda":
        return "reference"
    all_reasons = []
    for candidate in op.auto_order:
        reasons = reasons_against(op, candidate, args, kwargs)
        if not reasons:
            return candidate
        all_reasons.append(f"{candidate}: " + "; ".join(reasons))
    key = (op.name, tuple(all_reasons))
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"dlkern.{op.name} falls back to the reference implementation ("
                      + " | ".join(all_reasons) + ")", RuntimeWarning, stacklevel=3)
    return "reference"
