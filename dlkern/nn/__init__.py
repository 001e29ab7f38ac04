"""Modules that subclass torch's (parameters and state_dicts interchange) and ``functional``."""
from dlkern.nn import functional  # noqa: F401
from dlkern.nn.normalization import LayerNorm, RMSNorm  # noqa: F401

__all__ = ["functional", "LayerNorm", "RMSNorm"]
