"""One file per op: reference, autograd Function, public function and registry entry.
Importing this package registers every op."""
from dlkern.ops.layer_norm import add_layer_norm, layer_norm  # noqa: F401
from dlkern.ops.rms_norm import add_rms_norm, rms_norm  # noqa: F401
from dlkern.ops.batch_norm import batch_norm  # noqa: F401
from dlkern.ops.group_norm import group_norm, group_norm_act  # noqa: F401
from dlkern.ops.instance_norm import instance_norm  # noqa: F401
from dlkern.ops.weight_norm import weight_norm  # noqa: F401
from dlkern.ops.attention import scaled_dot_product_attention  # noqa: F401
from dlkern.ops.attention_varlen import flash_attn_varlen  # noqa: F401
from dlkern.ops.attention_paged import flash_attn_with_kvcache  # noqa: F401
from dlkern.ops.affine_coupling import affine_coupling  # noqa: F401
from dlkern.ops.act_norm import act_norm  # noqa: F401
from dlkern.ops.inv_conv1x1 import inv_conv1x1  # noqa: F401
from dlkern.ops.causal_conv1d import causal_conv1d, causal_conv1d_update  # noqa: F401
from dlkern.ops.depthwise_conv2d import depthwise_conv2d  # noqa: F401
from dlkern.ops.dilated_conv1d import dilated_conv1d  # noqa: F401
from dlkern.ops.wavenet import wavenet_layer  # noqa: F401
from dlkern.ops.selective_scan import selective_scan  # noqa: F401
from dlkern.ops.selective_state_update import selective_state_update  # noqa: F401

from dlkern.ops.higher_order import guard_double_backward  # noqa: E402
from dlkern.registry import OPS  # noqa: E402

guard_double_backward(OPS.values())
