"""Modules that subclass torch's (parameters and state_dicts interchange), ``functional`` and
``utils.weight_norm``."""
from dlkern.nn import functional, utils  # noqa: F401
from dlkern.nn.attention import MultiheadAttention, patch_sdpa  # noqa: F401
from dlkern.nn.conv import Conv2d, WaveNetLayer  # noqa: F401
from dlkern.nn.flows import ActNorm, AffineCoupling, FlowSequential, InvConv1x1, Split, Squeeze  # noqa: F401
from dlkern.nn.normalization import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm,  # noqa: F401
                                     InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm)

__all__ = ["functional", "utils", "LayerNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm",
           "MultiheadAttention", "patch_sdpa", "Conv2d", "WaveNetLayer",
           "AffineCoupling", "ActNorm", "InvConv1x1", "Squeeze", "Split", "FlowSequential"]
