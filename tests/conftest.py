"""Test setup. Without a GPU, Triton kernels run in Triton's CPU interpreter (it must be enabled
before the kernels are defined, so before dlkern is imported) and, when the emulation build exists,
CUDA kernels run through it. Kernel outputs are pre-filled with NaN so unwritten elements show."""
import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DLKERN_CUDA_EMULATE", "1")
os.environ.setdefault("DLKERN_DEBUG_NAN_FILL", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N worker processes share the cores; one intra-op thread each avoids oversubscription
    torch.set_num_threads(1)

import dlkern  # noqa: E402


@pytest.fixture(scope="session")
def device():
    return torch.device("cuda" if HAS_GPU else "cpu")


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Every test starts on the default backend with NaN-filled kernel outputs."""
    dlkern.set_backend("auto")
    dlkern.debug.set_debug_nan_fill(True)
    yield
    dlkern.set_backend("auto")
