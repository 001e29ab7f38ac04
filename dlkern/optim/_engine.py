"""What the dlkern optimizers share: the backend choice for a param group, collecting the
tensors that have gradients (with torch's errors), and splitting lists by dtype so each launch of
a multi-tensor kernel sees one pointer type per list."""
from __future__ import annotations

from collections import defaultdict

import torch

from dlkern.backend import check_backend_name, choose
from dlkern.registry import OpSpec

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without torch.distributed
        return None
    return DTensor


def dense_layout(t: torch.Tensor) -> bool:
    """Dense and non-overlapping: the elements fill ``numel`` consecutive memory slots in some
    order (contiguous, channels_last, any permutation of dims). An elementwise update may then run
    over that memory as one flat array, provided every tensor of the step has the same strides."""
    if t.is_contiguous():
        return True
    dims = sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return False
        expected *= n
    return True


def _local(t):
    """What a kernel may address for ``t``: a DTensor's local shard (the update is elementwise,
    so stepping each rank's shard is the whole step); any other tensor as it is."""
    DTensor = _dtensor_type()
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


def _plain(t) -> bool:
    """A tensor the kernels can address: a plain tensor or parameter, or one of the subclasses
    tracing uses to stand for one (FakeTensor, FunctionalTensor: torch.compile, dlkern perf)."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    return type(t) in (torch.Tensor, torch.nn.Parameter) or isinstance(t, (FakeTensor, FunctionalTensor))


def _tensor_reasons(p: torch.Tensor) -> list[str]:
    DTensor = _dtensor_type()
    if DTensor is not None and isinstance(p, DTensor):
        g = p.grad
        if g is not None and (not isinstance(g, DTensor) or g.placements != p.placements
                              or g.device_mesh != p.device_mesh):
            return [f"a DTensor parameter's gradient must have its placements {p.placements}; got "
                    + (str(g.placements) if isinstance(g, DTensor) else f"a plain {type(g).__name__}")]
        p, g = p.to_local(), None if g is None else g.to_local()
    elif not _plain(p):
        return [f"parameters of type {type(p).__module__}.{type(p).__name__} (a tensor subclass) cannot "
                "be addressed by the multi-tensor kernels (plain tensors and DTensors can)"]
    else:
        g = p.grad
    if g is not None and not _plain(g):
        return [f"gradients of type {type(g).__name__} (a tensor subclass) cannot be addressed by the kernels"]
    if not dense_layout(p):
        return ["parameters must be dense (contiguous, channels_last or another permutation of dims) "
                "for the multi-tensor kernels"]
    return []


def _supports(backend, first_param, params, group):
    reasons = []
    if group.get("differentiable") or group.get("capturable"):
        reasons.append("differentiable/capturable param groups run torch's own implementation")
    for p in params:
        if p.dtype not in KERNEL_DTYPES:
            reasons.append(f"parameter dtype {p.dtype} is not supported (float32, float16, bfloat16)")
            break
        if p.grad is not None and p.grad.is_sparse:
            reasons.append("sparse gradients run torch's own implementation")
            break
        layout = _tensor_reasons(p)
        if layout:
            reasons += layout
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
        grads.append(p.grad)
    return params, grads


def same_layout(t, p):
    """``t`` (a gradient or a state of ``p``) with ``p``'s strides, copied only if they differ (a
    non-contiguous gradient; a state loaded from a checkpoint saved in another memory format)."""
    if t is None or t.is_sparse or _local(t).stride() == _local(p).stride():
        return t
    return torch.empty_like(p, dtype=t.dtype).copy_(t)


def by_dtype(*lists):
    """Split parallel lists into groups with equal dtypes in every list: {key: lists}. The tensors
    come out as the kernels address them: a DTensor's local shard, every layout as a flat view of
    its memory (the kernels run over ``numel`` consecutive elements). Each row's tensors must share
    its first's strides (the step gives grads and states their parameter's layout first)."""
    groups = defaultdict(lambda: tuple([] for _ in lists))
    for items in zip(*lists):
        key = tuple(t.dtype if isinstance(t, torch.Tensor) else None for t in items)
        tensors = [_local(t) for t in items if isinstance(t, torch.Tensor)]
        if tensors and tensors[0].numel() == 0:
            continue  # an empty shard (uneven sharding): nothing to step on this rank
        if any(t.shape != tensors[0].shape or t.stride() != tensors[0].stride() for t in tensors[1:]):
            raise RuntimeError("internal error: a gradient or state does not have its parameter's layout")
        for bucket, item in zip(groups[key], items):
            bucket.append(_flat(_local(item)) if isinstance(item, torch.Tensor) else item)
    return groups.values()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's memory, in memory order (writes go to ``t`` itself)."""
    return t.view(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,), t.storage_offset())


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
                grads = [same_layout(g, p) for g, p in zip(grads, params)]
                for p in params:  # states in the parameter's layout, so the flat views line up
                    state = self.state.get(p, {})
                    for key, value in state.items():
                        if torch.is_tensor(value) and value.shape == p.shape and value.dim() > 0:
                            state[key] = same_layout(value, p)
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
