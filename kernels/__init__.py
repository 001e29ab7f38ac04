"""Triton kernels and their launchers (no autograd here), shipped as ``dlkern.kernels``.

Every launcher has the same name and signature as its CUDA twin in ``dlkern._C``.
``INTERPRET`` records whether Triton's CPU interpreter was enabled (``TRITON_INTERPRET=1``) when
these kernels were defined: the interpreter only applies to kernels defined after it is set.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

from .attention import attention_bwd, attention_fwd  # noqa: E402
from .channel_norm import batch_norm_bwd, batch_norm_fwd, group_norm_bwd, group_norm_fwd  # noqa: E402
from .optim import (multi_tensor_adabound, multi_tensor_adagrad, multi_tensor_adam,  # noqa: E402
                    multi_tensor_rmsprop, multi_tensor_sgd)
from .row_norm import layer_norm_bwd, layer_norm_fwd, rms_norm_bwd, rms_norm_fwd  # noqa: E402
from .weight_norm import weight_norm_bwd, weight_norm_fwd  # noqa: E402
from .affine_coupling import affine_coupling_bwd, affine_coupling_fwd  # noqa: E402
from .act_norm import act_norm_bwd, act_norm_fwd  # noqa: E402
from .inv_conv1x1 import inv_conv1x1_bwd, inv_conv1x1_fwd  # noqa: E402
from .causal_conv1d import causal_conv1d_bwd, causal_conv1d_fwd, causal_conv1d_update  # noqa: E402
from .depthwise_conv2d import depthwise_conv2d_bwd, depthwise_conv2d_fwd  # noqa: E402
from .dilated_conv1d import dilated_conv1d_bwd, dilated_conv1d_fwd  # noqa: E402
from .wavenet import wavenet_layer_bwd, wavenet_layer_fwd  # noqa: E402
from .selective_scan import selective_scan_bwd, selective_scan_fwd  # noqa: E402
