"""Packed batches (``dlkern train --packed``, dlkern/models/packing.py): GPT and Mamba on variable-length
copy sequences, BERT on the palindromes. A packed batch (one row, ``cu_seqlens``) gives every
sequence the logits it gets alone and the losses of the same batch padded, on the reference and a
kernel backend (varlen attention; conv and scan reset at sequence boundaries); training packed
equals training padded step by step."""
import pytest
import torch

import dlkern
from dlkern.backend import availability
from dlkern.models import create_model, get_task, model_config
from dlkern.models.packing import pack, per_sequence_losses
from dlkern.ops.selective_scan import seq_idx_from_cu_seqlens
from dlkern.models.tasks import step_generator
from dlkern.train import train

MODELS = {"gpt": "copy", "mamba": "copy", "bert": "palindrome"}
BACKENDS = ["reference", "triton", "cuda"]


def _model(name):
    torch.manual_seed(0)
    return create_model(name, task=MODELS[name], **model_config(name, True, MODELS[name])).eval()


def _padded_logits(model, name, tokens, valid):
    return model(tokens, ~valid) if name == "bert" else model(tokens)


def test_pack_keeps_valid_tokens_in_order():
    tokens, valid, targets = get_task("copy").variable_batch(step_generator(0, 1), 5)
    p = pack(tokens, valid, targets)
    lengths = valid.sum(1)
    assert p.cu_seqlens.dtype == torch.int32 and p.cu_seqlens.tolist() == [0, *lengths.cumsum(0).tolist()]
    assert p.max_seqlen == int(lengths.max()) and len(set(lengths.tolist())) > 1   # really variable
    for i, (a, b) in enumerate(zip(p.cu_seqlens[:-1].tolist(), p.cu_seqlens[1:].tolist())):
        assert torch.equal(p.tokens[0, a:b], tokens[i, :b - a]) and torch.equal(p.targets[a:b], targets[i, :b - a])
        assert p.positions[0, a:b].tolist() == list(range(b - a))
        assert (seq_idx_from_cu_seqlens(p.cu_seqlens, p.tokens.shape[1])[0, a:b] == i).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_forward_equals_each_sequence_alone_and_padded(name, backend):
    if backend != "reference" and availability(backend, torch.device("cpu")):
        pytest.skip("; ".join(availability(backend, torch.device("cpu"))))
    model = _model(name)
    tokens, valid, targets = get_task(MODELS[name]).variable_batch(step_generator(0, 7), 3)
    p = pack(tokens, valid, targets)
    with torch.no_grad(), dlkern.use_backend(backend):
        packed = model(p.tokens, **p.model_kwargs())[0]                         # (T, V)
        padded = _padded_logits(model, name, tokens, valid)[valid]             # (T, V), same order
        with dlkern.use_backend("reference"):
            alone = torch.cat([model(tokens[i:i + 1, valid[i]], positions=torch.nonzero(valid[i])[:, 0][None])[0]
                               for i in range(tokens.shape[0])])               # each sequence by itself
    torch.testing.assert_close(packed, alone, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(packed, padded, rtol=2e-4, atol=2e-5)
    pad_losses = per_sequence_losses(padded, targets[valid], p.cu_seqlens)
    torch.testing.assert_close(per_sequence_losses(packed, p.targets, p.cu_seqlens), pad_losses, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_training_equals_padded_training(name):
    kw = dict(tiny=True, steps=3, batch_size=4, evaluate=False, progress=False, device="cpu", backend="reference")
    packed = train(name, packing="packed", **kw)["losses"]
    padded = train(name, packing="padded", **kw)["losses"]
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(padded), rtol=1e-5, atol=1e-6)
    assert packed[0] != packed[-1]


def test_packed_needs_a_packable_task_and_model():
    with pytest.raises(ValueError, match="no variable-length batches"):
        train("resnet", tiny=True, steps=1, packing="packed", evaluate=False, progress=False, device="cpu")
    with pytest.raises(ValueError, match="packing must be"):
        train("gpt", tiny=True, steps=1, packing="bogus", evaluate=False, progress=False, device="cpu")
