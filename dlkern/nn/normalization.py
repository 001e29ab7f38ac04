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


class _BatchNormMixin:
    """torch's _BatchNorm.forward logic (momentum=None: cumulative average over
    num_batches_tracked; eval without buffers: batch statistics) on dlkern's batch_norm."""

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats  # buffers updated only when tracked
        return F.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)


class BatchNorm1d(_BatchNormMixin, torch.nn.BatchNorm1d):
    pass


class BatchNorm2d(_BatchNormMixin, torch.nn.BatchNorm2d):
    pass


class BatchNorm3d(_BatchNormMixin, torch.nn.BatchNorm3d):
    pass


class _InstanceNormMixin:
    """torch's _InstanceNorm handles unbatched input and the option checks, then calls
    ``_apply_instance_norm``: only that step runs on dlkern."""

    def _apply_instance_norm(self, input):
        return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                               self.training or not self.track_running_stats,
                               self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNormMixin, torch.nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_InstanceNormMixin, torch.nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_InstanceNormMixin, torch.nn.InstanceNorm3d):
    pass


class GroupNorm(torch.nn.GroupNorm):
    def forward(self, input):
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
