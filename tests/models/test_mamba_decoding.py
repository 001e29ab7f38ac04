"""Mamba's recurrent decoding (causal_conv1d_update + selective_state_update per layer) equals the
full-sequence forward (causal_conv1d + selective_scan) position by position, and greedy
``generate`` picks what re-running the whole prefix would pick."""
import pytest
import torch

import dlkern
from dlkern.models import create_model


def small_mamba(device):
    torch.manual_seed(0)
    model = create_model("mamba", n_layer=2, d_model=16, d_state=8).to(device).eval()
    with torch.no_grad():   # move off the init (D = 1, A_log = log(1..N)) so every term matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
def test_step_by_step_equals_forward(backend, device):
    if backend != "reference" and dlkern.backend.availability(backend, device):
        pytest.skip("; ".join(dlkern.backend.availability(backend, device)))
    model = small_mamba(device)
    idx = torch.randint(0, 17, (3, 11), device=device)
    with torch.no_grad(), dlkern.use_backend(backend):
        full = model(idx)                                          # (3, 11, vocab)
        state = model.new_state(3)
        steps = torch.stack([model.step(idx[:, t], state) for t in range(idx.shape[1])], 1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


def test_greedy_generate_matches_rerunning_the_prefix(device):
    model = small_mamba(device)
    prompt = torch.randint(0, 17, (2, 5), device=device)
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 11):
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1)), f"position {t}"


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
def test_batched_prompts_of_different_lengths_decode_as_alone(backend, device):
    """generate(lengths=...) serves prompts of 5, 2 and 7 tokens as one batch (a pool of states,
    rows leaving as they finish): each row's tokens are its own unbatched greedy decode."""
    if backend != "reference" and dlkern.backend.availability(backend, device):
        pytest.skip("; ".join(dlkern.backend.availability(backend, device)))
    model = small_mamba(device)
    lengths, new = [5, 2, 7], 4
    idx = torch.randint(0, 17, (3, 7), generator=torch.Generator().manual_seed(3)).to(device)
    with dlkern.use_backend(backend):
        out = model.generate(idx, new, lengths=torch.tensor(lengths))
        alone = [model.generate(idx[b:b + 1, :n], new)[0] for b, n in enumerate(lengths)]
    assert out.shape == (3, 7 + new)
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, :n + new], alone[b]), f"prompt {b}"
        assert not out[b, n + new:].any()
