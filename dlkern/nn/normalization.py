"""Normalization modules. Each subclasses the torch module it replaces, so constructors,
parameters and state_dicts are torch's own; only ``forward`` runs the dlkern op."""
import torch

from dlkern.nn import functional as F


class LayerNorm(torch.nn.LayerNorm):
    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(torch.nn.RMSNorm):
    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)
