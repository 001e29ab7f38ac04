"""The one benchmark harness: every registered op × case × dtype × mode × provider.

For each (op, case, dtype) it first computes the truth (the reference in float64 for float32
inputs, in float32 for half precisions), checks every provider's outputs and gradients against it,
then times it. A provider that cannot run is kept as a row that says why, never dropped.

Tolerance (flash-attn style, as tests/numerics.py): a provider may be off the truth by at most twice
what the reference itself is off when run in the benchmarked dtype, plus a floor of a few ulps of the
largest value. The float32 floor is wider than the tests' because benchmark shapes reduce over
thousands of terms, and a different (still correct) summation order moves a float32 sum by tens of
ulps (torch.compile's LayerNorm weight gradient on CPU: ~25); a broken kernel is off by far more.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from dlkern import backend as _backend
from dlkern.registry import Sample

MODES = ("fwd", "bwd", "fwd+bwd")
BUILTIN_PROVIDERS = ("reference", "torch", "torch.compile", "triton", "cuda")
# Tolerance floor in ulps of the largest value (see the module docstring).
EPS_FLOOR = {torch.float32: 64, torch.float16: 2, torch.bfloat16: 2}
COLUMNS = ("op", "case", "dtype", "mode", "provider", "ms", "ms_p20", "ms_p80", "noisy", "gbps", "tflops",
           "roofline_pct", "speedup_vs_torch", "numerics", "max_err", "tol", "bytes", "flops")


@dataclasses.dataclass
class Row:
    op: str
    case: str
    dtype: str
    mode: str
    provider: str
    numerics: str                      # "ok", "FAIL: ...", "unavailable: ...", "skipped: ..."
    ms: float | None = None            # median
    ms_p20: float | None = None
    ms_p80: float | None = None
    gbps: float | None = None
    tflops: float | None = None
    roofline_pct: float | None = None  # max(bytes/s ÷ copy rate, flop/s ÷ matmul rate) × 100
    speedup_vs_torch: float | None = None
    max_err: float | None = None       # of the worst output or gradient, against the truth
    tol: float | None = None
    bytes: float = 0.0
    flops: float = 0.0

    @property
    def failed(self) -> bool:
        return self.numerics.startswith("FAIL")

    @property
    def noisy(self) -> bool:
        """The timing's spread is too wide to support a ratio (see NOISY_SPREAD)."""
        return bool(self.ms) and (self.ms_p80 - self.ms_p20) / self.ms > NOISY_SPREAD


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
NOISY_SPREAD = 0.25   # (p80 - p20) / median above this: the row cannot support a ratio


def cpu_clock():
    """The clock CPU timings use, and its name. With one intra-op thread all of an op's work runs on
    the calling thread, so its CPU time is the op's cost and does not grow while another process
    holds the core (wall time would: a descheduled run comes out as multiples of the scheduler's
    slice). With more threads the work is spread over threads this one does not see: wall time."""
    if torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time (1 intra-op thread)"
    return time.perf_counter, f"wall time ({torch.get_num_threads()} intra-op threads)"


def timeit(fn: Callable, device: torch.device, quick: bool = False) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()`` alone."""
    return time_interleaved([fn], device, quick)[0]


def time_interleaved(fns: list[Callable], device: torch.device, quick: bool = False) -> list[tuple]:
    """(median, p20, p80) milliseconds of each of ``fns``, timed in the same run so that the ratios
    between them are fair. On CPU the functions take turns, round after round (the order rotates),
    so a change of the machine's load hits every provider alike instead of whichever ran then."""
    if not fns:
        return []
    if device.type == "cuda":
        import triton.testing
        warmup, rep = (5, 20) if quick else (25, 100)
        return [tuple(triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8]))
                for fn in fns]
    clock = cpu_clock()[0]
    once = []
    for fn in fns:
        fn()  # warmup: first-call costs (allocator, lazy init) are not what we measure
        start = clock()
        fn()
        once.append(max(clock() - start, 1e-7))
    budget_s, min_reps, max_reps = (0.05, 5, 20) if quick else (0.5, 7, 200)
    reps = [int(min(max(budget_s / t, min_reps), max_reps)) for t in once]
    samples = [[] for _ in fns]
    for round_ in range(max(reps)):
        order = list(range(len(fns)))
        k = round_ % len(fns)
        for i in order[k:] + order[:k]:
            if len(samples[i]) < reps[i]:
                start = clock()
                fns[i]()
                samples[i].append(clock() - start)
    out = []
    for times in samples:
        p50, p20, p80 = np.percentile(np.array(times) * 1e3, [50, 20, 80])
        out.append((float(p50), float(p20), float(p80)))
    return out


# ---------------------------------------------------------------------------------------------
# Providers: name -> callable with the op's signature, or the reason it cannot serve
# ---------------------------------------------------------------------------------------------
def _short(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def _compiled(fn):
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    # Each shape × dtype × grad-mode is a new graph; the default limit (8) would silently fall
    # back to eager in the middle of a full run.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, knob):
            setattr(dynamo_config, knob, max(getattr(dynamo_config, knob), 256))
    # Donated buffers forbid retain_graph=True, which the bwd timing needs to replay backward.
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False
    return torch.compile(fn)


class Providers:
    """The providers of one op; compiled functions and peers are built once per op."""

    def __init__(self, op, wanted, device: torch.device, quick: bool, explicit: bool):
        self.op, self.wanted, self.device = op, wanted, device
        self.quick, self.explicit = quick, explicit
        self._compiled = None
        self.peers, self.peer_errors = {}, {}
        for name, factory in op.peers.items():
            if wanted is not None and name not in wanted:
                continue
            try:
                peer = factory()
            except Exception as exc:  # a broken peer install is a reason, not a crash
                self.peer_errors[name] = f"peer failed to load: {_short(exc)}"
                continue
            if peer is not None:  # None: the peer package is not installed
                self.peers[name] = peer

    def names(self) -> list[str]:
        names = list(BUILTIN_PROVIDERS) + sorted(self.peers) + sorted(self.peer_errors)
        return [n for n in names if self.wanted is None or n in self.wanted]

    def get(self, name: str, sample: Sample) -> tuple[Callable | None, str | None]:
        op = self.op
        if name == "reference":
            # dlkern's reference backend: what the op runs on CPU tensors by default. For most ops
            # that is op.reference itself; attention and the selective scan have a faster path
            # than their test oracle (torch's SDPA, the C++ scan kernel).
            return (lambda *a, **k: op.fn(*a, backend="reference", **k)), None
        if name in ("torch", "torch.compile"):
            if op.torch_equivalent is None:
                return None, f"{op.name} has no torch equivalent registered"
            if name == "torch":
                return op.torch_equivalent, None
            if self.device.type == "cpu" and self.quick and not self.explicit:
                return None, ("skipped under --quick on CPU (an inductor compile takes ~20 s); "
                              "ask for it with --providers torch.compile")
            if self._compiled is None:
                self._compiled = _compiled(op.torch_equivalent)
            return self._compiled, None
        if name in _backend.KERNEL_BACKENDS:
            reasons = _backend.reasons_against(op, name, sample.args, sample.kwargs)
            if reasons:
                return None, "; ".join(reasons)
            return (lambda *a, **k: op.fn(*a, backend=name, **k)), None
        if name in self.peer_errors:
            return None, self.peer_errors[name]
        return self.peers[name], None


# ---------------------------------------------------------------------------------------------
# Running a provider once (for numerics) and building the timed closures
# ---------------------------------------------------------------------------------------------
def _tensors(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _cast(x, dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to(dtype)
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def _fresh(op, sample: Sample) -> Sample:
    """The sample, or for ops that update their inputs in place a copy of its tensors, so that
    every run (truth, each provider's check and timing) starts from the same values."""
    if not op.mutates_inputs:
        return sample

    def copy(x):
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        return type(x)(copy(v) for v in x) if isinstance(x, (tuple, list)) else x
    return dataclasses.replace(sample, args=copy(sample.args), kwargs={k: copy(v) for k, v in sample.kwargs.items()})


def _leaves(args, grad_inputs):
    args = list(args)
    leaves = []
    for i in grad_inputs:
        if not isinstance(args[i], torch.Tensor):  # an optional tensor left out (None)
            continue
        args[i] = args[i].detach().requires_grad_(True)
        leaves.append(args[i])
    return args, leaves


def _differentiable(outs, cotangents):
    """The outputs that carry a gradient and their cotangents, pairwise."""
    pairs = [(o, c) for o, c in zip(outs, cotangents) if c is not None and o.requires_grad]
    if not pairs:
        raise RuntimeError("no floating output requires grad")
    return [o for o, _ in pairs], [c for _, c in pairs]


def _cotangents(outs, device):
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(o.shape, generator=gen, device=device, dtype=o.dtype)
            if isinstance(o, torch.Tensor) and o.is_floating_point() else None for o in outs]


def run_once(fn, sample: Sample, cotangents, with_grads: bool):
    """Outputs (detached) and, if asked, gradients of the sample's grad inputs."""
    args, leaves = _leaves(sample.args, sample.grad_inputs if with_grads else ())
    with torch.enable_grad():
        outs = _tensors(fn(*args, **sample.kwargs))
        grads = []
        if with_grads:
            if cotangents is None:  # the first run (the reference) defines the cotangents
                cotangents = _cotangents(outs, outs[0].device)
            diff, cots = _differentiable(outs, cotangents)
            grads = list(torch.autograd.grad(diff, leaves, cots, allow_unused=True))
    return [o.detach() for o in outs], grads, cotangents


def timed_closure(fn, sample: Sample, mode: str, cotangents) -> Callable:
    """What is timed. ``fwd`` runs under no_grad: the inference cost, without saving for backward.
    ``bwd`` runs the forward once here and times only ``autograd.grad`` (the graph is retained)."""
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                return fn(*sample.args, **sample.kwargs)
        return forward
    args, leaves = _leaves(sample.args, sample.grad_inputs)
    if mode == "bwd":
        with torch.enable_grad():
            outs, cots = _differentiable(_tensors(fn(*args, **sample.kwargs)), cotangents)
        return lambda: torch.autograd.grad(outs, leaves, cots, retain_graph=True)

    def forward_backward():
        with torch.enable_grad():
            outs, cots = _differentiable(_tensors(fn(*args, **sample.kwargs)), cotangents)
            return torch.autograd.grad(outs, leaves, cots)
    return forward_backward


# ---------------------------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Truth:
    outs: list            # reference in float64 (float32 inputs) or float32 (half inputs)
    grads: list
    ref_outs: list        # reference in the benchmarked dtype: its error sets the tolerance
    ref_grads: list
    cotangents: list


def truth_for(op, sample: Sample, dtype: torch.dtype, with_grads: bool) -> Truth:
    ref_outs, ref_grads, cots = run_once(op.reference, _fresh(op, sample), None, with_grads)
    hi = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    hi_sample = dataclasses.replace(sample, args=_cast(sample.args, hi), kwargs=_cast(sample.kwargs, hi))
    hi_cots = [_cast(c, hi) for c in cots] if cots else None
    outs, grads, _ = run_once(op.reference, hi_sample, hi_cots, with_grads)
    return Truth(outs, grads, ref_outs, ref_grads, cots)


def compare(got: list, truth: list, ref: list, dtype: torch.dtype, label: str):
    """(ok, max_err, tol, detail) of the worst tensor, worst measured as err / tol."""
    if len(got) != len(truth):
        return False, None, None, f"{label}: {len(got)} tensors, the reference gives {len(truth)}"
    floor = EPS_FLOOR.get(dtype, 2) * torch.finfo(dtype).eps
    worst = (True, None, None, "")
    for i, (g, t, r) in enumerate(zip(got, truth, ref)):
        name = f"{label}[{i}]"
        if g is None or t is None:
            if (g is None) != (t is None):
                return False, None, None, f"{name}: gradient is None on one side only"
            continue
        if not t.is_floating_point():
            if not torch.equal(g.cpu(), t.cpu()):
                return False, None, None, f"{name}: differs from the reference"
            continue
        if g.shape != t.shape:
            return False, None, None, f"{name}: shape {tuple(g.shape)}, expected {tuple(t.shape)}"
        if not t.numel():
            continue
        err = (g.to(t.dtype) - t).abs().max().item()
        ref_err = (r.to(t.dtype) - t).abs().max().item()
        tol = 2 * ref_err + floor * max(t.abs().max().item(), 1.0)
        if not err <= tol:  # also catches NaN
            return False, err, tol, f"{name}: max err {err:.3g} > tol {tol:.3g}"
        if worst[1] is None or err / tol > worst[1] / worst[2]:
            worst = (True, err, tol, "")
    return worst


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _metrics(row: Row, ceilings) -> None:
    seconds = row.ms * 1e-3
    row.gbps = row.bytes / seconds / 1e9 if row.bytes else None
    row.tflops = row.flops / seconds / 1e12 if row.flops else None
    if ceilings is not None:
        fraction = ceilings.fraction(row.gbps, row.tflops)
        row.roofline_pct = 100 * fraction if fraction is not None else None


def _mode_cost(cost, mode):
    fwd, bwd = (cost.fwd_bytes, cost.fwd_flops), (cost.bwd_bytes, cost.bwd_flops)
    if mode == "fwd":
        return fwd
    if mode == "bwd":
        return bwd
    return fwd[0] + bwd[0], fwd[1] + bwd[1]


def bench_case(op, sample: Sample, dtype, modes, providers: Providers, device, quick,
               ceilings=None, deadline=None, on_provider=None) -> list[Row]:
    modes = [m for m in modes if m == "fwd" or sample.grad_inputs]
    with_grads = any(m != "fwd" for m in modes)
    truth = truth_for(op, sample, dtype, with_grads)
    cost = op.cost(sample)
    dname = str(dtype).removeprefix("torch.")
    rows, timed = [], []
    for name in providers.names():
        if on_provider:
            on_provider(name)

        def row(mode, status, **kw):
            nbytes, flops = _mode_cost(cost, mode)
            return Row(op.name, sample.name, dname, mode, name, status, bytes=nbytes, flops=flops, **kw)
        if deadline is not None and time.monotonic() > deadline:
            rows += [row(m, "skipped: time budget exhausted") for m in modes]
            continue
        fn, reason = providers.get(name, sample)
        if fn is None:
            rows += [row(m, f"unavailable: {reason}") for m in modes]
            continue
        # Our own code raising is a failure; torch.compile or a peer raising is a reason.
        ours = name in ("reference",) + _backend.KERNEL_BACKENDS
        try:
            outs, grads, _ = run_once(fn, _fresh(op, sample), truth.cotangents, with_grads)
        except Exception as exc:
            status = f"FAIL: raised {_short(exc)}" if ours else f"unavailable: {_short(exc)}"
            rows += [row(m, status) for m in modes]
            continue
        fwd_check = compare(outs, truth.outs, truth.ref_outs, dtype, "out")
        grad_check = compare(grads, truth.grads, truth.ref_grads, dtype, "grad")
        for mode in modes:
            checks = [fwd_check] if mode == "fwd" else [fwd_check, grad_check]
            bad = [c for c in checks if not c[0]]
            worst = bad[0] if bad else max(checks, key=lambda c: (c[1] or 0) / (c[2] or 1))
            status = f"FAIL: {worst[3]}" if bad else "ok"
            r = row(mode, status, max_err=worst[1], tol=worst[2])
            try:
                timed.append((r, ours, timed_closure(fn, _fresh(op, sample), mode, truth.cotangents)))
            except Exception as exc:
                r.numerics = f"FAIL: timing raised {_short(exc)}" if ours else f"unavailable: {_short(exc)}"
            rows.append(r)
    for mode in modes:  # every provider of one mode in the same interleaved run
        _time_rows([t for t in timed if t[0].mode == mode], device, quick, ceilings)
        base = next((r for r in rows if r.provider == "torch" and r.mode == mode and r.ms), None)
        for r in rows:  # speedup against torch eager, same case, dtype and mode
            if r.mode == mode and r.ms and base is not None:
                r.speedup_vs_torch = base.ms / r.ms
    return rows


def _time_rows(timed, device, quick, ceilings) -> None:
    """Times the (row, ours, closure) triples together. Each closure first runs once alone: one that
    raises is marked on its row (a failure if it is ours, a reason if not) and left out."""
    ok = []
    for r, ours, fn in timed:
        try:
            fn()
            ok.append((r, fn))
        except Exception as exc:
            r.numerics = f"FAIL: timing raised {_short(exc)}" if ours else f"unavailable: {_short(exc)}"
    for (r, _), (r.ms, r.ms_p20, r.ms_p80) in zip(ok, time_interleaved([fn for _, fn in ok], device, quick)):
        _metrics(r, ceilings)


def run(ops, device, dtypes, modes=MODES, providers=None, quick=False, ceilings=None,
        budget_s=None, progress=True) -> list[Row]:
    """Benchmark ``ops`` (OpSpecs); ``providers=None`` means every provider."""
    from tqdm import tqdm

    device = torch.device(device)
    deadline = time.monotonic() + budget_s if budget_s else None
    explicit = providers is not None and "torch.compile" in providers
    units = [(op, dt) for op in ops for dt in dtypes if dt in op.dtypes]
    rows = []
    # progress=None: a bar only when stderr is a terminal (logs stay free of bar redraws)
    with tqdm(units, desc="bench", unit="op·dtype", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        for op, dtype in bar:
            provs = Providers(op, providers, device, quick, explicit)
            for sample in op.bench_cases(device, dtype, quick):
                def show(name, case=sample.name):
                    bar.set_postfix_str(f"{op.name} {case} {name}", refresh=True)
                rows += bench_case(op, sample, dtype, modes, provs, device, quick, ceilings,
                                   deadline, show)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows
