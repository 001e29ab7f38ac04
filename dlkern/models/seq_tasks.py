"""Sequence tasks (issue #21): real text that ships with Python, real digits that ship with
scikit-learn, and synthetic translation-like tasks for the encoder-decoder models. Importing this
module adds them to ``dlkern.models.tasks.TASKS``. Batches are, as for every task, a pure function
of ``(seed, step)``.

* ``stdlib_chars``: the Python standard library's own ``.py`` files (this interpreter's, ~12 MB) as a
  character corpus, split by file (a file's CRC-32 of its relative path picks test for 1 in 10).
  Metric: test bits per character over fixed windows; chance: the bigram model counted on the
  training files (the unigram model scores more, see ``StdlibCharsTask.baselines``).
* ``unfold`` (ByteNet): ``a1..an`` -> ``a1 a1 a2 a2 .. an an``, a target twice the source's length.
* ``reverse`` (Seq2Seq): ``a1..an`` -> ``an..a1``, the classic case for attention.
* ``text2text`` (T5): ``PREFIX a1..an`` where the prefix token selects copy, reverse or sort.
  Metric of the three: token accuracy of greedy decoding (``model.generate(src, tgt_len)``, no
  teacher forcing); chance 1 / symbols.
* ``sklearn_digits``: scikit-learn's 1797 8x8 handwritten digits (``pip install dlkern[sklearn]``),
  a fixed 20 % test split. Metric: test accuracy. Without scikit-learn the task refuses with a
  one-line message.
"""
from __future__ import annotations

import functools
import math
import os
import sysconfig
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlkern.models.tasks import TASKS, TEST_SEED, DigitsTask, Task

# ---------------------------------------------------------------------------------------------
# stdlib_chars: character-level language modelling on the standard library's source
# ---------------------------------------------------------------------------------------------
# Vocabulary: 0 = any other byte (tab, CR, non-ASCII UTF-8 bytes), 1 = newline, 2..96 = ' '..'~'.
CHAR_VOCAB = 97
_BYTE_TO_ID = bytes(1 if b == 10 else (b - 30 if 32 <= b <= 126 else 0) for b in range(256))
_SKIPPED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__")


def encode_chars(text: bytes) -> torch.Tensor:
    """Bytes -> (N,) uint8 character ids."""
    return torch.frombuffer(bytearray(text.translate(_BYTE_TO_ID)), dtype=torch.uint8)


def decode_chars(ids) -> str:
    return "".join("\n" if i == 1 else (chr(i + 30) if i >= 2 else "?") for i in map(int, ids))


def stdlib_files(root: str | None = None) -> list[str]:
    """The standard library's .py files (relative paths, sorted), without tests, idlelib and
    installed packages."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names if n.endswith(".py")]
    return sorted(files)


def is_test_file(rel_path: str) -> bool:
    return zlib.crc32(rel_path.replace(os.sep, "/").encode()) % 10 == 0


@functools.lru_cache(maxsize=1)
def stdlib_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, test ids): the files of each split concatenated in path order, uint8."""
    root = sysconfig.get_paths()["stdlib"]
    parts = {False: [], True: []}
    for rel in stdlib_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            parts[is_test_file(rel)].append(f.read())
    if not parts[False] or not parts[True]:
        raise ValueError(f"stdlib_chars: no Python standard library sources found under {root}")
    return encode_chars(b"\n".join(parts[False])), encode_chars(b"\n".join(parts[True]))


def ngram_bits(train: torch.Tensor, test: torch.Tensor, order: int, vocab: int = CHAR_VOCAB) -> float:
    """Bits per character on ``test`` of the unigram (order 1) or bigram (order 2) model counted on
    ``train``, add-one smoothed (the bigram model scores test[1:] given the previous character)."""
    train, test = train.long(), test.long()
    if order == 1:
        p = (torch.bincount(train, minlength=vocab).double() + 1)
        return -torch.log2(p / p.sum())[test].mean().item()
    counts = torch.bincount(train[:-1] * vocab + train[1:], minlength=vocab * vocab).double().view(vocab, vocab) + 1
    p = counts / counts.sum(1, keepdim=True)
    return -torch.log2(p[test[:-1], test[1:]]).mean().item()


@dataclass(frozen=True)
class StdlibCharsTask(Task):
    block_size: int = 128          # characters the model sees; it predicts the next one at each
    test_windows: int = 384        # fixed windows spread evenly over the test files

    def model_config(self) -> dict:
        return {"vocab_size": CHAR_VOCAB, "block_size": self.block_size}

    @staticmethod
    def _windows(ids: torch.Tensor, starts: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = ids[starts[:, None] + torch.arange(length + 1)].long()      # (B, length + 1)
        return seq[:, :-1], seq[:, 1:]

    def make_batch(self, gen, batch_size):
        train = stdlib_corpus()[0]
        starts = torch.randint(0, train.numel() - self.block_size - 1, (batch_size,), generator=gen)
        return self._windows(train, starts, self.block_size)

    def test_set(self):
        test = stdlib_corpus()[1]
        starts = torch.linspace(0, test.numel() - self.block_size - 2, self.test_windows).long()
        return self._windows(test, starts, self.block_size)

    def baselines(self) -> dict:
        """Unigram and bigram bits per character on the test files (the chance level is the bigram's)."""
        train, test = stdlib_corpus()
        return {"unigram": ngram_bits(train, test, 1), "bigram": ngram_bits(train, test, 2)}

    def loss(self, model, batch):
        idx, targets = batch
        return F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())

    def score(self, model, batch):
        return self.loss(model, batch).item() / math.log(2), batch[1].numel()


# ---------------------------------------------------------------------------------------------
# synthetic translation-like tasks for the encoder-decoder models
# ---------------------------------------------------------------------------------------------
TEXT2TEXT_TASKS = ("copy", "reverse", "sort")


@dataclass(frozen=True)
class Seq2SeqTask(Task):
    """``kind`` unfold | reverse | text2text (module docstring). Tokens: symbols 0..S-1, BOS = S,
    the text2text prefixes S+1..S+3. A batch is (src (B, Ls), decoder input (B, Lt) = BOS then the
    target shifted right, target (B, Lt))."""
    kind: str = "reverse"
    symbols: int = 16
    length: int = 10

    @property
    def bos(self) -> int:
        return self.symbols

    def model_config(self) -> dict:
        prefixes = len(TEXT2TEXT_TASKS) if self.kind == "text2text" else 0
        src_len = self.length + (1 if prefixes else 0)
        tgt_len = 2 * self.length if self.kind == "unfold" else self.length
        return {"vocab_size": self.symbols + 1 + prefixes, "src_len": src_len, "tgt_len": tgt_len,
                "bos_token": self.bos}

    def make_batch(self, gen, batch_size):
        a = torch.randint(0, self.symbols, (batch_size, self.length), generator=gen)
        if self.kind == "unfold":
            src, tgt = a, a.repeat_interleave(2, dim=1)
        elif self.kind == "reverse":
            src, tgt = a, a.flip(1)
        elif self.kind == "text2text":
            which = torch.randint(0, len(TEXT2TEXT_TASKS), (batch_size, 1), generator=gen)
            tgt = torch.where(which == 0, a, torch.where(which == 1, a.flip(1), a.sort(1).values))
            src = torch.cat([self.symbols + 1 + which, a], 1)
        else:
            raise ValueError(f"unknown Seq2SeqTask kind {self.kind!r}")
        tgt_in = torch.cat([torch.full((batch_size, 1), self.bos), tgt[:, :-1]], 1)
        return src, tgt_in, tgt

    def test_set(self):
        return self.make_batch(torch.Generator().manual_seed(TEST_SEED), 1000)

    def loss(self, model, batch):
        src, tgt_in, tgt = batch
        return F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten())   # logits (B, Lt, V)

    def score(self, model, batch):
        src, _, tgt = batch
        out = model.generate(src, tgt.shape[1])                                    # greedy (B, Lt)
        return (out == tgt).float().mean().item(), tgt.numel()


# ---------------------------------------------------------------------------------------------
# scikit-learn's 8x8 digits (optional: pip install dlkern[sklearn])
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def sklearn_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images (N, 1, 8, 8) in [0, 1], train labels, test images, test labels): a fixed
    permutation, the last 20 % for test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("task sklearn_digits needs scikit-learn, which is not installed: "
                         "pip install 'dlkern[sklearn]' (or scikit-learn)") from None
    data = load_digits()
    images = torch.tensor(data.images.tolist(), dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target.tolist())
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    n_test = labels.numel() // 5
    train, test = order[n_test:], order[:n_test]
    return images[train], labels[train], images[test], labels[test]


@dataclass(frozen=True)
class SklearnDigitsTask(DigitsTask):
    """The rendered digits' loss and accuracy on scikit-learn's images."""

    def model_config(self) -> dict:
        return {"img_size": 8, "in_chans": 1, "num_classes": 10}

    def make_batch(self, gen, batch_size):
        images, labels = sklearn_digits()[:2]
        pick = torch.randint(0, labels.numel(), (batch_size,), generator=gen)
        return images[pick], labels[pick]

    def test_set(self):
        return sklearn_digits()[2:]


TASKS.update({
    # chance: the bigram model's bits per character on the test files (StdlibCharsTask.baselines;
    # tests check it), which depends a little on the Python version's standard library (3.11 here)
    "stdlib_chars": StdlibCharsTask("stdlib_chars", "test bits/char", target=2.8, chance=3.54,
                                    higher_is_better=False),
    "unfold": Seq2SeqTask("unfold", "greedy token accuracy", target=0.97, chance=1 / 16, kind="unfold"),
    "reverse": Seq2SeqTask("reverse", "greedy token accuracy", target=0.97, chance=1 / 16, kind="reverse"),
    "text2text": Seq2SeqTask("text2text", "greedy token accuracy", target=0.97, chance=1 / 10, kind="text2text",
                             symbols=10, length=8),
    "sklearn_digits": SklearnDigitsTask("sklearn_digits", "test accuracy", target=0.95, chance=0.1),
})
