"""AddressSanitizer over an emulated kernel: an off-by-one store past the end of a torch CPU tensor
is reported. The instrumented module must run in a process that starts with the ASan runtime
(LD_PRELOAD), so the build and the run happen in a subprocess; the compiler it spawns runs
without the preload."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emu_build import cxx_unavailable

HERE = Path(__file__).resolve().parent

SCRIPT = """
import os, sys
os.environ.pop("LD_PRELOAD")  # ninja and the compiler run without ASan
sys.path.insert(0, {here!r})
from pathlib import Path
import torch
from emu_build import build_planted
m = build_planted(Path({build!r}), "dlk_emu_planted_asan", asan=True)
a, b = torch.zeros(64), torch.zeros(64)
try:  # an emulator error unwinds the emulated threads with C++ exceptions: fine under ASan too
    m.divergent_barrier(a.data_ptr(), b.data_ptr())
except RuntimeError as e:
    assert "deadlock" in str(e)
out = torch.zeros(100)  # a 400-byte allocation
print("built", flush=True)
m.off_by_one_store(out.data_ptr(), 100)
print("not detected", flush=True)
"""


def _gcc_lib(name):
    try:
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_off_by_one_store_is_reported_by_asan(tmp_path):
    libs = [_gcc_lib("libasan.so"), _gcc_lib("libstdc++.so")]
    if cxx_unavailable() or None in libs:
        pytest.skip("needs gcc with libasan")
    # libstdc++ right after the ASan runtime: python does not link it, and without it ASan's
    # __cxa_throw interceptor finds no real __cxa_throw (a C++ exception then aborts the process).
    env = dict(os.environ, LD_PRELOAD=" ".join(libs), ASAN_OPTIONS="detect_leaks=0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(here=str(HERE), build=str(tmp_path))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert "built" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "not detected" not in proc.stdout
    assert proc.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-4000:]
    assert "WRITE of size 4" in proc.stderr
    assert "off_by_one_store_kernel" in proc.stderr, "the report's stack names the kernel"
