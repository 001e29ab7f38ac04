"""Benchmarks: one harness for every registered op (``dlkern bench``, ``benchmarks/run.py``).

``harness`` times providers and checks their numerics, ``roofline`` measures the ceilings they are
graded against, ``report`` writes tables, CSV/JSON and plots.
"""
from dlkern.bench.harness import MODES, Row, run, timeit
from dlkern.bench.report import format_table, load, metadata, plot, write
from dlkern.bench.roofline import Ceilings, measure

__all__ = ["MODES", "Row", "run", "timeit", "format_table", "load", "metadata", "plot", "write",
           "Ceilings", "measure"]
