"""Attention beyond the generic registry tests: dropout (mask regeneration and statistics),
per-head temperature gradients, fully masked rows, parity of the default path with torch's SDPA,
leading dims, expanded gradients, long sequences and argument errors."""
import pytest
import torch

import dlkern
from dlkern.backend import reasons_against
from dlkern.ops.attention import ATTENTION, TORCH_SDPA, attention_ref
from dlkern.ops.attention import scaled_dot_product_attention as sdpa
from numerics import assert_close_to_reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["triton", "cuda"]


def rand(*shape, dtype=torch.float32, gen=None):
    return torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE)


def need(backend, *args):
    reasons = reasons_against(ATTENTION, backend, args, {})
    if reasons:
        pytest.skip("; ".join(reasons))


def grads_of(fn, inputs, cot):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    return out, torch.autograd.grad(out, inputs, cot)


# ---------------------------------------------------------------------------------------------
# The default (reference) path is torch's SDPA for torch's arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "gqa", "scale"])
def test_reference_path_equals_torch(case):
    gen = torch.Generator().manual_seed(0)
    q, k, v = rand(2, 4, 9, 16, gen=gen), rand(2, 4, 12, 16, gen=gen), rand(2, 4, 12, 16, gen=gen)
    kwargs = {}
    if case == "bool_mask":
        kwargs["attn_mask"] = rand(2, 1, 9, 12, gen=gen) > -0.5
    elif case == "float_mask":
        kwargs["attn_mask"] = rand(1, 4, 9, 12, gen=gen)
    elif case == "causal":
        kwargs["is_causal"] = True
    elif case == "gqa":
        k, v, kwargs["enable_gqa"] = k[:, :2], v[:, :2], True
    elif case == "scale":
        kwargs["scale"] = 0.17
    got = sdpa(q, k, v, backend="reference", **kwargs)
    assert torch.equal(got, TORCH_SDPA(q, k, v, **kwargs))


@pytest.mark.parametrize("extra", [{"temperature": 0.7}, {"causal_alignment": "bottom_right", "is_causal": True},
                                   {"is_causal": True, "attn_mask": "bool"}])
def test_reference_path_extras_match_the_oracle(extra):
    """temperature, bottom-right causal and causal + mask are translated into torch's arguments."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (rand(1, 2, n, 8, dtype=torch.float64, gen=gen) for n in (5, 11, 11))
    extra = dict(extra)
    if extra.get("attn_mask") == "bool":
        extra["attn_mask"] = rand(1, 2, 5, 11, gen=gen) > -1.0
    torch.testing.assert_close(sdpa(q, k, v, backend="reference", **extra), attention_ref(q, k, v, **extra))


# ---------------------------------------------------------------------------------------------
# Semantics every backend must share
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_fully_masked_rows_give_zeros_and_zero_grads(backend):
    gen = torch.Generator().manual_seed(2)
    q, k, v = rand(1, 2, 6, 16, gen=gen), rand(1, 2, 7, 16, gen=gen), rand(1, 2, 7, 16, gen=gen)
    mask = torch.ones(1, 1, 6, 7, dtype=torch.bool, device=DEVICE)
    mask[..., 2, :] = False
    need(backend, q, k, v, mask)
    out, (dq, dk, dv) = grads_of(lambda *t: sdpa(*t, attn_mask=mask, backend=backend), (q, k, v),
                                 torch.ones(1, 2, 6, 16, device=DEVICE))
    assert torch.isfinite(out).all() and torch.isfinite(dq).all() and torch.isfinite(dk).all()
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    assert torch.equal(dq[..., 2, :], torch.zeros_like(dq[..., 2, :]))
    assert out[..., 1, :].abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bottom_right_with_more_queries_than_keys(backend):
    """Lq > Lk aligned bottom-right: the first Lq - Lk queries see no key at all."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = rand(1, 1, 9, 16, gen=gen), rand(1, 1, 4, 16, gen=gen), rand(1, 1, 4, 16, gen=gen)
    need(backend, q, k, v)
    kw = dict(is_causal=True, causal_alignment="bottom_right")
    out = sdpa(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(out, attention_ref(q, k, v, **kw), atol=2e-6, rtol=2e-5)
    assert torch.equal(out[..., :5, :], torch.zeros_like(out[..., :5, :]))


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_per_head_temperature_gets_a_gradient(backend):
    gen = torch.Generator().manual_seed(4)
    q, k, v = rand(2, 3, 10, 16, gen=gen), rand(2, 3, 10, 16, gen=gen), rand(2, 3, 10, 16, gen=gen)
    temp = torch.tensor([0.5, 1.0, 2.0], device=DEVICE)
    need(backend, q, k, v)
    cot = rand(2, 3, 10, 16, gen=gen)
    out, grads = grads_of(lambda *t: sdpa(*t[:3], temperature=t[3], is_causal=True, backend=backend),
                          (q, k, v, temp), cot)
    exact, exact_grads = grads_of(lambda *t: attention_ref(*t[:3], temperature=t[3], is_causal=True),
                                  [t.double() for t in (q, k, v, temp)], cot.double())
    low, low_grads = grads_of(lambda *t: attention_ref(*t[:3], temperature=t[3], is_causal=True),
                              (q, k, v, temp), cot)
    assert_close_to_reference("out", out, exact, low, torch.float32, 4.0)
    for name, g, e, lo in zip(("dq", "dk", "dv", "dtemperature"), grads, exact_grads, low_grads):
        assert_close_to_reference(name, g, e, lo, torch.float32, 4.0)
    assert grads[3].abs().min() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_backward_with_expanded_gradient(backend):
    """``out.sum().backward()`` hands the backward a stride-0 gradient."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = rand(1, 2, 19, 32, gen=gen), rand(1, 2, 19, 32, gen=gen), rand(1, 2, 19, 32, gen=gen)
    need(backend, q, k, v)
    got = [t.clone().requires_grad_(True) for t in (q, k, v)]
    sdpa(*got, is_causal=True, backend=backend).sum().backward()
    exp = [t.double().requires_grad_(True) for t in (q, k, v)]
    attention_ref(*exp, is_causal=True).sum().backward()
    for g, e in zip(got, exp):
        torch.testing.assert_close(g.grad, e.grad.float(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 11, 16), (2, 2, 3, 11, 16)], ids=["3d", "5d"])
def test_leading_dims(backend, shape):
    gen = torch.Generator().manual_seed(6)
    q, k, v = (rand(*shape, gen=gen) for _ in range(3))
    need(backend, q, k, v)
    torch.testing.assert_close(sdpa(q, k, v, backend=backend), attention_ref(q, k, v), atol=2e-6, rtol=2e-5)


@pytest.mark.parametrize("lq,lk,kw", [(1000, 48, {}), (48, 1000, {"is_causal": True, "causal_alignment": "bottom_right"})],
                         ids=["lq1000", "lk1000_causal"])
def test_long_sequence_triton(lq, lk, kw):
    """1000 queries or keys: many blocks, a partial last block, causal block skipping."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = rand(1, 1, lq, 16, gen=gen), rand(1, 1, lk, 16, gen=gen), rand(1, 1, lk, 16, gen=gen)
    need("triton", q, k, v)
    cot = rand(1, 1, lq, 16, gen=gen)
    out, grads = grads_of(lambda *t: sdpa(*t, backend="triton", **kw), (q, k, v), cot)
    exact, exact_grads = grads_of(lambda *t: attention_ref(*t, **kw), [t.double() for t in (q, k, v)], cot.double())
    low, low_grads = grads_of(lambda *t: attention_ref(*t, **kw), (q, k, v), cot)
    assert_close_to_reference("out", out, exact, low, torch.float32, 4.0)
    for name, g, e, lo in zip(("dq", "dk", "dv"), grads, exact_grads, low_grads):
        assert_close_to_reference(name, g, e, lo, torch.float32, 4.0)


# ---------------------------------------------------------------------------------------------
# Dropout: the mask is a function of (seed, b, h, i, j); the backward regenerates it
# ---------------------------------------------------------------------------------------------
def _dropout_scale_matrix(backend, b, h, lq, lk, p, seed):
    """Z (B, H, Lq, Lk) as the kernel draws it: with q = 0 every probability is 1/Lk, and with
    value rows e_j the output is o_ij = Z_ij / Lk."""
    d = max(16, lk)
    q = torch.zeros(b, h, lq, d, device=DEVICE)
    k = torch.zeros(b, h, lk, d, device=DEVICE)
    v = torch.eye(lk, d, device=DEVICE).expand(b, h, lk, d).contiguous()
    torch.manual_seed(seed)
    return sdpa(q, k, v, dropout_p=p, backend=backend)[..., :lk] * lk


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_forward_and_backward_use_one_mask(backend):
    b, h, lq, lk, p = 2, 2, 12, 24, 0.3
    need(backend, torch.zeros(1, 1, 1, 16, device=DEVICE), torch.zeros(1, 1, 1, 16, device=DEVICE),
         torch.zeros(1, 1, 1, 16, device=DEVICE))
    z = _dropout_scale_matrix(backend, b, h, lq, lk, p, seed=11)
    kept = z[z != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))

    gen = torch.Generator().manual_seed(8)
    q, k, v = rand(b, h, lq, 24, gen=gen), rand(b, h, lk, 24, gen=gen), rand(b, h, lk, 24, gen=gen)
    cot = rand(b, h, lq, 24, gen=gen)

    def kernel(*t):
        torch.manual_seed(11)  # the same seed draws the same mask
        return sdpa(*t, dropout_p=p, backend=backend)

    def masked_ref(q, k, v):
        s = torch.softmax(q @ k.transpose(-2, -1) / 24 ** 0.5, dim=-1)
        return (s * z.to(s.dtype)) @ v

    out, grads = grads_of(kernel, (q, k, v), cot)
    exact, exact_grads = grads_of(masked_ref, [t.double() for t in (q, k, v)], cot.double())
    torch.testing.assert_close(out, exact.float(), atol=2e-5, rtol=1e-4)
    for g, e in zip(grads, exact_grads):
        torch.testing.assert_close(g, e.float(), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_statistics_and_reproducibility(backend):
    p = 0.25
    need(backend, torch.zeros(1, 1, 1, 16, device=DEVICE), torch.zeros(1, 1, 1, 16, device=DEVICE),
         torch.zeros(1, 1, 1, 16, device=DEVICE))
    z = _dropout_scale_matrix(backend, 2, 2, 32, 48, p, seed=5)
    keep = (z != 0).double().mean().item()
    sigma = (p * (1 - p) / z.numel()) ** 0.5
    assert abs(keep - (1 - p)) < 5 * sigma, f"kept fraction {keep:.4f}, expected {1 - p} ± {5 * sigma:.4f}"
    assert torch.equal(z, _dropout_scale_matrix(backend, 2, 2, 32, 48, p, seed=5))
    assert not torch.equal(z, _dropout_scale_matrix(backend, 2, 2, 32, 48, p, seed=6))
    # Heads and batches draw different masks.
    assert not torch.equal(z[0, 0], z[0, 1]) and not torch.equal(z[0, 0], z[1, 0])


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument():
    q = torch.randn(1, 4, 5, 8)
    kv = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, kv, kv)
    with pytest.raises(ValueError, match="dropout_p"):
        sdpa(q, q, q, dropout_p=1.5)
    with pytest.raises(ValueError, match="do not broadcast"):
        sdpa(torch.randn(2, 4, 5, 8), torch.randn(3, 4, 5, 8), torch.randn(3, 4, 5, 8))
    with pytest.raises(ValueError, match="causal_alignment"):
        sdpa(q, q, q, causal_alignment="left")
    with pytest.raises(ValueError, match="temperature"):
        sdpa(q, q, q, temperature=torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        sdpa(q, q, q, temperature=0.0)
    with pytest.raises(ValueError, match="attn_mask"):
        sdpa(q, q, q, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="query"):
        sdpa(q.long(), q, q)
    with pytest.raises(ValueError, match="same dtype"):
        sdpa(q, q.double(), q.double())
    with pytest.raises(dlkern.BackendError, match="value head dim"):
        sdpa(q, q, torch.randn(1, 4, 5, 4), backend="triton")


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_dropout_one_gives_zeros_as_torch(backend):
    """dropout_p=1 drops every weight: zeros, and zero (not missing) gradients."""
    q = torch.randn(2, 2, 5, 8, device=DEVICE, requires_grad=True)
    if backend != "reference":
        need(backend, q, q, q)
    out = sdpa(q, q, q, dropout_p=1.0, backend=backend)
    assert out.shape == (2, 2, 5, 8) and torch.equal(out, torch.zeros_like(out))
    (g,) = torch.autograd.grad(out.sum(), q)
    assert torch.equal(g, torch.zeros_like(q))
