"""``dlkern perf``: a static GPU performance model of every kernel as it really launches (no GPU).

The pieces, in the order a run uses them:

* :mod:`.launches`   drive the real launchers on fake CUDA tensors and record each Triton launch
  (arguments, grid, every autotune config the pruner keeps) instead of starting it;
* :mod:`.tcompile`   compile a recorded launch with the JIT's own specialization for sm_90a / sm_80;
* :mod:`.cuda`       the CUDA kernels: cubins of ``csrc/**/*.cu`` and the launch table;
* :mod:`.sass`       disassemble, resources, hot loops, opcode classes;
* :mod:`.traffic`    global bytes each Triton launch really moves (interpreter, mask-aware);
* :mod:`.model`      ceilings, occupancy and the three lower bounds on time;
* :mod:`.pipeline`        the whole pipeline and its files; :mod:`.report` table, CSV, PNG, README block.

Nothing here is imported by ``import dlkern``; everything it prints is *predicted*.
"""
from __future__ import annotations


def run(ops=(), quick=False, archs=("sm_90a", "sm_80"), out=None, **kwargs):
    """Python entry point: the same as ``dlkern perf``; returns the list of records."""
    from dlkern.perf.pipeline import run_perf
    return run_perf(list(ops), quick=quick, archs=list(archs), out=out, **kwargs)
