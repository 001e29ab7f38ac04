"""dlkern.threads: the thread count chosen by measurement (simulated steps, no real timing)."""
import pytest
import torch

from dlkern import threads


class SimulatedLoop:
    """Steps whose duration depends on torch's current thread count, on a fake clock."""

    def __init__(self, cost):
        self.now, self.cost, self.used = 0.0, cost, []

    def clock(self):
        return self.now

    def run(self, tuner, steps):
        for _ in range(steps):
            tuner.before_step()
            n = torch.get_num_threads()
            self.used.append(n)
            seconds = self.cost(n, self.now)
            self.now += seconds
            tuner.after_step(seconds)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_picks_the_faster_count_and_follows_a_load_change():
    busy_until = 30.0   # another process holds a core for the first 30 s: 2 threads are 12x slower

    def cost(n, now):
        if now < busy_until:
            return 0.01 if n == 1 else 0.12
        return 0.01 if n == 1 else 0.006

    loop = SimulatedLoop(cost)
    tuner = threads.ThreadTuner(candidates=(1, 2), warmup=1, recheck_s=5.0, clock=loop.clock)
    loop.run(tuner, 200)
    assert tuner.history[0]["chosen"] == 1
    loop.run(tuner, 6000)
    assert tuner.history[-1]["chosen"] == 2 and tuner.chosen == 2
    # after the warm-up step (on torch's default), the slow candidate got one probe step, then was dropped
    first_probe = loop.used[1:8]
    assert first_probe.count(2) == 1
    # most steps ran on the right count for the load at the time
    assert loop.used[-100:] == [2] * 100


def test_recheck_interval_doubles_while_the_choice_holds():
    loop = SimulatedLoop(lambda n, now: 0.01 if n == 1 else 0.02)
    tuner = threads.ThreadTuner(candidates=(1, 2), recheck_s=1.0, clock=loop.clock)
    loop.run(tuner, 5000)   # 50+ s
    assert all(p["chosen"] == 1 for p in tuner.history)
    assert 4 <= len(tuner.history) <= 10   # 1, 2, 4, 8, 16, 16 ... s apart, not every second


def test_user_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.user_thread_count(None) == "auto"
    assert threads.user_thread_count("3") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.user_thread_count(None) is None   # the environment decided; torch applied it
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="threads must be a positive integer or 'auto'"):
            threads.user_thread_count(bad)


def test_cli_rejects_a_bad_thread_count_in_one_line(capsys):
    from dlkern.train import main
    with pytest.raises(SystemExit) as exc:
        main(["realnvp", "--threads", "zero"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--threads" in err and "positive integer or 'auto'" in err
