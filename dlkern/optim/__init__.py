"""Optimizers mirroring ``torch.optim`` on dlkern's multi-tensor kernels (and AdaBound)."""
from dlkern.optim.adabound import AdaBound
from dlkern.optim.adagrad import Adagrad
from dlkern.optim.adam import Adam, AdamW
from dlkern.optim.rmsprop import RMSprop
from dlkern.optim.sgd import SGD

__all__ = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "AdaBound"]
