"""DCGAN (Radford et al. 2015) for 16x16 digits: a generator of strided transposed convs with
BatchNorm and ReLU ending in tanh, a discriminator of strided convs with BatchNorm and LeakyReLU
ending in one logit, and the non-saturating loss.

The training loop has one optimizer and one loss, so ``gan_loss`` returns
L_D + L_G with each player's gradient reaching only its own parameters:

    L_D = softplus(-D(x)) + softplus(D(G(z).detach()))    (D's parameters only: the fake is detached)
    L_G = softplus(-D'(G(z)))                             (G's parameters only: D' is D with detached parameters)

which is one simultaneous gradient step of both players (the alternating form, D then G, is the
same with G seeing the D before its step). ``generate(z)`` maps latents to images in [-1, 1];
``sample(n)`` draws n of them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import dlkern.nn as dnn
from dlkern.models.registry import TrainSettings, register_model


@dataclass
class DCGANConfig:
    img_size: int = 16        # 4 · 2^2: the generator starts at 4x4 and doubles twice
    in_chans: int = 1
    latent_dim: int = 32
    width: int = 16           # channels next to the image; 2x and 4x deeper


def dcgan_init(module):
    """DCGAN's initialization: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            # (B, latent, 1, 1) -> (B, 4w, 4, 4) -> (B, 2w, 8, 8) -> (B, C, 16, 16)
            nn.ConvTranspose2d(cfg.latent_dim, 4 * w, 4, bias=False), dnn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), dnn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, cfg.in_chans, 4, 2, 1), nn.Tanh())

    def forward(self, z):                            # z (B, latent) -> (B, C, 16, 16) in [-1, 1]
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            # (B, C, 16, 16) -> (B, w, 8, 8) -> (B, 2w, 4, 4) -> (B, 1, 1, 1)
            nn.Conv2d(cfg.in_chans, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), dnn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 1, 4))

    def forward(self, x):                            # x (B, C, 16, 16) -> logit (B,)
        return self.net(x).flatten()


class DCGAN(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        if cfg.img_size != 16:
            raise ValueError(f"this DCGAN is laid out for 16x16 images; got img_size={cfg.img_size}")
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.apply(dcgan_init)

    def generate(self, z):
        return self.generator(z)

    def gan_loss(self, real, z):                     # real (B, C, H, W) in [-1, 1], z (B, latent) -> scalar
        fake = self.generator(z)
        d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        g_loss = F.softplus(-functional_call(self.discriminator, frozen, (fake,))).mean()   # non-saturating
        return d_loss + g_loss

    def forward(self, z):
        return self.generator(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:        # -> (n, C, 16, 16) in [0, 1]
        like = next(self.parameters())
        z = torch.randn(n, self.cfg.latent_dim, device=like.device, dtype=like.dtype)
        return (self.generator(z) + 1) / 2


@register_model("dcgan", task="digits_gan", tiny={"width": 4},
                train=TrainSettings(steps=1000, batch_size=64, lr=1e-3, betas=(0.5, 0.999), warmup=20, eval_every=250))
def dcgan(**config) -> DCGAN:
    """DCGAN: transposed-conv generator, conv discriminator, BatchNorm, non-saturating loss; digits."""
    return DCGAN(DCGANConfig(**config))
