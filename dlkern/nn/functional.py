"""Mirrors ``torch.nn.functional`` for the ops dlkern implements; each accepts a keyword-only
``backend=`` ("auto", "reference", "triton", "cuda")."""
from dlkern.ops.batch_norm import batch_norm
from dlkern.ops.group_norm import group_norm, group_norm_act
from dlkern.ops.instance_norm import instance_norm
from dlkern.ops.layer_norm import add_layer_norm, layer_norm
from dlkern.ops.rms_norm import add_rms_norm, rms_norm
from dlkern.ops.weight_norm import weight_norm
from dlkern.ops.selective_scan import selective_scan, selective_state_update

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm", "instance_norm",
           "group_norm", "group_norm_act", "weight_norm",
           "selective_scan", "selective_state_update"]
