"""Embedded training tasks: data generated in code (no download), a loss, a metric and its target.

Every batch is a pure function of ``(seed, step)``, so a resumed run sees the same data as an
uninterrupted one and ``torchrun`` ranks can each take their slice of the same global batch.

* ``copy``: ``a1..an SEP a1..an``; the model predicts the second half (an induction/copy task).
  Metric: token accuracy on the copied half (chance 1/16).
* ``digits``: procedurally rendered 16x16 digits: a 5x7 glyph per class, scaled x2, then a random
  rotation (±12°), scale (0.85-1.1), shear, shift (±2 px), stroke gain and Gaussian pixel noise.
  Metric: accuracy on a fixed 2000-image test set (chance 10 %).
* ``palindrome``: masked-language modelling on palindromes of random even length 6..16, centred
  between pads to length 16 (key-padding mask). Masked positions lie in one half, so every masked token is determined by its
  mirror. Metric: masked-token accuracy (chance 1/10).
* ``denoise``: DDPM noise prediction on the digits (scaled to [-1, 1]), linear β schedule, 200 steps.
  Metric: ε-prediction MSE over a fixed test set and fixed t (predicting 0 scores 1.0).
* ``moons``: two-moons density estimation (noise σ 0.1). Metric: test NLL in nats (a fitted Gaussian
  scores 1.925, the true density 1.009).
* ``digits_density``: the digits quantized to 16 levels, dequantized. Metric: test bits/dim (per-pixel
  histograms score 2.938).
* ``waveform``: noisy sinusoids μ-law quantized to 64 classes, next-sample prediction. Metric: test NLL
  in nats over the last 32 steps (floor 1.74, ``WaveformTask.entropy_floor``; chance ln 64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TEST_SEED = 1_000_003   # test sets are drawn from a seed no training step uses


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_000_007 + step)


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    target: float
    chance: float
    higher_is_better: bool = True

    def reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target

    def batch_for_step(self, seed: int, step: int, batch_size: int, device) -> tuple:
        return tuple(t.to(device) for t in self.make_batch(step_generator(seed, step), batch_size))

    @property
    def packable(self) -> bool:
        """Whether the task draws variable-length batches (``dlkern.models.packing``)."""
        return hasattr(self, "variable_batch")

    def variable_batch_for_step(self, seed: int, step: int, batch_size: int, device) -> tuple:
        """(tokens (B, L), valid (B, L), targets (B, L)): variable-length sequences, padded."""
        return tuple(t.to(device) for t in self.variable_batch(step_generator(seed, step), batch_size))

    @torch.no_grad()
    def evaluate(self, model, device, batch_size: int = 500) -> float:
        was_training = model.training
        model.eval()
        data = self.test_set()
        total, weight = 0.0, 0
        for i in range(0, data[0].shape[0], batch_size):
            part = tuple(t[i:i + batch_size].to(device) for t in data)
            value, count = self.score(model, part)
            total, weight = total + value * count, weight + count
        model.train(was_training)
        return total / weight


# ---------------------------------------------------------------------------------------------
# copy / induction sequences
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CopyTask(Task):
    symbols: int = 16
    length: int = 10          # a1..an; the sequence is 2n + 1 tokens, the model sees 2n

    def model_config(self) -> dict:
        return {"vocab_size": self.symbols + 1, "block_size": 2 * self.length}

    def make_batch(self, gen, batch_size):
        a = torch.randint(0, self.symbols, (batch_size, self.length), generator=gen)
        sep = torch.full((batch_size, 1), self.symbols)
        seq = torch.cat([a, sep, a], dim=1)                       # (B, 2n+1)
        targets = seq[:, 1:].clone()
        targets[:, :self.length] = -100                           # only the copy is scored
        return seq[:, :-1], targets

    def variable_batch(self, gen, batch_size):
        """``a1..an SEP a1..an`` with n drawn in [length / 2, length] per sequence, left-aligned and
        padded to 2 * length: (tokens, valid, targets) for ``--packed`` / ``--varlen-padded``."""
        n = torch.randint(max(1, self.length // 2), self.length + 1, (batch_size, 1), generator=gen)
        a = torch.randint(0, self.symbols, (batch_size, self.length), generator=gen)
        col = torch.arange(2 * self.length + 1)
        # column j < n: a_j; j == n: SEP; n < j <= 2n: a_{j-n-1}; beyond: padding (token 0)
        copy = a.gather(1, (col - n - 1).clamp(0, self.length - 1))
        seq = torch.where(col < n, a.gather(1, col.clamp(max=self.length - 1).expand(batch_size, -1)), copy)
        seq = torch.where(col == n, self.symbols, seq)
        valid_full = col <= 2 * n
        seq = seq.masked_fill(~valid_full, 0)
        valid = valid_full[:, 1:]                                  # input j is valid when j + 1 <= 2n
        targets = seq[:, 1:].masked_fill((col[1:] <= n) | ~valid, -100)  # the copy is scored
        return seq[:, :-1].masked_fill(~valid, 0), valid, targets

    def padded_loss(self, model, batch):
        tokens, valid, targets = batch            # pads follow each sequence: causal models need no mask
        return self.loss(model, (tokens, targets))

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 1000)

    def loss(self, model, batch):
        idx, targets = batch
        logits = model(idx)                                        # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    def score(self, model, batch):
        idx, targets = batch
        keep = targets != -100
        correct = (model(idx).argmax(-1) == targets)[keep]
        return correct.float().mean().item(), int(keep.sum())


# ---------------------------------------------------------------------------------------------
# procedurally rendered digits
# ---------------------------------------------------------------------------------------------
GLYPHS = [  # 5x7 bitmaps of 0..9
    [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
    ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
]
IMAGE_SIZE = 16


def _templates() -> torch.Tensor:
    """(10, 1, 16, 16): each glyph scaled x2 (14x10) and centred."""
    out = torch.zeros(10, 1, IMAGE_SIZE, IMAGE_SIZE)
    for d, rows in enumerate(GLYPHS):
        g = torch.tensor([[c == "#" for c in row] for row in rows], dtype=torch.float32)
        out[d, 0, 1:15, 3:13] = g.repeat_interleave(2, 0).repeat_interleave(2, 1)
    return out


def render_digits(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 1, 16, 16) in [0, 1] plus noise, labels (n,)) drawn with ``gen``."""
    labels = torch.randint(0, 10, (n,), generator=gen)
    u = torch.rand(n, 6, generator=gen)
    angle = (u[:, 0] - 0.5) * math.radians(24)
    scale = 0.85 + 0.25 * u[:, 1]
    shear = (u[:, 2] - 0.5) * 0.3
    shift = (u[:, 3:5] - 0.5) * (4.0 / (IMAGE_SIZE / 2))          # ±2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)   # (n, 2, 3) output -> input
    grid = F.affine_grid(theta, (n, 1, IMAGE_SIZE, IMAGE_SIZE), align_corners=False)
    images = F.grid_sample(_templates()[labels], grid, align_corners=False)
    gain = 0.6 + 0.4 * u[:, 5].view(n, 1, 1, 1)
    images = images * gain + 0.15 * torch.randn(images.shape, generator=gen)
    return images, labels


@dataclass(frozen=True)
class DigitsTask(Task):
    def model_config(self) -> dict:
        return {"img_size": IMAGE_SIZE, "in_chans": 1, "num_classes": 10}

    def make_batch(self, gen, batch_size):
        return render_digits(gen, batch_size)

    def test_set(self):
        return render_digits(torch.Generator().manual_seed(TEST_SEED), 2000)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def score(self, model, batch):
        x, y = batch
        return (model(x).argmax(-1) == y).float().mean().item(), y.numel()


# ---------------------------------------------------------------------------------------------
# palindromes, masked-language modelling
# ---------------------------------------------------------------------------------------------
PAD, MASK = 0, 1


@dataclass(frozen=True)
class PalindromeTask(Task):
    symbols: int = 10
    max_len: int = 16
    min_len: int = 6
    mask_prob: float = 0.4

    def model_config(self) -> dict:
        return {"vocab_size": self.symbols + 2, "max_len": self.max_len}

    def make_batch(self, gen, batch_size):
        """(tokens with MASKs (B, L), key_padding_mask (B, L) True = pad, targets (B, L) -100 = unscored).
        A palindrome of even length n sits centred between pads, so position i mirrors L-1-i."""
        L = self.max_len
        n = 2 * torch.randint(self.min_len // 2, L // 2 + 1, (batch_size, 1), generator=gen)
        pos = torch.arange(L).expand(batch_size, -1)
        lo = (L - n) // 2
        pad = (pos < lo) | (pos >= lo + n)
        first = torch.randint(2, self.symbols + 2, (batch_size, L), generator=gen)
        seq = torch.where(pos < L // 2, first, first.flip(1)).masked_fill(pad, PAD)
        # mask a random subset of one half (which half: per sequence); the mirror stays visible
        left = torch.rand(batch_size, 1, generator=gen) < 0.5
        half = ((pos < L // 2) == left) & ~pad
        masked = half & (torch.rand(batch_size, L, generator=gen) < self.mask_prob)
        masked |= half & ~half.roll(1, 1) & ~masked.any(1, keepdim=True)     # at least one per row
        tokens = seq.masked_fill(masked, MASK)
        targets = seq.masked_fill(~masked, -100)
        return tokens, pad, targets

    def variable_batch(self, gen, batch_size):
        """The palindromes as (tokens, valid, targets) for ``--packed`` / ``--varlen-padded``."""
        tokens, pad, targets = self.make_batch(gen, batch_size)
        return tokens, ~pad, targets

    def padded_loss(self, model, batch):
        tokens, valid, targets = batch
        return self.loss(model, (tokens, ~valid, targets))

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 1000)

    def loss(self, model, batch):
        tokens, pad, targets = batch
        logits = model(tokens, pad)                                # (B, L, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    def score(self, model, batch):
        tokens, pad, targets = batch
        keep = targets != -100
        correct = (model(tokens, pad).argmax(-1) == targets)[keep]
        return correct.float().mean().item(), int(keep.sum())


# ---------------------------------------------------------------------------------------------
# DDPM denoising on the digits
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiseTask(Task):
    timesteps: int = 200

    def model_config(self) -> dict:
        return {"img_size": IMAGE_SIZE, "in_chans": 1, "timesteps": self.timesteps}

    def alpha_bar(self) -> torch.Tensor:
        betas = torch.linspace(1e-4, 0.02 * 1000 / self.timesteps, self.timesteps)
        return torch.cumprod(1 - betas, 0)

    def make_batch(self, gen, batch_size):
        """(noisy images x_t, t, the noise ε to predict)."""
        x0 = render_digits(gen, batch_size)[0].clamp(0, 1) * 2 - 1
        t = torch.randint(0, self.timesteps, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = self.alpha_bar()[t].view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 1000)

    def loss(self, model, batch):
        x, t, eps = batch
        return F.mse_loss(model(x, t), eps)

    def score(self, model, batch):
        x, t, eps = batch
        return F.mse_loss(model(x, t), eps).item(), t.numel()


# ---------------------------------------------------------------------------------------------
# density estimation (normalizing flows): the model returns log p(x) per sample (B,)
#
# * moons: two moons (scikit-learn's make_moons layout, not standardized) with Gaussian noise σ 0.1.
#   Metric: test NLL in nats per sample; chance: a full-covariance Gaussian fitted to training data
#   (1.925); the true density scores 1.009 on the test set.
# * digits_density: the digits quantized to 16 levels, uniformly dequantized. Metric: test
#   bits/dim; chance: independent per-pixel histograms counted on training images.
# ---------------------------------------------------------------------------------------------
BASELINE_SEED = 1_000_033   # the chance baselines' training sample: a seed no training step uses


def make_moons(gen: torch.Generator, n: int, noise: float) -> torch.Tensor:
    """(n, 2) points on scikit-learn's two interleaving half circles (upper: centre (0, 0), lower:
    centre (1, 0.5), radius 1) plus Gaussian noise; the moon and the angle are drawn uniformly
    (scikit-learn spaces the angles evenly and splits n in halves)."""
    angle = torch.rand(n, generator=gen) * math.pi
    lower = torch.rand(n, generator=gen) < 0.5
    x = torch.where(lower, 1 - torch.cos(angle), torch.cos(angle))
    y = torch.where(lower, 0.5 - torch.sin(angle), torch.sin(angle))
    return torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=gen)


def gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean NLL (nats) on ``test`` (N, D) of the full-covariance Gaussian fitted to ``train``."""
    fit = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    return -fit.log_prob(test).mean().item()


@dataclass(frozen=True)
class MoonsTask(Task):
    noise: float = 0.1

    def model_config(self) -> dict:
        return {"dim": 2}

    def make_batch(self, gen, batch_size):
        return (make_moons(gen, batch_size, self.noise),)

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 2000)

    def baseline(self) -> float:
        """The chance level: a full-covariance Gaussian fitted to 20 000 training points."""
        train = make_moons(torch.Generator().manual_seed(BASELINE_SEED), 20_000, self.noise)
        return gaussian_nll(train, self.test_set()[0])

    def loss(self, model, batch):
        return -model(batch[0]).mean()                              # model: log p(x) (B,)

    def score(self, model, batch):
        return -model(batch[0]).mean().item(), batch[0].shape[0]


def quantize(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels 0..levels-1 of images clamped to [0, 1] (nearest level)."""
    return (images.clamp(0, 1) * (levels - 1)).round().long()


def pixel_histogram_bits(train: torch.Tensor, test: torch.Tensor, levels: int) -> float:
    """Bits/dim on ``test`` of independent per-pixel categorical histograms counted on ``train``
    (levels (N, D) ints; add-one smoothing so no test level has probability 0)."""
    counts = torch.ones(train.shape[1], levels).scatter_add_(1, train.T, torch.ones(train.T.shape))
    probs = counts / counts.sum(1, keepdim=True)                   # (D, levels)
    return -torch.log2(probs.gather(1, test.T)).mean().item()


@dataclass(frozen=True)
class DigitsDensityTask(Task):
    """The digits quantized to ``levels`` levels; a batch is the uniformly dequantized
    ``(q + u) / levels`` in [0, 1). The model's density p on [0, 1)^D bounds the discrete
    likelihood: -log2 P(q) <= E_u[-log2 p(y)] + D log2 levels, reported per dim (bits/dim)."""
    levels: int = 16

    def model_config(self) -> dict:
        return {"img_size": IMAGE_SIZE, "in_chans": 1}

    def make_batch(self, gen, batch_size):
        q = quantize(render_digits(gen, batch_size)[0], self.levels)
        return ((q + torch.rand(q.shape, generator=gen)) / self.levels,)

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 1000)

    def baseline(self) -> float:
        """The chance level: per-pixel histograms of 2000 training images."""
        train = quantize(render_digits(torch.Generator().manual_seed(BASELINE_SEED), 2000)[0], self.levels)
        test = quantize(render_digits(torch.Generator().manual_seed(TEST_SEED), 1000)[0], self.levels)
        return pixel_histogram_bits(train.flatten(1), test.flatten(1), self.levels)

    def bits_per_dim(self, log_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dims = y[0].numel()
        return (-log_p / dims + math.log(self.levels)) / math.log(2)

    def loss(self, model, batch):
        return self.bits_per_dim(model(batch[0]), batch[0]).mean()

    def score(self, model, batch):
        return self.bits_per_dim(model(batch[0]), batch[0]).mean().item(), batch[0].shape[0]
# noisy sinusoids, mu-law quantized: next-sample prediction
# ---------------------------------------------------------------------------------------------
def mu_law_edges(levels: int) -> torch.Tensor:
    """The levels - 1 inner bin edges of mu-law quantization (mu = levels - 1) in the signal domain:
    the companded value sign(x) ln(1 + mu|x|) / ln(1 + mu) is cut into equal bins over [-1, 1]."""
    mu = levels - 1
    y = -1 + 2 * torch.arange(1, levels, dtype=torch.float64) / levels
    return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu


@dataclass(frozen=True)
class WaveformTask(Task):
    levels: int = 64
    length: int = 64           # samples the model sees; it predicts samples 2..length+1
    context: int = 32          # the first predictions (frequency and phase still unknown) are unscored
    amplitude: float = 0.7
    noise: float = 0.065       # Gaussian noise std, signal domain
    min_period: float = 8.0    # samples per cycle, drawn log-uniform per sequence
    max_period: float = 32.0

    def model_config(self) -> dict:
        return {"classes": self.levels}

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(x.double(), mu_law_edges(self.levels))      # class 0..levels-1

    def make_batch(self, gen, batch_size):
        """(classes (B, length), targets (B, length): the next sample's class, -100 = unscored)."""
        u = torch.rand(batch_size, 2, 1, generator=gen)
        period = self.min_period * (self.max_period / self.min_period) ** u[:, 0]
        t = torch.arange(self.length + 1)
        x = self.amplitude * torch.sin(2 * math.pi * (t / period + u[:, 1]))
        q = self.quantize(x + self.noise * torch.randn(x.shape, generator=gen))   # (B, length + 1)
        targets = q[:, 1:].clone()
        targets[:, :self.context] = -100
        return q[:, :-1], targets

    def entropy_floor(self, grid: int = 8192) -> float:
        """The NLL (nats) of a predictor that knows the clean signal: the entropy of the next sample's
        class under the Gaussian noise (exact bin probabilities), averaged over the sinusoid's phase."""
        phase = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid * 2 * math.pi
        clean = self.amplitude * torch.sin(phase)
        cdf = torch.special.ndtr((mu_law_edges(self.levels) - clean[:, None]) / self.noise)   # (grid, levels-1)
        p = torch.cat([cdf[:, :1], cdf.diff(dim=1), 1 - cdf[:, -1:]], dim=1)                  # (grid, levels)
        return float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 500)

    def loss(self, model, batch):
        q, targets = batch
        return F.cross_entropy(model(q), targets, ignore_index=-100)     # logits (B, levels, L)

    def score(self, model, batch):
        q, targets = batch
        return self.loss(model, batch).item(), int((targets != -100).sum())


TASKS = {
    "copy": CopyTask("copy", "copy accuracy", target=0.99, chance=1 / 16),
    "digits": DigitsTask("digits", "test accuracy", target=0.95, chance=0.1),
    "palindrome": PalindromeTask("palindrome", "masked-token accuracy", target=0.95, chance=0.1),
    "denoise": DenoiseTask("denoise", "eps MSE", target=0.2, chance=1.0, higher_is_better=False),
    # chance: the tasks' baseline() (~0.3 s to compute, so not at import); tests check the values
    "moons": MoonsTask("moons", "test NLL (nats)", target=1.1, chance=1.925, higher_is_better=False),
    "digits_density": DigitsDensityTask("digits_density", "test bits/dim", target=2.75, chance=2.938,
                                        higher_is_better=False),
    # target: the entropy floor (1.74 nats, WaveformTask.entropy_floor) + 0.15; chance ln 64
    "waveform": WaveformTask("waveform", "test NLL (nats)", target=1.89, chance=math.log(64), higher_is_better=False),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]


# the generative / self-supervised models' tasks (GAN, contrastive) live in their own file
from dlkern.models.tasks_generative import TASKS as _GENERATIVE_TASKS  # noqa: E402

TASKS.update(_GENERATIVE_TASKS)
