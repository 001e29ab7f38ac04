"""VAE with an inverse autoregressive flow on the posterior (Kingma et al. 2016): the encoder's
diagonal Gaussian z_0 = μ + σ·ε is pushed through T IAF steps

    [raw, m] = MADE_t(z_{t-1}, h)         (output i depends on z_{<i} only, and on the context h)
    z_t      = z_{t-1} · sigmoid(raw + 2) + m

each one affine transform kernel (``affine_coupling`` with the sigmoid scale) whose Jacobian is
triangular, so log q(z_T|x) = log N(ε) - Σ log σ - Σ_t logdet_t: the KL term goes through the
flow's log-determinant. The order of the latent dims is reversed between steps. Decoder, bounds
and task as in vae.py."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import dlkern.nn.functional as DF
from dlkern.models.realnvp import standard_normal_log_prob
from dlkern.models.registry import TrainSettings, register_model
from dlkern.models.vae import VAE, VAEConfig


@dataclass
class IAFVAEConfig(VAEConfig):
    flow_steps: int = 2
    made_hidden: int = 64


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 connectivity mask (MADE)."""

    def __init__(self, cin, cout, mask: torch.Tensor):
        super().__init__(cin, cout)
        self.register_buffer("mask", mask.float())             # (cout, cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """(z (N, L), context h (N, Hc)) -> (N, 2L): log-scale half then shift half, output i a function
    of z_{<i} (and h). Degrees: inputs 1..L, hidden units 1..L-1 cycled, outputs 1..L; a connection
    runs from degree a to b when b >= a (hidden) or b > a (output)."""

    def __init__(self, latent: int, hidden: int, context: int):
        super().__init__()
        d_in = torch.arange(1, latent + 1)
        d_hid = torch.arange(hidden) % max(1, latent - 1) + 1
        d_out = torch.arange(1, latent + 1).repeat(2)
        self.inp = MaskedLinear(latent, hidden, d_hid[:, None] >= d_in[None])
        self.ctx = nn.Linear(context, hidden)
        self.hid = MaskedLinear(hidden, hidden, d_hid[:, None] >= d_hid[None])
        self.out = MaskedLinear(hidden, 2 * latent, d_out[:, None] > d_hid[None])
        nn.init.zeros_(self.out.weight)                          # each step starts near the identity
        nn.init.zeros_(self.out.bias)

    def forward(self, z, h):
        a = F.elu(self.inp(z) + self.ctx(h))                     # (N, hidden)
        return self.out(F.elu(self.hid(a)))                      # (N, 2L)


class IAFVAE(VAE):
    def __init__(self, cfg: IAFVAEConfig):
        super().__init__(cfg)
        self.steps = nn.ModuleList(MADE(cfg.latent, cfg.made_hidden, 4 * cfg.width) for _ in range(cfg.flow_steps))

    def posterior(self, x, k):
        """k samples of the flowed posterior: (z_T (k, B, L), log q(z_T|x) (k, B))."""
        mu, log_sigma, h = self.encoder(x)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)       # (k, B, L)
        z = (mu + log_sigma.exp() * eps).flatten(0, 1)                          # (k·B, L)
        log_q = standard_normal_log_prob(eps.flatten(0, 1)) - log_sigma.sum(1).repeat(k)
        hk = h.repeat(k, 1)                                                     # (k·B, Hc)
        for i, made in enumerate(self.steps):
            if i:
                z = z.flip(1)                                                   # reverse the order
            z, logdet = DF.affine_coupling(z, made(z, hk), scale="sigmoid")     # (k·B, L), (k·B,)
            log_q = log_q - logdet
        return z.view(k, *mu.shape), log_q.view(k, -1)


@register_model("vae_iaf", task="digits_density",
                tiny={"latent": 4, "width": 8, "groups": 2, "eval_k": 4, "flow_steps": 2, "made_hidden": 8},
                train=TrainSettings(steps=600, batch_size=64, lr=3e-3, warmup=30, eval_every=200))
def vae_iaf(**config) -> IAFVAE:
    """VAE with a 2-step IAF posterior (MADE conditioner, affine transform kernel); digits density."""
    return IAFVAE(IAFVAEConfig(**config))
