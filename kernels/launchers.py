"""Every Triton launcher (no autograd here), by name: ``dlkern.kernels.launchers.<name>`` has the
same name and signature as its CUDA twin in ``dlkern._C``. ``INTERPRET``: see ``interpret.py``.
"""
from .interpret import INTERPRET  # noqa: F401
from .attention import attention_bwd, attention_fwd
from .attention_varlen import attention_varlen_bwd, attention_varlen_fwd
from .attention_paged import attention_paged_fwd
from .channel_norm import batch_norm_bwd, batch_norm_fwd, group_norm_bwd, group_norm_fwd
from .optim import (multi_tensor_adabound, multi_tensor_adagrad, multi_tensor_adam,
                    multi_tensor_rmsprop, multi_tensor_sgd)
from .row_norm import layer_norm_bwd, layer_norm_fwd, rms_norm_bwd, rms_norm_fwd
from .weight_norm import weight_norm_bwd, weight_norm_fwd
from .affine_coupling import affine_coupling_bwd, affine_coupling_fwd
from .act_norm import act_norm_bwd, act_norm_fwd
from .inv_conv1x1 import inv_conv1x1_bwd, inv_conv1x1_fwd
from .causal_conv1d import causal_conv1d_bwd, causal_conv1d_fwd
from .causal_conv1d_update import causal_conv1d_update
from .depthwise_conv2d import depthwise_conv2d_bwd, depthwise_conv2d_fwd
from .dilated_conv1d import dilated_conv1d_bwd, dilated_conv1d_fwd
from .wavenet import wavenet_layer_bwd, wavenet_layer_fwd
from .selective_scan import selective_scan_bwd, selective_scan_fwd
from .selective_state_update import selective_state_update
