"""Triton kernels and their launchers (no autograd here), shipped as ``dlkern.kernels``.

Every launcher has the same name and signature as its CUDA twin in ``dlkern._C``.
``INTERPRET`` records whether Triton's CPU interpreter was enabled (``TRITON_INTERPRET=1``) when
these kernels were defined: the interpreter only applies to kernels defined after it is set.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

from .channel_norm import batch_norm_bwd, batch_norm_fwd, group_norm_bwd, group_norm_fwd  # noqa: E402
from .optim import (multi_tensor_adabound, multi_tensor_adagrad, multi_tensor_adam,  # noqa: E402
                    multi_tensor_rmsprop, multi_tensor_sgd)
from .row_norm import layer_norm_bwd, layer_norm_fwd, rms_norm_bwd, rms_norm_fwd  # noqa: E402
from .weight_norm import weight_norm_bwd, weight_norm_fwd  # noqa: E402
from .selective_scan import selective_scan_bwd, selective_scan_fwd  # noqa: E402
