"""Where the CUDA toolkit is and how csrc/ is compiled: shared by setup.py (which loads this file
by path, before dlkern is installed) and ``dlkern perf`` (which compiles the kernel files to cubins
and disassembles them). Standard library only."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

CUDA_ARCHS = ("80", "90")  # SASS for A100 and H100, plus PTX of the newest for later GPUs
# No --use_fast_math: it would turn every expf, sqrtf and division into an approximation the CPU
# emulation does not compute, so the GPU would run other numerics than the tests check. Kernels
# name the approximations they want (dlk::exp2_approx, __expf, __fdividef; csrc/common/dlk_cuda.cuh).
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"]


def find_cuda_home():
    """The CUDA toolkit root. `nvcc` on PATH may be a wrapper script (as in /usr/local/bin), so
    ask nvcc itself where its toolkit lives instead of taking the parent of its path."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") else None
    try:
        out = subprocess.run([nvcc, "-v", "--dryrun", "-x", "cu", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
        top = re.search(r"#\$ TOP=(\S+)", out)
        if top:  # nvcc.profile: TOP = $(_HERE_)/.. is the toolkit root itself
            for root in (top.group(1), os.path.join(top.group(1), "..")):
                if os.path.exists(os.path.join(root, "bin", "nvcc")):
                    return os.path.realpath(root)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.realpath(os.path.join(os.path.dirname(nvcc), ".."))


def find_tool(name):
    """A CUDA binary tool (nvcc, cuobjdump, nvdisasm, ptxas): the toolkit's, else the copy Triton
    ships in ``triton/backends/nvidia/bin`` (a toolkit may lack cuobjdump/nvdisasm), else PATH."""
    home = find_cuda_home()
    candidates = [os.path.join(home, "bin", name)] if home else []
    try:
        import triton.backends.nvidia as nv
        candidates.append(os.path.join(os.path.dirname(nv.__file__), "bin", name))
    except Exception:  # no triton: only the toolkit and PATH
        pass
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)
