"""Normalizing-flow layers (RealNVP, Glow) on the dlkern flow ops.

Every layer maps ``forward(x) -> (y, logdet)`` and ``inverse(y) -> (x, logdet)`` with ``logdet`` of
shape (B,) (the inverse's is the negated log-determinant of the forward map). :class:`FlowSequential`
composes them: ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``, with multi-scale factoring
out of channels through :class:`Split`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dlkern.ops.act_norm import act_norm
from dlkern.ops.affine_coupling import SCALES, affine_coupling
from dlkern.ops.inv_conv1x1 import inv_conv1x1

MASKS = ("channel", "checkerboard")


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))


class AffineCoupling(nn.Module):
    """Affine coupling layer: one part of x passes unchanged and conditions ``net``, whose output
    (log-scale half, shift half along dim 1) transforms the other part.

    * ``mask="channel"``: the first ``channels // 2`` channels (features for (B, D) inputs) condition
      the rest (``parity=1`` swaps the roles); ``net`` maps (B, C_a, ...) to (B, 2·C_b, ...).
    * ``mask="checkerboard"``: positions with ``(h + w + parity)`` even (for (B, D) vectors: index
      ``d + parity`` even) condition the others; ``net`` sees x with the transformed positions
      zeroed, (B, C, H, W) -> (B, 2C, H, W), and only the transformed positions count.
    """

    def __init__(self, channels: int, net: nn.Module, *, mask: str = "channel", parity: int = 0,
                 scale: str = "exp", clamp: float | None = None):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(map(repr, MASKS))}; got {mask!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}; got {scale!r}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1; got {parity!r}")
        if mask == "channel" and channels < 2:
            raise ValueError(f"channels must be >= 2 for the channel mask; got {channels}")
        self.channels, self.net, self.mask, self.parity = channels, net, mask, parity
        self.scale, self.clamp = scale, clamp

    def _couple(self, x: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"x must have {self.channels} channels (dim 1); got shape {list(x.shape)}")
        kw = {"reverse": reverse, "scale": self.scale, "clamp": self.clamp}
        if self.mask == "channel":
            split = self.channels // 2
            a, b = x[:, :split], x[:, split:]
            if self.parity:
                a, b = x[:, self.channels - split:], x[:, :self.channels - split]
            yb, logdet = affine_coupling(b, self.net(a), **kw)
            return (torch.cat([a, yb], 1) if not self.parity else torch.cat([yb, a], 1)), logdet
        keep = self._checkerboard(x)                       # (H, W) or (D,) bool: passes unchanged
        h = self.net(x * keep.to(x.dtype))                 # (B, 2C, H, W) or (B, 2D)
        sel = ~keep
        if x.dim() == 2:                                   # vectors: gather the transformed features
            xb = x[:, sel]
            hb = h.view(x.shape[0], 2, -1)[:, :, sel].reshape(x.shape[0], -1)
        else:
            xb, hb = x[:, :, sel], h[:, :, sel]            # (B, C, K), (B, 2C, K)
        yb, logdet = affine_coupling(xb, hb, **kw)
        y = x.clone()
        if x.dim() == 2:
            y[:, sel] = yb
        else:
            y[:, :, sel] = yb
        return y, logdet

    def _checkerboard(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return (torch.arange(x.shape[1], device=x.device) + self.parity) % 2 == 0
        if x.dim() != 4:
            raise ValueError(f"the checkerboard mask takes (B, D) or (B, C, H, W); got shape {list(x.shape)}")
        h = torch.arange(x.shape[2], device=x.device)[:, None]
        w = torch.arange(x.shape[3], device=x.device)[None, :]
        return (h + w + self.parity) % 2 == 0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, reverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(y, reverse=True)


class ActNorm(nn.Module):
    """Per-channel ``y = (x + bias) · exp(logscale)`` (Glow). The first forward in training mode
    initializes bias and logscale from the batch so that y has zero mean and unit variance per
    channel; ``initialized`` (a buffer) records that, so a loaded state_dict is not re-initialized."""

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.logscale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        mean = xf.mean(dims)
        std = xf.std(dims, unbiased=False)
        self.bias.copy_(-mean)
        self.logscale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        return act_norm(x, self.bias, self.logscale)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return act_norm(y, self.bias, self.logscale, reverse=True)


class InvConv1x1(nn.Module):
    """Invertible 1×1 convolution with the LU-parametrized weight W = P L (U + diag(sign_s e^log_s))
    (Glow), initialized from a random rotation. P and sign_s are fixed buffers."""

    def __init__(self, num_channels: int, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.argmax(dim=1))       # P @ M == M[perm]
        self.register_buffer("sign_s", torch.sign(s))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def _apply_conv(self, x: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        return inv_conv1x1(x, self.lower, self.upper, self.log_s, self.sign_s, self.perm, reverse=reverse)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply_conv(x, reverse=False)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply_conv(y, reverse=True)


class Squeeze(nn.Module):
    """(B, C, H, W) -> (B, C·f², H/f, W/f) by moving each f×f block into channels (volume-preserving)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 4 or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"Squeeze({self.factor}) takes (B, C, H, W) with H and W multiples of "
                             f"{self.factor}; got shape {list(x.shape)}")
        return nn.functional.pixel_unshuffle(x, self.factor), _zeros(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return nn.functional.pixel_shuffle(y, self.factor), _zeros(y)


class Split(nn.Module):
    """Multi-scale factoring out (RealNVP): the last ``channels - channels // 2`` channels leave the
    flow here and go straight to the latent; :class:`FlowSequential` collects them."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, : x.shape[1] // 2], _zeros(x)

    @staticmethod
    def factored(x: Tensor) -> Tensor:
        return x[:, x.shape[1] // 2:]


class FlowSequential(nn.Module):
    """A flow composed of layers with ``forward(x) -> (y, logdet)`` and ``inverse(y) -> (x, logdet)``.

    ``forward(x) -> (z, logdet)``: without :class:`Split` layers z is the last layer's output; with
    them, z is (B, D) — the factored-out parts, flattened in order, then the final output.
    ``inverse(z) -> x`` undoes it (the per-sample input shape is recorded at the first forward or
    given as ``input_shape``)."""

    def __init__(self, *layers: nn.Module, input_shape: tuple | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        logdet = _zeros(x)
        factored = []
        for layer in self.layers:
            if isinstance(layer, Split):
                factored.append(Split.factored(x).flatten(1))
            x, ld = layer(x)
            logdet = logdet + ld
        if not factored:
            return x, logdet
        return torch.cat(factored + [x.flatten(1)], 1), logdet

    def _shapes(self):
        """Per-sample shape entering each Split, and the final output shape."""
        shape, at_split = self.input_shape, []
        for layer in self.layers:
            if isinstance(layer, Squeeze):
                c, h, w = shape
                shape = (c * layer.factor ** 2, h // layer.factor, w // layer.factor)
            elif isinstance(layer, Split):
                at_split.append(shape)
                shape = (shape[0] // 2, *shape[1:])
        return at_split, shape

    def inverse(self, z: Tensor) -> Tensor:
        has_split = any(isinstance(layer, Split) for layer in self.layers)
        if has_split:
            if self.input_shape is None:
                raise RuntimeError("inverse needs the input shape: run forward once or pass input_shape")
            at_split, final = self._shapes()
            sizes = [math.prod((s[0] - s[0] // 2, *s[1:])) for s in at_split] + [math.prod(final)]
            pieces = list(torch.split(z, sizes, dim=1))
            x = pieces.pop().view(z.shape[0], *final)
        else:
            x = z
        for layer in reversed(self.layers):
            if isinstance(layer, Split):
                s = at_split.pop()
                x = torch.cat([x, pieces.pop().view(z.shape[0], s[0] - s[0] // 2, *s[1:])], 1)
            else:
                x, _ = layer.inverse(x)
        return x
