"""The CUDA attention launchers (``attention_fwd`` / ``attention_bwd`` of ``dlkern._C_emu``, and of
``dlkern._C`` when a GPU exists) called directly against an fp64 PyTorch reference of the
launcher contract (o, lse, and dq, dk, dv, dscores by autograd). Emulated sizes stay small: the
emulator runs the threads of a block one at a time."""
import math

import pytest
import torch

from dlkern import _ext
from numerics import assert_close_to_reference

MODULES = []
if _ext._C_emu is not None:
    MODULES.append(pytest.param((_ext._C_emu, torch.device("cpu")), id="emu"))
if _ext.cuda_module() is not None:
    MODULES.append(pytest.param((_ext._C, torch.device("cuda")), id="cuda"))
if not MODULES:
    MODULES.append(pytest.param(None, marks=pytest.mark.skip(
        reason="neither dlkern._C_emu (CPU emulation build) nor dlkern._C with a GPU is available")))

NEG_INF = float("-inf")


@pytest.fixture(params=MODULES)
def kern(request):
    return request.param


def reference(q, k, v, bias, scale, is_causal, bottom_right, z=None):
    """(o (B, Hq, Lq, D), lse (B, Hq, Lq)) of the contract, computed in q's dtype; z: the dropout
    factors Z (B, Hq, Lq, Lk) or None. Fully masked rows give o = 0, lse = -inf, zero gradients."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("bhid,bhjd->bhij", q, k) * scale.to(q.dtype)[:, None, None]
    if bias is not None:
        s = s + bias.to(q.dtype)
    lq, lk = s.shape[-2:]
    if is_causal:
        offset = lk - lq if bottom_right else 0
        s = s.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None] + offset, NEG_INF)
    dead = (s == NEG_INF).all(-1, keepdim=True)
    s = s.masked_fill(dead, 0.0)  # keeps the dead rows' gradients finite (0)
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse).masked_fill(dead, 0.0)
    if z is not None:
        p = p * z.to(p.dtype)
    return p @ v, lse.masked_fill(dead, NEG_INF).squeeze(-1)


def reference_grads(dtype, q, k, v, bias, scale, causal, bottom_right, do, z, bias_grad):
    """o, lse and the gradients (dq, dk, dv, dbias) of sum(o * do) in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    b = None
    if bias is not None:
        b = bias.detach().to(dtype).clone().requires_grad_(bias_grad)  # full size: dS
    o, lse = reference(*leaves, b, scale, causal, bottom_right, z)
    grads = torch.autograd.grad(o, leaves + ([b] if bias_grad else []), do.to(dtype))
    return o.detach(), lse.detach(), grads


def check(name, got, exact, lowp, dtype):
    assert_close_to_reference(name, got.cpu(), exact, lowp, dtype)


def check_lse(got, exact):
    got = got.cpu().double()
    dead = exact == NEG_INF
    assert torch.equal(got == NEG_INF, dead), "lse must be -inf exactly on the fully masked rows"
    assert (got[~dead] - exact[~dead]).abs().max().item() <= 1e-4 * (1 + exact[~dead].abs().max().item())


def run_case(kern, dtype, B, Hq, Hkv, Lq, Lk, D, causal=False, bottom_right=False, bias=None,
             bias_grad=False, scale=None, do=None, q=None, p=0.0, z=None, seed=0, gen_seed=0):
    """Forward and backward through the kernels vs the fp64 reference (tolerance from the
    reference run in ``dtype``)."""
    module, device = kern
    gen = torch.Generator().manual_seed(gen_seed)
    if q is None:
        q = torch.randn(B, Hq, Lq, D, generator=gen)
    k = torch.randn(B, Hkv, Lk, D, generator=gen)
    v = torch.randn(B, Hkv, Lk, D, generator=gen)
    if do is None:
        do = torch.randn(B, Hq, Lq, D, generator=gen)
    if scale is None:
        scale = torch.full((Hq,), 1 / math.sqrt(D))
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))
    exact = reference_grads(torch.float64, q, k, v, bias, scale, causal, bottom_right, do, z, bias_grad)
    lowp = reference_grads(dtype, q, k, v, bias, scale, causal, bottom_right, do, z, bias_grad)

    dev = lambda t: None if t is None else t.to(device)  # noqa: E731 (keeps strides: views of one storage)
    o, lse = module.attention_fwd(dev(q), dev(k), dev(v), dev(bias), scale.to(device), p, seed, causal,
                                  bottom_right)
    assert o.dtype == dtype and o.is_contiguous() and lse.dtype == torch.float32 and lse.is_contiguous()
    check("o", o, exact[0], lowp[0], dtype)
    check_lse(lse, exact[1])
    dq, dk, dv, dscores = module.attention_bwd(dev(do), dev(q), dev(k), dev(v), o, lse, dev(bias),
                                               scale.to(device), p, seed, causal, bottom_right, bias_grad)
    for name, got, ex, lo in zip(("dq", "dk", "dv"), (dq, dk, dv), exact[2], lowp[2]):
        assert got.dtype == dtype and got.is_contiguous(), name
        check(name, got, ex, lo, dtype)
    if bias_grad:
        assert dscores.dtype == torch.float32 and dscores.shape == (B, Hq, Lq, Lk)
        check("dscores", dscores, exact[2][3], lowp[2][3], dtype)
    else:
        assert dscores is None
    return o


# --------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("D", [16, 32, 64, 80, 96, 128, 256])
def test_head_dims(kern, D):
    run_case(kern, torch.float16, 1, 2, 1, 17, 23, D)


@pytest.mark.parametrize("dtype,D", [(torch.float32, 64), (torch.bfloat16, 64), (torch.float32, 128),
                                     (torch.float32, 256), (torch.bfloat16, 256)])
def test_dtypes_gqa_causal(kern, dtype, D):
    run_case(kern, dtype, 1, 4, 2, 33, 20, D, causal=True)


@pytest.mark.parametrize("Lq,Lk", [(1, 1), (1, 100), (100, 1), (100, 37), (37, 100)])
@pytest.mark.parametrize("bottom_right", [False, True])
def test_lengths_and_causal_alignment(kern, Lq, Lk, bottom_right):
    run_case(kern, torch.float16, 1, 1, 1, Lq, Lk, 32, causal=True, bottom_right=bottom_right)


@pytest.mark.parametrize("dtype,causal,with_bias", [(torch.bfloat16, True, False), (torch.float16, False, True)])
def test_several_query_blocks_and_key_tiles(kern, dtype, causal, with_bias):
    """The 16-bit forward's 128-query blocks and 64-key tiles: a second query block, full key tiles
    below the causal diagonal (run without mask arithmetic), diagonal tiles and a partial last
    tile, with the cp.async K/V prefetch running across three tiles; the bias read in full tiles."""
    Lq, Lk = 140, 150
    bias = torch.randn(1, 1, Lq, Lk, generator=torch.Generator().manual_seed(5)) if with_bias else None
    run_case(kern, dtype, 1, 1, 1, Lq, Lk, 16, causal=causal, bottom_right=True, bias=bias)


def test_not_causal_lq_ne_lk_mqa_batch(kern):
    run_case(kern, torch.float32, 2, 4, 1, 7, 66, 18)  # D = 18: padded tile, scalar loads


# --------------------------------------------------------------------------- bias, scale, layouts
def test_key_padding_bias_expanded_with_dead_batch(kern):
    B, Hq, Lq, Lk = 3, 2, 9, 21
    pad = torch.zeros(B, 1, 1, Lk)
    pad[0, ..., 15:] = NEG_INF
    pad[1] = NEG_INF  # every key masked: batch 1 gives zeros, lse -inf, zero gradients
    o = run_case(kern, torch.float16, B, Hq, 1, Lq, Lk, 32, bias=pad.expand(B, Hq, Lq, Lk))
    assert torch.all(o[1].cpu() == 0)


@pytest.mark.parametrize("dtype,bias_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.float32, torch.float32)])
def test_per_head_bias_with_gradient_and_dead_rows(kern, dtype, bias_dtype):
    B, Hq, Lq, Lk = 2, 2, 19, 30
    rel = torch.randn(1, Hq, Lq, Lk, generator=torch.Generator().manual_seed(3)).to(bias_dtype)
    rel[0, 1, 4] = NEG_INF  # one fully masked row in head 1
    rel[0, 0, :, 7] = NEG_INF
    run_case(kern, dtype, B, Hq, Hq, Lq, Lk, 64, causal=True, bottom_right=True,
             bias=rel.expand(B, Hq, Lq, Lk), bias_grad=True)


def test_bias_gradient_beyond_the_causal_limit_is_zero(kern):
    B, Hq, Lq, Lk = 1, 1, 40, 130  # top-left causal: most key tiles are skipped for every query
    bias = torch.randn(B, Hq, Lq, Lk, generator=torch.Generator().manual_seed(4))
    run_case(kern, torch.float32, B, Hq, 1, Lq, Lk, 16, causal=True, bias=bias, bias_grad=True)


def test_per_head_scale_strided_q_and_expanded_do(kern):
    B, Hq, Lq, Lk, D = 2, 3, 13, 18, 48
    gen = torch.Generator().manual_seed(5)
    # in the test dtype already: .to(dtype) would copy them into the contiguous layout
    q = torch.randn(B, Lq, Hq, D, generator=gen).half().transpose(1, 2)  # (B, Hq, Lq, D), (L, H) swapped
    do = torch.randn(1, 1, 1, D, generator=gen).half().expand(B, Hq, Lq, D)  # stride 0 but along D
    assert do.stride() == (0, 0, 0, 1) and q.stride(2) == Hq * D
    run_case(kern, torch.float16, B, Hq, 3, Lq, Lk, D, q=q, do=do, scale=torch.tensor([0.05, 0.2, 0.4]))


def test_head_stride_not_a_multiple_of_16_bytes(kern):
    # rows 16-byte aligned within a head but heads 3 elements apart: no 16-byte loads across heads
    B, H, L, D = 1, 2, 5, 32
    q = torch.randn(B, H, L * D + 3, generator=torch.Generator().manual_seed(6)).half()
    q = q[..., :L * D].view(B, H, L, D)
    assert q.stride(1) == L * D + 3
    run_case(kern, torch.float16, B, H, H, L, 7, D, q=q)


def test_fully_expanded_do(kern):
    # the gradient of o.sum(): stride 0 along every dimension, D included (the launcher copies it)
    do = torch.ones((), dtype=torch.bfloat16).expand(1, 2, 10, 32)
    run_case(kern, torch.bfloat16, 1, 2, 2, 10, 12, 32, do=do)


# --------------------------------------------------------------------------- dropout
def dropout_factors(kern, B, H, Lq, Lk, p, seed):
    """Z (B, H, Lq, Lk) read back from the forward: q = 0 makes P = 1 / Lk, v = identity rows."""
    module, device = kern
    D = 16 * math.ceil(Lk / 16)
    q = torch.zeros(B, H, Lq, D, device=device)
    v = torch.eye(Lk, D, device=device).expand(B, H, Lk, D)
    k = torch.randn(B, H, Lk, D, device=device)
    o, _ = module.attention_fwd(q, k, v, None, torch.ones(H, device=device), p, seed, False, False)
    return o[..., :Lk].cpu().double() * Lk


def test_dropout_mask_statistics_and_determinism(kern):
    B, H, Lq, Lk, p = 2, 2, 40, 24, 0.3
    z = dropout_factors(kern, B, H, Lq, Lk, p, seed=123)
    keep = z > 0
    assert torch.allclose(z[keep], torch.full_like(z[keep], 1 / (1 - p)), rtol=1e-5)
    n = keep.numel()
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(z, dropout_factors(kern, B, H, Lq, Lk, p, seed=123)), "same seed, same mask"
    other = dropout_factors(kern, B, H, Lq, Lk, p, seed=124) > 0
    assert (other != keep).double().mean() > 0.2, "another seed draws another mask"
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert not torch.equal(keep[0, 0, 0], keep[0, 0, 1]), "rows draw independently"


@pytest.mark.parametrize("dtype,causal", [(torch.float32, False), (torch.float16, True), (torch.bfloat16, False)])
def test_dropout_forward_backward_match_the_mask(kern, dtype, causal):
    B, H, Lq, Lk, p, seed = 1, 2, 21, 30, 0.25, 7
    z = dropout_factors(kern, B, H, Lq, Lk, p, seed)
    run_case(kern, dtype, B, H, 1, Lq, Lk, 32, causal=causal, p=p, z=z, seed=seed, gen_seed=9)


# --------------------------------------------------------------------------- argument errors
@pytest.mark.skipif(_ext._C is None or torch.cuda.is_available(), reason="needs dlkern._C and no GPU")
def test_cuda_build_rejects_cpu_tensors_clearly():
    x = torch.randn(1, 1, 2, 8)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        _ext._C.attention_fwd(x, x, x, None, torch.ones(1), 0.0, 0, False, False)


@pytest.mark.parametrize("change,pattern", [
    (dict(q=torch.randn(1, 2, 3, 8).double()), "q must be float32, float16 or bfloat16"),
    (dict(k=torch.randn(1, 2, 4, 8).half()), "k must have q's dtype"),
    (dict(k=torch.randn(1, 3, 4, 8), v=torch.randn(1, 3, 4, 8)), "must divide q's head count"),
    (dict(v=torch.randn(1, 2, 5, 8)), "v must have k's shape"),
    (dict(q=torch.randn(1, 2, 3, 300), k=torch.randn(1, 2, 4, 300), v=torch.randn(1, 2, 4, 300)),
     r"head dimension D must be in \[1, 256\]"),
    (dict(bias=torch.randn(1, 1, 3, 4)), r"bias must have shape \(B, Hq, Lq, Lk\)"),
    (dict(scale=torch.ones(3)), r"scale must be a float32 tensor of shape \(Hq,\)"),
    (dict(dropout_p=1.0), r"dropout_p must be in \[0, 1\)"),
    (dict(seed=-1), "seed must be in"),
])
def test_bad_arguments_name_the_argument(kern, change, pattern):
    module, device = kern
    args = dict(q=torch.randn(1, 2, 3, 8), k=torch.randn(1, 2, 4, 8), v=torch.randn(1, 2, 4, 8), bias=None,
                scale=torch.ones(2), dropout_p=0.0, seed=0, is_causal=False, bottom_right=False)
    args.update(change)
    args = {n: a.to(device) if isinstance(a, torch.Tensor) else a for n, a in args.items()}
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        module.attention_fwd(**args)
