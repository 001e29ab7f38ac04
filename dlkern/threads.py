"""The intra-op thread count on CPU, chosen by measurement when the user has not chosen it.

torch starts one intra-op thread per core. On a busy machine (a laptop is never idle) that is often
the slowest choice: when another process holds a core, every parallel region waits for the thread
that was descheduled, and small ops (most of this course's models) ran 5–15x slower with two
threads than with one on a 2-core machine with one competing process. No rule from op sizes
predicts the load of other processes, so :class:`ThreadTuner` measures: it runs a few steps of the
actual loop with each candidate count, interleaved, keeps the fastest, and probes again every
``recheck_s`` seconds, because the load changes while a run goes on.
"""
from __future__ import annotations

import os
import statistics
import time

import torch


def user_thread_count(threads: int | str | None) -> int | str | None:
    """What the user asked for: an int, "auto", or None when they set ``OMP_NUM_THREADS`` (torch has
    already applied it, so it is left alone). ``threads=None`` means "auto" unless the environment
    decides."""
    if threads is None:
        return None if os.environ.get("OMP_NUM_THREADS") else "auto"
    if threads == "auto":
        return threads
    try:
        n = int(threads)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    return n


class ThreadTuner:
    """Per-step thread choice for a loop of similar steps: call :meth:`before_step` before each step
    and :meth:`after_step` with its duration after it.

    A probe is ``warmup`` discarded steps, then ``rounds`` rounds of one step per candidate (the
    order alternates, so a load change hits every candidate alike); the candidate with the lowest
    median wins until the next probe, ``recheck_s`` seconds of running later (doubling, up to 16x,
    while the choice stays the same). A candidate ``drop_factor`` times slower than the best step
    so far gets no more probe steps: a bad choice costs a few steps, not a probe's worth."""

    def __init__(self, candidates=None, rounds: int = 5, warmup: int = 3, recheck_s: float = 10.0,
                 drop_factor: float = 3.0, clock=time.perf_counter):
        cores = os.cpu_count() or 1
        self.candidates = sorted(set(candidates or (1, torch.get_num_threads(), cores)))
        self.rounds, self.warmup, self.recheck_s, self.clock = rounds, warmup, recheck_s, clock
        self.drop_factor, self._interval = drop_factor, recheck_s
        self.chosen = torch.get_num_threads()
        self.history: list[dict] = []       # one record per finished probe
        self._plan: list[int | None] = []   # threads for the coming probe steps (None: warm-up)
        self._samples: dict[int, list[float]] = {}
        self._current: int | None = None
        self._next_probe = clock()          # probe at the first step

    @property
    def probing(self) -> bool:
        return bool(self._plan) or self._current is not None

    def before_step(self) -> None:
        if len(self.candidates) == 1:
            torch.set_num_threads(self.candidates[0])
            return
        if not self._plan and self._current is None and self.clock() >= self._next_probe:
            order = [c for r in range(self.rounds) for c in (self.candidates if r % 2 == 0 else self.candidates[::-1])]
            self._plan = [None] * self.warmup + order
            self._samples = {c: [] for c in self.candidates}
        if self._plan:
            self._current = self._plan.pop(0)
            torch.set_num_threads(self._current if self._current is not None else self.chosen)
        else:
            torch.set_num_threads(self.chosen)

    def after_step(self, seconds: float) -> None:
        if self._current is None and not self._plan:
            return
        if self._current is not None:
            self._samples[self._current].append(seconds)
            best = min(min(v) for v in self._samples.values() if v)
            if seconds > self.drop_factor * best:  # hopeless: spend no more probe steps on it
                self._plan = [c for c in self._plan if c != self._current]
        self._current = None
        if not self._plan:  # the probe is complete: choose
            medians = {c: statistics.median(s) for c, s in self._samples.items() if s}
            self.chosen = min(medians, key=medians.get)
            self.history.append({"medians_ms": {c: round(m * 1e3, 3) for c, m in medians.items()},
                                 "chosen": self.chosen})
            same = len(self.history) > 1 and self.history[-2]["chosen"] == self.chosen
            self._interval = min(self._interval * 2, 16 * self.recheck_s) if same else self.recheck_s
            torch.set_num_threads(self.chosen)
            self._next_probe = self.clock() + self._interval
