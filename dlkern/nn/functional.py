"""Mirrors ``torch.nn.functional`` for the ops dlkern implements; each accepts a keyword-only
``backend=`` ("auto", "reference", "triton", "cuda")."""
# normalization
from dlkern.ops.batch_norm import batch_norm
from dlkern.ops.group_norm import group_norm, group_norm_act
from dlkern.ops.instance_norm import instance_norm
from dlkern.ops.layer_norm import add_layer_norm, layer_norm
from dlkern.ops.rms_norm import add_rms_norm, rms_norm
from dlkern.ops.weight_norm import weight_norm
# attention
from dlkern.ops.attention import scaled_dot_product_attention
from dlkern.ops.attention_varlen import flash_attn_varlen
from dlkern.ops.attention_paged import flash_attn_with_kvcache
# convolutions
from dlkern.ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from dlkern.ops.depthwise_conv2d import conv2d, depthwise_conv2d
from dlkern.ops.dilated_conv1d import dilated_conv1d
from dlkern.ops.wavenet import wavenet_layer
# selective scan (Mamba)
from dlkern.ops.selective_scan import selective_scan
from dlkern.ops.selective_state_update import selective_state_update
# normalizing flows
from dlkern.ops.act_norm import act_norm
from dlkern.ops.affine_coupling import affine_coupling
from dlkern.ops.inv_conv1x1 import inv_conv1x1

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm", "instance_norm",
           "group_norm", "group_norm_act", "weight_norm", "scaled_dot_product_attention", "flash_attn_varlen",
           "flash_attn_with_kvcache",
           "causal_conv1d", "causal_conv1d_update", "depthwise_conv2d", "conv2d", "dilated_conv1d",
           "wavenet_layer", "affine_coupling", "act_norm", "inv_conv1x1", "selective_scan",
           "selective_state_update"]
