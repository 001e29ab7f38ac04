"""The CPU timer: providers interleaved round by round, one thread's CPU time, spread reported and
too-wide spreads flagged. Nothing here asserts a duration: only what is called when, and flags."""
import time

import torch

from dlkern.bench import harness, report
from dlkern.bench.harness import Row


def test_providers_take_turns_and_the_order_rotates():
    calls = []
    fns = [lambda k=k: calls.append(k) for k in "abc"]
    results = harness.time_interleaved(fns, torch.device("cpu"), quick=True)
    assert len(results) == 3 and all(p20 <= p50 <= p80 for p50, p20, p80 in results)
    timed = calls[6:]  # after each one's warm-up and single probe run
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)       # every round runs each once
    assert {r[0] for r in rounds} == {"a", "b", "c"}                # who goes first rotates
    assert len(rounds) >= 5


def test_one_thread_is_timed_on_its_cpu_time():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clock, name = harness.cpu_clock()
        assert clock is time.thread_time and "CPU time" in name
        # a sleeping function costs (almost) no CPU time: the descheduled interval is not counted
        (p50, _, _), = harness.time_interleaved([lambda: time.sleep(0.002)], torch.device("cpu"), quick=True)
        assert p50 < 1.0
    finally:
        torch.set_num_threads(before)


def _row(provider, ms, p20, p80, mode="fwd"):
    return Row("op", "case", "float32", mode, provider, "ok", ms=ms, ms_p20=p20, ms_p80=p80,
               speedup_vs_torch=1.0)


def test_a_wide_spread_is_noisy_and_its_ratios_are_marked():
    calm, wide = _row("triton", 1.0, 0.95, 1.05), _row("torch", 1.0, 0.7, 1.4)
    assert not calm.noisy and wide.noisy
    table = report.format_table([calm, wide])
    lines = {line.split()[4]: line for line in table.splitlines()[2:]}
    assert "1.4~" in lines["torch"] and "x?" in lines["torch"]
    assert "x?" in lines["triton"]           # its ratio rests on the noisy torch row
    quiet = report.format_table([calm, _row("torch", 1.0, 0.98, 1.03)])
    assert "~" not in quiet and "x?" not in quiet


def test_results_record_load_clock_and_threads():
    meta = report.metadata(torch.device("cpu"))
    assert set(meta["load_at_start"]) == {"loadavg_1min", "loadavg_5min", "cores"}
    assert meta["intra_op_threads"] == torch.get_num_threads() and meta["cpu_clock"]
