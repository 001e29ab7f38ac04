"""Optimizers mirroring ``torch.optim`` on dlkern's multi-tensor kernels."""
from dlkern.optim.adam import Adam, AdamW
from dlkern.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "SGD"]
