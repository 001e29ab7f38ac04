"""Convolution modules. ``Conv2d`` subclasses torch's (constructor, parameters and state_dict are
torch's own): depthwise convolutions run dlkern's kernel, every other conv runs torch's."""
import torch

from dlkern.nn import functional as F


class Conv2d(torch.nn.Conv2d):
    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":  # torch pads explicitly, then convolves without padding
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class WaveNetLayer(torch.nn.Module):
    """One WaveNet residual layer and its parameters: a causal dilated conv from C to 2C channels,
    an optional 1x1 projection of a conditioning input (cond_channels -> 2C) added before the gate
    tanh(a) * sigmoid(b), and 1x1 residual (C -> C) and skip (C -> S) projections. The Conv1d
    submodules only hold the parameters (torch's layout and initialization); the layer runs
    :func:`dlkern.nn.functional.wavenet_layer`.

    forward(x (B, C, L), cond (B, cond_channels, L) or None) -> (x + residual, skip (B, S, L))."""

    def __init__(self, residual_channels, skip_channels, kernel_size=2, dilation=1, cond_channels=0, bias=True,
                 device=None, dtype=None):
        super().__init__()
        c, f = residual_channels, {"device": device, "dtype": dtype}
        self.dilation = dilation
        self.dilated = torch.nn.Conv1d(c, 2 * c, kernel_size, dilation=dilation, bias=bias, **f)
        self.res = torch.nn.Conv1d(c, c, 1, bias=bias, **f)
        self.skip = torch.nn.Conv1d(c, skip_channels, 1, bias=bias, **f)
        self.cond = torch.nn.Conv1d(cond_channels, 2 * c, 1, bias=False, **f) if cond_channels else None

    def forward(self, x, cond=None):
        if (cond is None) != (self.cond is None):
            raise ValueError(f"cond must be given exactly when the layer was built with cond_channels > 0 "
                             f"(cond_channels={0 if self.cond is None else self.cond.in_channels})")
        projected = self.cond(cond) if cond is not None else None
        return F.wavenet_layer(x, self.dilated.weight, self.dilated.bias, self.res.weight, self.res.bias,
                               self.skip.weight, self.skip.bias, self.dilation, projected)
