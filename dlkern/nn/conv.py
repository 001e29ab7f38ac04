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
