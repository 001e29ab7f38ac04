"""Ceilings (data), occupancy, and the three lower bounds on a kernel's time. All *predicted*.

Ceilings, from shared/PERF.md:
* H200 SXM (sm_90a): 4.3e12 B/s (a measured device copy, read + written), 788e12 dense bf16
  tensor FLOP/s (a measured 8192^3 matmul), 67e12 fp32 FMA FLOP/s, 132 SMs at 1.98 GHz.
* A100 SXM (sm_80): 2.0e12 B/s is the datasheet; a device copy reaches about 85 % of it, so the
  model uses 1.7e12 B/s. 312e12 bf16 tensor FLOP/s, 19.5e12 fp32 FMA, 108 SMs at 1.41 GHz.
The issue rate is SMs x 4 schedulers x clock warp-instructions per second (x 32 thread-instructions).
Every launch also costs at least ``LAUNCH_US``: the launch latency of a small kernel.
"""
from __future__ import annotations

import dataclasses

LAUNCH_US = 4.0   # µs: the floor for one kernel launch (observed 3-5 µs on H100/A100 for tiny kernels)


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str            # "sm_90a"
    device: str
    cc: int              # 90
    sms: int
    clock_hz: float
    bandwidth: float     # B/s
    tensor_flops: float  # dense 16-bit tensor FLOP/s
    fma_flops: float     # fp32 FMA FLOP/s
    mma_sync_fraction: float = 1.0   # mma.sync (HMMA) rate / tensor peak (Hopper's peak needs wgmma)
    mufu_per_sm_clock: int = 16      # special-function results (exp2, rcp, ...) per SM per clock
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 228 * 1024       # bytes usable by blocks (incl. 1 KiB reserved per block)
    smem_reserved_per_block: int = 1024
    memory_bytes: int = 141 * 2**30
    l2_bytes: int = 50 * 2**20

    @property
    def issue_rate(self) -> float:
        """Thread-instructions per second: SMs x 4 schedulers x 32 lanes x clock."""
        return self.sms * 4 * 32 * self.clock_hz


ARCHS = {
    # mma.sync on Hopper: about 0.6 of the wgmma rate (an estimate from published microbenchmarks).
    "sm_90a": Arch("sm_90a", "NVIDIA H200 SXM (modelled)", 90, 132, 1.98e9, 4.3e12, 788e12, 67e12, 0.6,
                   memory_bytes=141 * 2**30, l2_bytes=60 * 2**20),
    "sm_80": Arch("sm_80", "NVIDIA A100 SXM (modelled)", 80, 108, 1.41e9, 1.7e12, 312e12, 19.5e12,
                  smem_per_sm=164 * 1024, memory_bytes=80 * 2**30, l2_bytes=40 * 2**20),
}


def blocks_per_sm(arch: Arch, threads: int, registers: int, shared_bytes: int) -> tuple[int, str]:
    """(resident blocks per SM, the limiting resource). Registers are allocated per warp in
    units of 256 (8 per thread, rounded up)."""
    warps = max(1, -(-threads // 32))
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    limits = {
        "threads": arch.max_threads_per_sm // max(threads, 1),
        "blocks": arch.max_blocks_per_sm,
        "registers": arch.regs_per_sm // (regs_per_warp * warps),
    }
    if shared_bytes:
        limits["shared"] = arch.smem_per_sm // (shared_bytes + arch.smem_reserved_per_block)
    limit = min(limits, key=limits.get)
    return limits[limit], limit


def waves(arch: Arch, blocks: int, per_sm: int) -> float:
    return blocks / max(1, per_sm * arch.sms)


def issue_inefficiency(arch: Arch, grid, per_sm: int) -> float:
    """How much longer than ``instructions / issue rate`` the issue takes when the grid does not
    fill the SMs evenly: SMs without a block issue nothing (fewer blocks than SMs), and the last
    wave runs partly empty (``ceil(waves) / waves``)."""
    blocks = grid[0] * grid[1] * grid[2]
    if blocks < arch.sms:
        return arch.sms / max(blocks, 1)
    w = waves(arch, blocks, per_sm)
    return -(-w // 1) / w if w > 1 else 1.0


@dataclasses.dataclass
class Bounds:
    memory_us: float
    math_us: float
    issue_us: float      # the larger of instruction issue and special-function (MUFU) throughput
    launch_us: float = LAUNCH_US

    @property
    def predicted_us(self) -> float:
        return max(self.memory_us, self.math_us, self.issue_us, self.launch_us)

    @property
    def bound(self) -> str:
        named = {"memory": self.memory_us, "math": self.math_us, "issue": self.issue_us, "launch": self.launch_us}
        return max(named, key=named.get)


def bounds(arch: Arch, bytes_moved: float, flops: float, instructions: float, mufu: float = 0.0,
           tensor: str = "", grid=(1, 1, 1), per_sm: int = 1) -> Bounds:
    """Lower bounds in µs. memory: bytes / bandwidth; math: FLOPs / the peak of the unit that does
    them (``tensor`` "HGMMA": tensor peak, "HMMA": x mma_sync_fraction, "": FMA peak); issue:
    thread-instructions / issue rate and MUFU results / SFU rate, each stretched by
    :func:`issue_inefficiency`."""
    peak = arch.fma_flops if not tensor else arch.tensor_flops * (1.0 if tensor == "HGMMA" else arch.mma_sync_fraction)
    stretch = issue_inefficiency(arch, grid, per_sm)
    issue = instructions / arch.issue_rate
    sfu = mufu / (arch.sms * arch.mufu_per_sm_clock * arch.clock_hz)
    return Bounds(memory_us=bytes_moved / arch.bandwidth * 1e6, math_us=flops / peak * 1e6,
                  issue_us=max(issue, sfu) * stretch * 1e6)


def roofline_us(arch: Arch, bytes_min: float, flops: float, tensor: bool) -> float:
    """The time the op's minimum needs: max(bytes_min / bandwidth, FLOPs / peak, launch)."""
    peak = arch.tensor_flops if tensor else arch.fma_flops
    return max(bytes_min / arch.bandwidth * 1e6, flops / peak * 1e6, LAUNCH_US)
