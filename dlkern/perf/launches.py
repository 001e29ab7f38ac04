"""What launches: run every op's real launchers on fake CUDA tensors and record each Triton launch.

The op's public function runs unchanged, on the bench cases it would get on a GPU
(``op.bench_cases(cuda, ...)``), inside torch's ``FakeTensorMode``: tensors carry shapes, strides
and dtypes but no data, so nothing is computed and no GPU is needed. Two things are redirected for
the duration of :func:`recording`:

* ``JITFunction.run`` records (kernel, arguments, options, grid) instead of compiling and
  launching; ``Autotuner.run`` runs Triton's own pruner (``prune_configs``) and records one launch
  per config it keeps (the autotuner would time them on a GPU; :mod:`dlkern.perf.pipeline` marks as
  ``picked`` the one the model predicts fastest);
* dlkern's ``torch.library`` custom ops use their real implementation under the fake mode (their
  registered fake implementation would skip the launchers), and ``torch.cuda.get_device_properties``
  answers for the modelled GPU (launchers size persistent grids from its SM count).

Tensor arguments are kept as :class:`ArgTensor` (dtype, shape, strides and an address: a fresh
allocation is 256-byte aligned as cudaMalloc's, a view adds its storage offset), which is what
Triton's specialization reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import warnings
from typing import Any

import torch

ALLOC_ALIGN = 256   # cudaMalloc / the caching allocator: every block starts 256-byte aligned


@dataclasses.dataclass
class ArgTensor:
    """A tensor argument as the JIT's specialization sees it."""
    dtype: torch.dtype
    shape: tuple
    strides: tuple
    address: int

    def data_ptr(self) -> int:
        return self.address

    def stride(self, dim=None):
        return self.strides if dim is None else self.strides[dim]

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def span_bytes(self) -> int:
        """Bytes between the first and the last element (what the kernel can touch at most)."""
        if self.numel() == 0:
            return 0
        return (1 + sum((n - 1) * abs(st) for n, st in zip(self.shape, self.strides))) * self.element_size()


def _arg(value):
    if isinstance(value, torch.Tensor):
        return ArgTensor(value.dtype, tuple(value.shape), tuple(value.stride()),
                         ALLOC_ALIGN * 1024 + value.storage_offset() * value.element_size())
    return value


@dataclasses.dataclass
class Launch:
    """One kernel launch (one autotune config of it) as a launcher would start it."""
    fn: Any                     # the JITFunction
    args: tuple                 # positional arguments (ArgTensor for tensors)
    kwargs: dict                # keyword arguments: constexprs and options (num_warps, num_stages)
    grid: tuple
    group: int                  # launches of one autotuned call share a group
    configs_kept: int           # how many configs the pruner kept for that call
    config: dict                # the autotune config's kwargs + num_warps/num_stages ({} if none)
    op: str = ""
    case: str = ""
    dtype: str = ""
    mode: str = ""              # "fwd", "bwd" or "step"
    index: int = 0              # position of the launch in its pass

    @property
    def kernel(self) -> str:
        return self.fn.__name__

    def footprint(self) -> int:
        """Bytes of memory the launch's tensor arguments span: an upper bound of the distinct bytes
        it can move (an alias passed twice counts twice, so the bound only loosens)."""
        return sum(a.span_bytes() for a in self.args if isinstance(a, ArgTensor))

    @property
    def module(self) -> str:
        return self.fn.fn.__module__


class _Recorder:
    def __init__(self):
        self.launches: list[Launch] = []
        self.group = 0
        self.tuning: tuple | None = None   # (group, kept, config) while an autotuned call records
        self.first_config_only = False     # --quick: the first config the pruner keeps (the heaviest)

    def record(self, fn, args, kwargs, grid):
        from triton.runtime.jit import create_function_from_signature
        from triton.compiler import make_backend
        from triton.backends.compiler import GPUTarget

        args = tuple(_arg(a) for a in args)
        kwargs = {k: _arg(v) for k, v in kwargs.items() if k not in ("warmup", "grid")}
        if callable(grid):
            binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
            grid = grid(binder(*args, **kwargs)[0])
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        if self.tuning is None:
            self.group += 1
            group, kept, config = self.group, 1, {}
        else:
            group, kept, config = self.tuning
        self.launches.append(Launch(fn, args, kwargs, grid, group, kept, config))


_recorder: _Recorder | None = None
_tensor_inputs: dict = {}   # autograd node of a Python Function -> which of its inputs were tensors


def _function_apply(cls, *args, **kwargs):
    """torch.autograd.Function.apply, remembering which inputs were tensors: a Python Function's
    node has an edge per tensor input only, while its backward returns a gradient per input."""
    out = _ORIGINAL_APPLY.__get__(None, cls)(*args, **kwargs)
    first = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(first, torch.Tensor) and first.grad_fn is not None:
        _tensor_inputs[first.grad_fn] = [isinstance(a, torch.Tensor) for a in args]
    return out


_ORIGINAL_APPLY = torch.autograd.Function.__dict__["apply"]


def _jit_run(self, *args, grid, warmup, **kwargs):
    _recorder.record(self, args, kwargs, grid)


def _autotuner_run(self, *args, **kwargs):
    self.nargs = dict(zip(self.arg_names, args))
    kept = self.prune_configs(kwargs) if len(self.configs) > 1 else list(self.configs)
    n_kept = len(kept)
    if _recorder.first_config_only:
        kept = kept[:1]
    _recorder.group += 1
    for config in kept:
        cfg = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
        _recorder.tuning = (_recorder.group, n_kept, cfg)
        try:
            self.fn.run(*args, **kwargs, **config.all_kwargs())
        finally:
            _recorder.tuning = None
    self.nargs = None


def device_properties(arch):
    """What ``torch.cuda.get_device_properties`` answers for the modelled GPU."""
    from dlkern.perf.model import ARCHS
    spec = ARCHS[arch]
    return types.SimpleNamespace(name=spec.device, multi_processor_count=spec.sms, major=spec.cc // 10,
                                 minor=spec.cc % 10, total_memory=spec.memory_bytes,
                                 L2_cache_size=spec.l2_bytes, warp_size=32)


@contextlib.contextmanager
def recording(arch="sm_90a", first_config_only=False):
    """Inside: fake CUDA tensors, Triton launches recorded into the yielded recorder."""
    global _recorder
    from torch._library.custom_ops import OPDEFS
    from torch._subclasses.fake_tensor import FakeTensorMode
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import dlkern.ops  # noqa: F401  (registers the custom ops)

    saved = [(JITFunction, "run", JITFunction.run), (Autotuner, "run", Autotuner.run),
             (torch.autograd.Function, "apply", _ORIGINAL_APPLY),
             (torch.cuda, "get_device_properties", torch.cuda.get_device_properties)]
    opdefs = [d for name, d in list(OPDEFS.items()) if name.startswith("dlkern::")]
    fakes = [(d, d._abstract_fn) for d in opdefs]
    _recorder = _Recorder()
    _recorder.first_config_only = first_config_only
    JITFunction.run, Autotuner.run = _jit_run, _autotuner_run
    torch.autograd.Function.apply = classmethod(_function_apply)
    torch.cuda.get_device_properties = lambda *a, **k: device_properties(arch)
    for d in opdefs:
        d._abstract_fn = d._init_fn   # the real implementation: it calls the launchers
    try:
        with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            # launchers compare or tabulate data pointers; fake tensors warn about it, harmlessly here
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            mode.cache_enabled = False  # a cached fake result would skip the launchers
            yield _recorder
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        for d, fn in fakes:
            d._abstract_fn = fn
        _recorder = None
        _tensor_inputs.clear()


# ---------------------------------------------------------------------------------------------
# Driving the ops
# ---------------------------------------------------------------------------------------------
def perf_ops():
    """Every registered op, then the optimizer steps (as ``dlkern bench`` orders them)."""
    import dlkern
    from dlkern.bench.optim import STEPS
    return {op.name: op for op in [*dlkern.all_ops(), *STEPS]}


def _passes(op, sample, backprop=None):
    """(mode, thunk) pairs: the no-grad forward the bench times as ``fwd``, and the backward
    (after a grad-enabled forward that is not recorded), or the one step of an optimizer.
    ``backprop(outs, cotangents)`` backpropagates (default: :func:`_run_graph`)."""
    from dlkern.bench.harness import _differentiable, _leaves, _tensors

    fn = lambda *a, **k: op.fn(*a, backend="triton", **k)  # noqa: E731
    if op.mutates_inputs:
        return [("step", lambda: fn(*sample.args, **sample.kwargs))]

    def forward():
        with torch.no_grad():
            fn(*sample.args, **sample.kwargs)

    state = {}

    def prepare():
        args, leaves = _leaves(sample.args, sample.grad_inputs)
        with torch.enable_grad():
            outs = _tensors(fn(*args, **sample.kwargs))
            cots = [torch.empty_like(o) if isinstance(o, torch.Tensor) and o.is_floating_point() else None
                    for o in outs]
            state["graph"] = _differentiable(outs, cots), leaves

    def backward():
        (outs, cots), _ = state["graph"]
        (backprop or _run_graph)(outs, cots)

    passes = [("fwd", forward)]
    if sample.grad_inputs:
        passes.append(("bwd", backward))
        passes.insert(1, ("prepare", prepare))
    return passes


def _custom_op_outputs(node) -> int:
    """How many outputs the custom op behind an autograd node returns (0 if it is not one): its
    backward takes one gradient per output, None for those nothing depends on."""
    prefix = "GeneratedBackwardFor_dlkern_"
    name = type(node).__name__
    if not name.startswith(prefix) or not name.endswith("_defaultBackward"):
        return 0
    op = getattr(torch.ops.dlkern, name[len(prefix):-len("_defaultBackward")])
    return len(op.default._schema.returns)


def _run_graph(outs, cots):
    """Backpropagate by calling the autograd nodes in topological order from Python. The autograd
    engine itself would initialise a CUDA context for the fake CUDA tensors, which needs a GPU."""
    order, seen = [], set()

    def visit(node):  # depth-first post-order: a node after every node it feeds
        stack = [(node, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n is None or n in seen:
                continue
            seen.add(n)
            stack.append((n, True))
            stack.extend((nxt, False) for nxt, _ in n.next_functions)

    grads = {}
    for o, c in zip(outs, cots):
        visit(o.grad_fn)
        grads.setdefault(o.grad_fn, {})[o.output_nr] = c
    for node in reversed(order):
        if type(node).__name__ == "AccumulateGrad":
            continue
        given = grads.pop(node, {})
        call = node.apply if hasattr(node, "_forward_cls") else node  # a Python Function's node
        n_out = max(_custom_op_outputs(node), max(given, default=0) + 1)
        results = call(*[given.get(i) for i in range(n_out)])
        results = results if isinstance(results, tuple) else (results,)
        mask = _tensor_inputs.get(node)
        if mask is not None:  # one gradient per input -> one per edge (tensor input)
            results = tuple(g for g, is_tensor in zip(results, mask) if is_tensor)
        for (nxt, nr), g in zip(node.next_functions, results):
            if nxt is None or g is None:
                continue
            slot = grads.setdefault(nxt, {})
            slot[nr] = g if nr not in slot else slot[nr] + g


def enumerate_launches(op, dtype, quick, arch="sm_90a", errors=None):
    """(case name, Sample, Cost, [Launch]) for every bench case of ``op`` in ``dtype`` on ``arch``
    (``quick``: the bench's quick cases, and of an autotuned call only the first config kept).
    A pass that fails to run is reported in ``errors`` (op, case, message); its launches recorded
    before the failure are kept."""
    out = []
    with recording(arch, first_config_only=quick) as rec:
        try:
            cases = list(op.bench_cases(torch.device("cuda"), dtype, quick))
        except Exception as exc:
            if errors is not None:
                errors.append((op.name, "*", f"bench_cases: {type(exc).__name__}: {exc}"))
            return out
        for sample in cases:
            try:
                cost = op.cost(sample)
            except Exception:
                cost = None
            launches = []
            for mode, thunk in _passes(op, sample):
                start = len(rec.launches)
                try:
                    thunk()
                except Exception as exc:
                    if errors is not None:
                        errors.append((op.name, sample.name, f"{mode}: {type(exc).__name__}: "
                                                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"))
                    if mode == "prepare":
                        break
                new = rec.launches[start:]
                if mode != "prepare":
                    for i, la in enumerate(new):
                        la.op, la.case, la.dtype, la.mode, la.index = op.name, sample.name, _dt(dtype), mode, i
                    launches += new
            rec.launches.clear()
            out.append((sample.name, sample, cost, launches))
    return out


def _dt(dtype) -> str:
    return str(dtype).removeprefix("torch.")
