"""dlkern: hand-written Triton and CUDA C++ kernels for the building blocks of deep learning.

``import dlkern`` never fails: without a GPU, a compiler or the built extension, every op runs
its pure-PyTorch reference, and ``dlkern info`` says why.
"""
__version__ = "0.1.0"

from dlkern.backend import BackendError, get_backend, set_backend, use_backend  # noqa: E402
from dlkern import ops  # noqa: E402,F401  (registers the ops)
from dlkern.registry import all_ops, get_op  # noqa: E402
from dlkern import nn  # noqa: E402
from dlkern import optim  # noqa: E402,F401
from dlkern.nn.patch import patch, patch_functional  # noqa: E402
from dlkern.nn.attention import patch_sdpa  # noqa: E402

__all__ = ["BackendError", "get_backend", "set_backend", "use_backend", "all_ops", "get_op", "nn",
           "patch", "patch_functional", "patch_sdpa", "optim", "__version__"]
