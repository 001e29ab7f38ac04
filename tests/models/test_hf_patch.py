"""``dlkern.patch`` + ``dlkern.patch_sdpa`` (+ ``dlkern.patch_functional`` for ConvNeXt, whose
LayerNorm subclass permutes around torch's forward) on models from an independent implementation:
HF transformers GPT-2, BERT, ViT and ConvNeXt from small configs with random weights give the same
logits and parameter gradients patched (dlkern's Triton kernels) as unpatched (torch)."""
import contextlib
import copy

import pytest
import torch

import dlkern
from dlkern.debug import OpsServed

transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (pip install transformers)")

KERNEL_BACKEND = "triton"   # interpreted on CPU (tests/conftest.py)
COMMON_OPS = {"attention_fwd", "attention_bwd", "layer_norm_fwd", "layer_norm_bwd"}


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    ids = torch.randint(0, 61, (2, 12))
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": ids}, COMMON_OPS


def bert():
    cfg = transformers.BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    ids = torch.randint(0, 61, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0                                        # key padding in the second sequence
    return transformers.BertForMaskedLM(cfg), {"input_ids": ids, "attention_mask": mask}, COMMON_OPS


def vit():
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    return (transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 1, 16, 16)},
            COMMON_OPS)


def convnext():
    cfg = transformers.ConvNextConfig(num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=16,
                                      num_labels=10, patch_size=2)
    ops = {"layer_norm_fwd", "layer_norm_bwd", "depthwise_conv2d_fwd", "depthwise_conv2d_bwd"}
    return transformers.ConvNextForImageClassification(cfg), {"pixel_values": torch.randn(2, 1, 16, 16)}, ops


def logits_and_grads(model, inputs):
    out = model(**inputs).logits
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [gpt2, bert, vit, convnext], ids=["gpt2", "bert", "vit", "convnext"])
def test_patched_hf_model_matches_unpatched(build):
    torch.manual_seed(0)
    model, inputs, expected_ops = build()
    model.eval()                                           # no dropout: both runs are deterministic
    patched = dlkern.patch(copy.deepcopy(model))
    want, want_grads = logits_and_grads(model, inputs)

    seen = OpsServed()
    functional = dlkern.patch_functional() if build is convnext else contextlib.nullcontext()
    with dlkern.patch_sdpa(), functional, dlkern.use_backend(KERNEL_BACKEND), seen:
        got, got_grads = logits_and_grads(patched, inputs)

    assert expected_ops <= seen.counts.keys(), f"dlkern ops run: {seen.counts}"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and len(want_grads) > 10
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
