"""The two ceilings every kernel is graded against, measured on this device at the start of a run
(shared/PERF.md): a large device-to-device copy (bytes read + written per second) and a matmul.
The datasheet numbers are shown beside them when the GPU is recognised; grading uses the measured
ones, since a kernel cannot beat what the memory system delivers to a plain copy.
"""
from __future__ import annotations

import dataclasses

import torch

# shared/PERF.md; GB/s and TFLOP/s
DATASHEET = {
    "H100 SXM": {"hbm_gbps": 3350, "bf16_tflops": 989, "fp32_tflops": 67},
    "H100 PCIe": {"hbm_gbps": 2000, "bf16_tflops": 756, "fp32_tflops": 51},
    "A100 SXM": {"hbm_gbps": 2000, "bf16_tflops": 312, "fp32_tflops": 19.5},
}


def datasheet_for(device_name: str) -> tuple[str, dict] | None:
    name = device_name.upper()
    if "H100" in name:
        key = "H100 PCIe" if "PCIE" in name else "H100 SXM"
    elif "A100" in name and "PCIE" not in name:
        key = "A100 SXM"
    else:
        return None
    return key, DATASHEET[key]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform
    return f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores)"


@dataclasses.dataclass
class Ceilings:
    device: str
    copy_gbps: float           # measured: bytes read + written per second by a large copy
    copy_mib: int              # size of the copied tensor
    matmul_tflops: float       # measured
    matmul: str                # what was multiplied, e.g. "bfloat16 8192^3"
    datasheet_name: str | None = None
    datasheet: dict | None = None

    def fraction(self, gbps: float | None, tflops: float | None) -> float | None:
        """The larger of the bandwidth and compute fractions (None when neither is known)."""
        parts = []
        if gbps and self.copy_gbps:
            parts.append(gbps / self.copy_gbps)
        if tflops and self.matmul_tflops:
            parts.append(tflops / self.matmul_tflops)
        return max(parts) if parts else None

    def describe(self) -> str:
        text = (f"ceilings on {self.device}: copy {self.copy_gbps:.1f} GB/s ({self.copy_mib} MiB, "
                f"read+write), matmul {self.matmul_tflops:.2f} TFLOP/s ({self.matmul})")
        if self.datasheet:
            d = self.datasheet
            text += (f"; datasheet {self.datasheet_name}: HBM {d['hbm_gbps']} GB/s, "
                     f"bf16 {d['bf16_tflops']} TFLOP/s, fp32 {d['fp32_tflops']} TFLOP/s")
        return text


def measure(device, quick: bool = False) -> Ceilings:
    from dlkern.bench.harness import timeit

    device = torch.device(device)
    if device.type == "cuda":
        copy_mib, n, dtype = 1024, 8192, torch.bfloat16
    else:
        copy_mib, n, dtype = (64 if quick else 128), (1024 if quick else 2048), torch.float32
    src = torch.empty(copy_mib * 2**20, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms, _, _ = timeit(lambda: dst.copy_(src), device, quick)
    copy_gbps = 2 * src.numel() / (ms * 1e-3) / 1e9
    del src, dst
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms, _, _ = timeit(lambda: a @ b, device, quick)
    matmul_tflops = 2 * n**3 / (ms * 1e-3) / 1e12
    name = device_name(device)
    sheet = datasheet_for(name) if device.type == "cuda" else None
    return Ceilings(name, copy_gbps, copy_mib, matmul_tflops,
                    f"{str(dtype).removeprefix('torch.')} {n}^3",
                    sheet[0] if sheet else None, sheet[1] if sheet else None)
