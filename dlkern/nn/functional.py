"""Mirrors ``torch.nn.functional`` for the ops dlkern implements; each accepts a keyword-only
``backend=`` ("auto", "reference", "triton", "cuda")."""
from dlkern.ops.layer_norm import add_layer_norm, layer_norm
from dlkern.ops.rms_norm import add_rms_norm, rms_norm

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]
