"""Global bytes each Triton launch really moves, counted in Triton's interpreter (mask-aware).

Run in a process of its own with ``TRITON_INTERPRET=1`` (the interpreter only applies to kernels
defined after it is set): ``python -m dlkern.perf.traffic --dtype bfloat16 --out FILE [ops...]``
runs every op's CPU bench cases (``quick``) on the triton backend and wraps the interpreter's
masked load / store / atomic builders. Per launch it writes:

* ``loaded`` / ``stored``: bytes of every active (unmasked) lane of every access: what the
  kernel asks the memory system for, re-reads included;
* ``unique_loaded`` / ``unique_stored``: bytes at distinct addresses: what DRAM must move at
  least if every re-read hits a cache. The model's memory bound uses ``unique``.

The interpreter runs the CPU launch configuration (attention: one 16x16 tile; persistent grids
of 4 programs), so counts are for that configuration; :mod:`dlkern.perf.pipeline` scales them to the
GPU cases by the op's cost model (the ratio counted / minimum).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


class _Counter:
    def __init__(self):
        self.launches = []
        self.current = None

    def begin(self, name, grid, meta):
        self.current = {"kernel": name, "grid": list(grid), "meta": meta, "loaded": 0, "stored": 0, "atomic": 0,
                        "_ld": [], "_st": []}

    def end(self):
        c = self.current
        for key, parts in (("unique_loaded", c.pop("_ld")), ("unique_stored", c.pop("_st"))):
            total = 0
            for size in {s for s, _ in parts}:
                addrs = [a for s, a in parts if s == size]
                total += size * int(np.unique(np.concatenate(addrs)).size) if addrs else 0
            c[key] = total
        self.launches.append(c)
        self.current = None

    def access(self, kind, ptrs, mask, elem_bytes):
        if self.current is None:
            return
        addrs = np.asarray(ptrs).reshape(-1)
        m = np.broadcast_to(np.asarray(mask, dtype=bool), np.asarray(ptrs).shape).reshape(-1)
        active = addrs[m]
        self.current["loaded" if kind == "ld" else "stored" if kind == "st" else "atomic"] += active.size * elem_bytes
        if kind in ("ld", "st"):
            self.current["_ld" if kind == "ld" else "_st"].append((elem_bytes, active.astype(np.uint64)))
        else:  # an atomic reads and writes its address
            self.current["_ld"].append((elem_bytes, active.astype(np.uint64)))
            self.current["_st"].append((elem_bytes, active.astype(np.uint64)))


COUNTER = _Counter()


def _elem_bytes(ptrs):
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


def install():
    """Wrap the interpreter's memory builders and its grid executor."""
    from triton.runtime import interpreter as itp

    B = itp.InterpreterBuilder
    load, store, rmw, cas = B.create_masked_load, B.create_masked_store, B.create_atomic_rmw, B.create_atomic_cas

    def create_masked_load(self, ptrs, mask, other, *a):
        COUNTER.access("ld", ptrs.data, mask.data, _elem_bytes(ptrs))
        return load(self, ptrs, mask, other, *a)

    def create_masked_store(self, ptrs, value, mask, *a):
        COUNTER.access("st", ptrs.data, mask.data, _elem_bytes(ptrs))
        return store(self, ptrs, value, mask, *a)

    def create_atomic_rmw(self, op, ptr, val, mask, *a):
        COUNTER.access("atomic", ptr.data, mask.data, _elem_bytes(ptr))
        return rmw(self, op, ptr, val, mask, *a)

    def create_atomic_cas(self, ptr, cmp, val, *a):
        COUNTER.access("atomic", ptr.data, True, _elem_bytes(ptr))
        return cas(self, ptr, cmp, val, *a)

    B.create_masked_load, B.create_masked_store = create_masked_load, create_masked_store
    B.create_atomic_rmw, B.create_atomic_cas = create_atomic_rmw, create_atomic_cas

    call = itp.GridExecutor.__call__

    def grid_call(self, *args, **kwargs):
        meta = {k: v for k, v in kwargs.items() if k.isupper() and isinstance(v, (bool, int, str))}
        COUNTER.begin(self.fn.__name__, self.grid if not callable(self.grid) else (), meta)
        try:
            return call(self, *args, **kwargs)
        finally:
            COUNTER.end()
    itp.GridExecutor.__call__ = grid_call


MAX_ELEMENTS = 1 << 17   # larger CPU bench cases take minutes in the interpreter


def _first_numel(sample) -> int:
    import torch
    for a in sample.args:
        if isinstance(a, torch.Tensor):
            return a.numel()
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return sum(t.numel() for t in a)
    return 0


def cases(op, dtype):
    """The samples counted: the quick CPU bench cases up to MAX_ELEMENTS and the op's test samples
    (the test suite runs those in the interpreter, so they are known to be quick); together they
    reach each kernel's code paths (e.g. fused and looped row norms)."""
    import torch
    bench = [s for s in op.bench_cases(torch.device("cpu"), dtype, True) if _first_numel(s) <= MAX_ELEMENTS]
    samples = [s for s in op.samples(torch.device("cpu"), dtype) if _first_numel(s) <= MAX_ELEMENTS]
    # a sample with an empty tensor runs no kernel (the chooser serves it with the reference)
    return [s for s in bench + samples if not _has_empty(s)]


def _has_empty(sample) -> bool:
    import torch
    items = list(sample.args) + list(sample.kwargs.values())
    flat = [t for a in items for t in (a if isinstance(a, (list, tuple)) else [a])]
    return any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in flat)


def count(op, dtype):
    """[{case, mode, bytes_min, launches: [...]}] for the counted cases of ``op`` (:func:`cases`)."""
    import torch

    from dlkern.perf.launches import _passes

    out = []
    if dtype == torch.bfloat16 and op.uses_tl_dot:
        # The interpreter refuses bf16 tl.dot (it computes it wrongly); fp16 has the same element
        # size and launches the same kernels, so it moves the same bytes.
        dtype = torch.float16
    for sample in cases(op, dtype):
        cost = op.cost(sample)
        for mode, thunk in _passes(op, sample, backprop=torch.autograd.backward):
            start = len(COUNTER.launches)
            thunk()
            launches = COUNTER.launches[start:]
            if mode == "prepare":
                continue
            out.append({"case": sample.name, "mode": mode, "launches": launches,
                        "bytes_min": cost.bwd_bytes if mode == "bwd" else cost.fwd_bytes})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlkern.perf.traffic")
    p.add_argument("ops", nargs="*")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("run with TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import torch

    from dlkern.perf.launches import perf_ops
    install()
    ops = perf_ops()
    result = {}
    for name in args.ops or list(ops):
        start = time.monotonic()
        try:
            result[name] = count(ops[name], getattr(torch, args.dtype))
        except Exception as exc:  # one op's failure is a reason in the file, not a crash
            result[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        print(f"traffic {name}: {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
