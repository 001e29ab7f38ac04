"""Bugs the CUDA CPU emulation must catch, planted in small kernels (tests/emu/kernels/planted.cu),
and correct kernels it must run exactly, every time. The emulator is deterministic, so "every
time" is checked over repeated runs and over several schedule seeds and orders."""
import time

import pytest
import torch

RUNS = 20


def _block_sum(planted, x, missing_sync):
    out = torch.full((x.shape[0],), 12345.0)
    planted.block_sum(x.data_ptr(), out.data_ptr(), x.shape[0], missing_sync)
    return out


@pytest.fixture
def sum_input():
    # Small integers: every summation order gives the exact same float result.
    return torch.randint(-8, 9, (4, 256), generator=torch.Generator().manual_seed(0)).float()


def test_block_reduction_is_exact_every_run(planted, sum_input):
    want = sum_input.sum(1)
    for _ in range(RUNS):
        assert torch.equal(_block_sum(planted, sum_input, missing_sync=False), want)


@pytest.mark.parametrize("order,seed", [("random", "0x5eed"), ("random", "1"), ("random", "2"), ("forward", "0")])
def test_missing_syncthreads_gives_a_wrong_sum_every_run(planted, sum_input, monkeypatch, order, seed):
    monkeypatch.setenv("DLK_EMU_ORDER", order)
    monkeypatch.setenv("DLK_EMU_SEED", seed)
    want = sum_input.sum(1)
    assert torch.equal(_block_sum(planted, sum_input, missing_sync=False), want), "the fixed kernel is right"
    for _ in range(5):
        got = _block_sum(planted, sum_input, missing_sync=True)
        assert (got != want).all(), f"every block must read poisoned shared memory; got {got}, want {want}"


def test_warp_shuffle_scan_is_exact_every_run(planted):
    n = 300  # 3 blocks of 128 threads; the last warps are partly past n
    x = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    padded = torch.zeros(320, dtype=torch.int32)
    padded[:n] = x
    want = padded.view(10, 32).cumsum(1, dtype=torch.int32).flatten()[:n]
    for _ in range(RUNS):
        out = torch.full((n,), -1, dtype=torch.int32)
        planted.warp_scan(x.data_ptr(), out.data_ptr(), n)
        assert torch.equal(out, want)


def test_shuffle_reading_a_lane_outside_its_mask_raises(planted):
    x, out = torch.arange(32.0), torch.zeros(32)
    with pytest.raises(RuntimeError, match=r"(?s)kernel planted::shuffle_outside_mask_kernel .*"
                                           r"__shfl_sync at .*planted\.cu:\d+ reads lane 16, which is not "
                                           r"in the mask 0x0000ffff"):
        planted.shuffle_outside_mask(x.data_ptr(), out.data_ptr())


def test_syncthreads_in_a_divergent_branch_is_a_deadlock_not_a_hang(planted):
    x, out = torch.arange(64.0), torch.zeros(64)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)kernel planted::divergent_barrier_kernel .*deadlock.*"
                                           r"threads 0-31: waits in __syncthreads at .*planted\.cu:\d+.*"
                                           r"threads 32-63: exited"):
        planted.divergent_barrier(x.data_ptr(), out.data_ptr())
    assert time.monotonic() - start < 5, "detected by the scheduler, not by a timeout"


def test_shuffle_waiting_for_lanes_that_never_arrive_is_a_deadlock(planted):
    x, out = torch.arange(32.0), torch.zeros(32)
    with pytest.raises(RuntimeError, match=r"(?s)kernel planted::shuffle_missing_lanes_kernel .*deadlock.*"
                                           r"threads 0-15: waits in __shfl_xor_sync at .*planted\.cu:\d+ with "
                                           r"mask 0xffffffff \(warp 0; lanes not there with that mask: "
                                           r"0xffff0000\).*threads 16-31: exited"):
        planted.shuffle_missing_lanes(x.data_ptr(), out.data_ptr())


def test_syncthreads_at_different_call_sites_is_a_divergent_barrier(planted):
    x, out = torch.arange(64.0), torch.zeros(64)
    with pytest.raises(RuntimeError, match=r"(?s)kernel planted::split_barrier_kernel .*divergent __syncthreads"
                                           r".*threads 0-31: waits in __syncthreads at .*planted\.cu:(\d+)"
                                           r".*threads 32-63: waits in __syncthreads at .*planted\.cu:(?!\1)\d+"):
        planted.split_barrier(x.data_ptr(), out.data_ptr())


def test_a_thread_that_never_synchronizes_times_out_instead_of_hanging(planted, monkeypatch, sum_input):
    monkeypatch.setenv("DLK_EMU_TIMEOUT_S", "1")
    flag = torch.zeros(1, dtype=torch.int32)
    try:
        with pytest.raises(RuntimeError, match=r"kernel planted::spin_kernel .*thread 0 ran for 1 s without "
                                               r"reaching __syncthreads"):
            planted.spin(flag.data_ptr())
    finally:
        flag[0] = 1  # lets the abandoned thread finish
    assert torch.equal(_block_sum(planted, sum_input, missing_sync=False), sum_input.sum(1)), "a fresh pool runs"


def test_emulator_runs_correct_kernels_after_a_kernel_error(planted, sum_input):
    x, out = torch.zeros(64), torch.zeros(64)  # alive while the kernel runs
    for _ in range(3):
        with pytest.raises(RuntimeError, match="deadlock"):
            planted.divergent_barrier(x.data_ptr(), out.data_ptr())
        assert torch.equal(_block_sum(planted, sum_input, missing_sync=False), sum_input.sum(1))
