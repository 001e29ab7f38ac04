"""The one op registry. It drives the generic tests, the benchmark CLI, ``dlkern info`` and the
README's op table: an op registered here is tested and benchmarked without further code.

An op file (``dlkern/ops/<op>.py``) calls :func:`register_op` with an :class:`OpSpec`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch


@dataclasses.dataclass
class Sample:
    """One call of an op: ``op.fn(*args, **kwargs)``. ``grad_inputs`` names the positional args a
    gradient is checked for (by index); ``name`` is shown in test ids."""
    name: str
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    grad_inputs: tuple = ()


@dataclasses.dataclass
class Cost:
    """Minimum bytes each pass must move and the FLOPs it must do (see shared/PERF.md)."""
    fwd_bytes: float
    bwd_bytes: float
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0


@dataclasses.dataclass
class OpSpec:
    name: str
    fn: Callable                       # public function; accepts keyword-only ``backend=``
    reference: Callable                # pure PyTorch; same positional signature as ``fn``
    backends: tuple = ("triton", "cuda")
    auto_order: tuple = ("triton", "cuda")   # what ``auto`` tries on CUDA tensors, in order
    # supports(backend, *args, **kwargs) -> list of reasons the backend cannot serve these inputs
    supports: Callable[..., list] = lambda backend, *a, **k: []
    # samples(device, dtype) -> Samples for the numerics tests (odd sizes, strided, batch 1, ...)
    samples: Callable[[torch.device, torch.dtype], Iterable[Sample]] = lambda device, dtype: ()
    # bench_cases(device, dtype, quick) -> Samples timed by the benchmark harness
    bench_cases: Callable[..., Iterable[Sample]] = lambda device, dtype, quick: ()
    cost: Callable[[Sample], Cost] = lambda sample: Cost(0, 0)
    torch_equivalent: Callable | None = None   # torch's own op with the same signature, if any
    peers: dict = dataclasses.field(default_factory=dict)  # name -> factory() -> callable or None
    dtypes: tuple = (torch.float32, torch.float16, torch.bfloat16)
    launchers: tuple = ()              # names every kernel backend module must expose
    family: str = ""                   # "norm", "attention", ... (README grouping)
    # The Triton kernels use tl.dot, which Triton's CPU interpreter gets wrong for bf16 operands:
    # the triton backend refuses bf16 inputs on CPU (dlkern/backend.py). tests/test_interpreter.py
    # checks this flag against the kernels' source.
    uses_tl_dot: bool = False
    # Multiplies the tests' tolerance floor (tests/numerics.py) for ops whose intermediates are much
    # larger than their outputs, e.g. attention's scores: dot products over the whole head dim.
    floor_factor: float = 1.0
    # True for steps that update their inputs in place (optimizer steps): the benchmark harness
    # gives every run its own copy of the sample's tensors.
    mutates_inputs: bool = False

    def __repr__(self):
        return f"OpSpec({self.name!r}, backends={self.backends})"


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is registered twice")
    OPS[spec.name] = spec
    return spec


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None


def all_ops() -> list[OpSpec]:
    import dlkern.ops  # noqa: F401  (importing the package registers every op)
    return [OPS[k] for k in sorted(OPS)]
