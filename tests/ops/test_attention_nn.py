"""dlkern.nn.MultiheadAttention against torch's, dlkern.patch / patch_sdpa, and a transformer block
under torch.compile(fullgraph=True)."""
import copy

import pytest
import torch

import dlkern
from dlkern.backend import reasons_against
from dlkern.ops.attention import ATTENTION, TORCH_SDPA
from numerics import assert_compiled_matches_eager

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference", "triton", "cuda"]


def need(backend):
    x = torch.zeros(1, 1, 1, 16, device=DEVICE)
    reasons = reasons_against(ATTENTION, backend, (x, x, x), {})
    if reasons:
        pytest.skip("; ".join(reasons))


def _mha_inputs(batch_first, gen, n=2, lq=7, lk=9, e=32):
    shape = (n, lq, e) if batch_first else (lq, n, e)
    kshape = (n, lk, e) if batch_first else (lk, n, e)
    return (torch.randn(shape, generator=gen).to(DEVICE), torch.randn(kshape, generator=gen).to(DEVICE),
            torch.randn(kshape, generator=gen).to(DEVICE))


def _masks(kind, gen, n=2, h=4, lq=7, lk=9):
    if kind == "none":
        return {}
    if kind == "key_padding":
        kpm = torch.zeros(n, lk, dtype=torch.bool)
        kpm[0, 6:] = True  # True = ignore, as in torch's MHA
        return {"key_padding_mask": kpm.to(DEVICE)}
    if kind == "bool_2d":
        return {"attn_mask": (torch.rand(lq, lk, generator=gen) > 0.7).fill_diagonal_(False).to(DEVICE)}
    if kind == "float_3d_and_padding":
        kpm = torch.zeros(n, lk)
        kpm[1, :3] = float("-inf")  # an additive float padding mask, like the float attn_mask
        return {"attn_mask": torch.randn(n * h, lq, lk, generator=gen).to(DEVICE), "key_padding_mask": kpm.to(DEVICE)}
    if kind == "causal":
        return {"attn_mask": torch.ones(lq, lk, dtype=torch.bool).triu(1).to(DEVICE), "is_causal": True}
    raise ValueError(kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "key_padding", "bool_2d", "float_3d_and_padding", "causal"])
def test_multihead_attention_matches_torch(backend, batch_first, masks):
    need(backend)
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).to(DEVICE).eval()
    mod = dlkern.nn.MultiheadAttention(32, 4, batch_first=batch_first).to(DEVICE).eval()
    mod.load_state_dict(ref.state_dict())
    q, k, v = _mha_inputs(batch_first, gen)
    kw = _masks(masks, gen)
    leaves = [[t.clone().requires_grad_(True) for t in (q, k, v)] for _ in range(2)]
    expected, _ = ref(*leaves[0], need_weights=False, **kw)
    with dlkern.use_backend(backend):
        got, weights = mod(*leaves[1], need_weights=False, **kw)
    assert weights is None
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    cot = torch.randn(expected.shape, generator=gen).to(DEVICE)
    g_ref = torch.autograd.grad(expected, leaves[0] + [ref.in_proj_weight], cot)
    g_got = torch.autograd.grad(got, leaves[1] + [mod.in_proj_weight], cot)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_multihead_attention_separate_kv_dims_and_unbatched():
    need("triton")
    gen = torch.Generator().manual_seed(1)
    ref = torch.nn.MultiheadAttention(16, 2, kdim=12, vdim=20, batch_first=True).to(DEVICE).eval()
    mod = dlkern.nn.MultiheadAttention(16, 2, kdim=12, vdim=20, batch_first=True).to(DEVICE).eval()
    mod.load_state_dict(ref.state_dict())
    q, k, v = (torch.randn(s, generator=gen).to(DEVICE) for s in ((5, 16), (6, 12), (6, 20)))  # unbatched
    with dlkern.use_backend("triton"):
        got, _ = mod(q, k, v, need_weights=False)
    torch.testing.assert_close(got, ref(q, k, v, need_weights=False)[0], atol=2e-5, rtol=1e-4)


def test_need_weights_runs_torch_and_returns_the_weights():
    gen = torch.Generator().manual_seed(2)
    ref = torch.nn.MultiheadAttention(32, 4).to(DEVICE).eval()
    mod = dlkern.nn.MultiheadAttention(32, 4).to(DEVICE).eval()
    mod.load_state_dict(ref.state_dict())
    q, k, v = _mha_inputs(False, gen)
    out, weights = mod(q, k, v)
    out_ref, weights_ref = ref(q, k, v)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(weights, weights_ref)


def test_patch_swaps_multihead_attention():
    layer = torch.nn.TransformerEncoderLayer(32, 4, batch_first=True).eval()
    reference = copy.deepcopy(layer)
    dlkern.patch(layer)
    assert type(layer.self_attn) is dlkern.nn.MultiheadAttention
    x = torch.randn(2, 5, 32, device=DEVICE)
    # The encoder layer calls self_attn(..., need_weights=False): the fused path.
    torch.testing.assert_close(layer.to(DEVICE)(x), reference.to(DEVICE)(x), atol=2e-5, rtol=1e-4)


def test_patch_sdpa_routes_torch_calls_while_active():
    need("triton")
    calls = []
    original_fwd = dlkern.ops.attention.attention_fwd_op

    q = torch.randn(1, 2, 9, 16, device=DEVICE)
    import torch.nn.functional as F
    with dlkern.patch_sdpa(), dlkern.use_backend("triton"):
        assert F.scaled_dot_product_attention is dlkern.nn.functional.scaled_dot_product_attention
        dlkern.ops.attention.attention_fwd_op = lambda *a: calls.append(a[-1]) or original_fwd(*a)
        try:
            out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        finally:
            dlkern.ops.attention.attention_fwd_op = original_fwd
    assert calls == ["triton"]
    assert F.scaled_dot_product_attention is TORCH_SDPA
    torch.testing.assert_close(out, TORCH_SDPA(q, q, q, is_causal=True), atol=2e-6, rtol=2e-5)


class _TransformerBlock(torch.nn.Module):
    """Pre-norm GPT block: LayerNorm -> causal attention -> residual -> LayerNorm -> MLP -> residual."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = dlkern.nn.LayerNorm(d), dlkern.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, x):                                                   # (B, T, C)
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = dlkern.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_transformer_block(backend):
    need(backend)
    torch.manual_seed(0)
    model = _TransformerBlock().to(DEVICE)
    assert_compiled_matches_eager(model, torch.randn(2, 11, 32, device=DEVICE, requires_grad=True), backend)


@pytest.mark.parametrize("kwargs, inp_dim, message", [
    (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), 16, r"key_padding_mask: expected shape \(2, 5\)"),
    ({}, 12, "query: expected embedding dimension 16, got 12"),
    (dict(attn_mask=torch.zeros(3, 3, dtype=torch.bool)), 16, r"attn_mask: expected shape \(5, 5\) or \(4, 5, 5\)"),
])
def test_fused_path_names_the_bad_argument(kwargs, inp_dim, message):
    mha = dlkern.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, inp_dim)
    with pytest.raises(ValueError, match=message):
        mha(x, x, x, need_weights=False, **kwargs)
