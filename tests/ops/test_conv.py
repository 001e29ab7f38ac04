"""What the generic registry tests do not cover for the convolutions: decoding with
causal_conv1d_update, layouts of the outputs, conv2d routing and the Conv2d module, causality,
argument errors."""
import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern.backend import BackendError, availability

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["reference", "triton", "cuda"]


def _need(backend):
    if backend != "reference" and availability(backend, DEVICE):
        pytest.skip("; ".join(availability(backend, DEVICE)))


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


# ---- causal_conv1d ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width,activation", [(4, "silu"), (1, None), (3, None)])
def test_decode_steps_equal_full_sequence(backend, width, activation):
    _need(backend)
    B, D, L = 2, 5, 9
    x, w, b = _randn(B, D, L, seed=1), _randn(D, width, seed=2), _randn(D, seed=3)
    full = dlkern.nn.functional.causal_conv1d(x, w, b, activation=activation, backend="reference")
    state = torch.zeros(B, D, width - 1, device=DEVICE)
    steps = []
    for t in range(L):
        token = x[:, :, t:t + 1] if t % 2 else x[:, :, t]  # both (B, D, 1) and (B, D)
        y = dlkern.nn.functional.causal_conv1d_update(token, state, w, b, activation, backend=backend)
        assert y.shape == token.shape
        steps.append(y.reshape(B, D))
    torch.testing.assert_close(torch.stack(steps, -1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, x[:, :, L - (width - 1):])


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_step_is_not_differentiable(backend):
    _need(backend)
    x, w = _randn(2, 3, seed=1).requires_grad_(), _randn(3, 4, seed=2).requires_grad_()
    y = dlkern.nn.functional.causal_conv1d_update(x, torch.zeros(2, 3, 3, device=DEVICE), w, backend=backend)
    assert not y.requires_grad


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_causal_conv1d_keeps_channel_last_and_takes_expanded_grads(backend):
    _need(backend)
    x = _randn(2, 11, 6, seed=1).transpose(1, 2).requires_grad_()   # (B, D, L), channel-last
    w = _randn(6, 4, seed=2).requires_grad_()
    y = dlkern.nn.functional.causal_conv1d(x, w, None, activation="silu", backend=backend)
    assert y.stride() == x.stride()
    y.sum().backward()  # the cotangent is an expanded, stride-0 tensor
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    dlkern.nn.functional.causal_conv1d(xr, wr, None, activation="silu", backend="reference").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)


def test_causal_conv1d_bad_arguments():
    x = _randn(2, 3, 5)
    with pytest.raises(ValueError, match="weight must have shape"):
        dlkern.nn.functional.causal_conv1d(x, _randn(3, 9))
    with pytest.raises(ValueError, match="activation must be None or 'silu'"):
        dlkern.nn.functional.causal_conv1d(x, _randn(3, 4), activation="relu")
    with pytest.raises(ValueError, match="conv_state must be"):
        dlkern.nn.functional.causal_conv1d_update(x[:, :, 0], torch.zeros(2, 3, 2, device=DEVICE), _randn(3, 4))


# ---- causal_conv1d: packed sequences, chunked prefill, serving caches ---------------------------
# Checked against an independent formulation: torch's conv1d run on each sequence by itself.
def _conv_alone(x, w, b, activation, before=None):
    """F.conv1d over one sequence x (B, D, L), zeros (or `before`, (B, D, W - 1)) before it."""
    width = w.shape[1]
    xin = torch.cat([before, x], -1) if before is not None else F.pad(x, (width - 1, 0))
    y = F.conv1d(xin, w.unsqueeze(1), b, groups=w.shape[0])
    return F.silu(y) if activation == "silu" else y


def _grads(out, inputs, cot):
    return torch.autograd.grad(out, inputs, cot)


def _leaves(*tensors):
    return tuple(t.clone().requires_grad_() for t in tensors)


def _assert_all_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channel_last", [False, True])
def test_packed_rows_equal_per_sequence_runs(backend, channel_last):
    _need(backend)
    lengths = [[3, 1, 6, 2], [12]]                       # row 0 packs four sequences, row 1 one
    B, D, L, W = 2, 5, 12, 4
    x = _randn(B, L, D, seed=1).transpose(1, 2) if channel_last else _randn(B, D, L, seed=1)
    w, b = _randn(D, W, seed=2), _randn(D, seed=3)
    seq = torch.tensor([sum(([i] * n for i, n in enumerate(row)), []) for row in lengths], dtype=torch.int32,
                       device=DEVICE)
    cot = _randn(B, D, L, seed=4)
    x1, w1, b1 = _leaves(x, w, b)
    y = dlkern.nn.functional.causal_conv1d(x1, w1, b1, seq, activation="silu", backend=backend)
    got = (y, *_grads(y, (x1, w1, b1), cot))
    x2, w2, b2 = _leaves(x, w, b)
    pieces = []
    for r, row in enumerate(lengths):
        starts = [sum(row[:i]) for i in range(len(row))]
        pieces.append(torch.cat([_conv_alone(x2[r:r + 1, :, s:s + n], w2, b2, "silu") for s, n in zip(starts, row)], -1))
    ref = torch.cat(pieces, 0)
    expected = (ref, *_grads(ref, (x2, w2, b2), cot))
    _assert_all_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_equals_one_shot(backend):
    """Chunks of 5, 2 (shorter than W - 1: its final states reach into its initial states) and 6
    tokens, each starting from the previous one's final states; forward and every gradient."""
    _need(backend)
    B, D, L, W = 2, 4, 13, 4
    x, w, b, cot = _randn(B, D, L, seed=1), _randn(D, W, seed=2), _randn(D, seed=3), _randn(B, D, L, seed=4)
    x1, w1, b1 = _leaves(x, w, b)
    state, outs, start = None, [], 0
    for n in (5, 2, 6):
        y, state = dlkern.nn.functional.causal_conv1d(x1[:, :, start:start + n], w1, b1, None, state, True,
                                                      activation="swish", backend=backend)  # causal-conv1d's alias
        assert state.shape == (B, D, W - 1)
        outs.append(y)
        start += n
    y = torch.cat(outs, -1)
    got = (y, state, *_grads(y, (x1, w1, b1), cot))
    x2, w2, b2 = _leaves(x, w, b)
    ref = _conv_alone(x2, w2, b2, "silu")
    expected = (ref, x[:, :, L - (W - 1):], *_grads(ref, (x2, w2, b2), cot))
    _assert_all_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_states_gradient_and_final_states_out(backend):
    _need(backend)
    B, D, L, W = 2, 3, 6, 4
    x, w, init = _randn(B, D, L, seed=1), _randn(D, W, seed=2), _randn(B, D, W - 1, seed=3)
    cot_y, cot_f = _randn(B, D, L, seed=4), _randn(B, D, W - 1, seed=5)
    out = torch.full((B, D, W - 1), float("nan"), device=DEVICE)
    x1, i1 = _leaves(x, init)
    y, final = dlkern.nn.functional.causal_conv1d(x1, w, None, None, i1, True, out, backend=backend)
    assert final is out
    got = (y, out, *_grads((y, final), (x1, i1), (cot_y, cot_f)))
    x2, i2 = _leaves(x, init)
    ref = _conv_alone(x2, w, None, None, before=i2)
    expected = (ref, x[:, :, L - (W - 1):], *_grads((ref, x2[:, :, L - (W - 1):]), (x2, i2), (cot_y, cot_f)))
    _assert_all_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_token_updates_equal_the_full_sequence(backend):
    """Pieces of 1, 3, 2 and 4 tokens through a linear state longer than W - 1."""
    _need(backend)
    B, D, W, S = 2, 5, 4, 6
    x, w, b = _randn(B, D, 10, seed=1), _randn(D, W, seed=2), _randn(D, seed=3)
    full = _conv_alone(x, w, b, "silu")
    state, outs, start = torch.zeros(B, D, S, device=DEVICE), [], 0
    for n in (1, 3, 2, 4):
        piece = x[:, :, start] if n == 1 else x[:, :, start:start + n]
        y = dlkern.nn.functional.causal_conv1d_update(piece, state, w, b, "swish", backend=backend)  # = silu
        assert y.shape == piece.shape
        outs.append(y.reshape(B, D, n))
        start += n
    torch.testing.assert_close(torch.cat(outs, -1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, x[:, :, 10 - S:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_circular_buffer_continues_each_history(backend):
    """Rows with 0, 2 and 9 past tokens held in a circular buffer of S = 5 (slot p mod S holds
    position p); 3 new tokens continue the full-sequence conv, and land at their slots."""
    _need(backend)
    B, D, W, S, new = 3, 4, 4, 5, 3
    past = [0, 2, 9]
    w, b = _randn(D, W, seed=2), _randn(D, seed=3)
    hist = _randn(B, D, max(past) + new, seed=1)
    state = torch.full((B, D, S), float("nan"), device=DEVICE)
    for r, n in enumerate(past):
        for p in range(n - S, n):                        # zeros before the sequence's start
            state[r, :, p % S] = hist[r, :, p] if p >= 0 else 0.0
    x = torch.stack([hist[r, :, n:n + new] for r, n in enumerate(past)])
    lens = torch.tensor(past, dtype=torch.int32, device=DEVICE)
    state_before = state.clone()
    y = dlkern.nn.functional.causal_conv1d_update(x, state, w, b, None, lens, backend=backend)
    for r, n in enumerate(past):
        full = _conv_alone(hist[r:r + 1, :, :n + new], w, b, None)
        torch.testing.assert_close(y[r], full[0, :, n:], rtol=1e-5, atol=1e-5)
        expected = state_before[r].clone()
        for t in range(new):
            expected[:, (n + t) % S] = x[r, :, t]
        torch.testing.assert_close(state[r], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_indices_select_pool_rows_and_skip_padding(backend):
    _need(backend)
    D, W = 6, 4
    pool = _randn(5, D, W - 1, seed=1)
    x, w = _randn(3, D, 2, seed=2), _randn(D, W, seed=3)
    rows = torch.tensor([4, -1, 1], dtype=torch.int32, device=DEVICE)
    state = pool.clone()
    y = dlkern.nn.functional.causal_conv1d_update(x, state, w, None, "silu", None, rows, backend=backend)
    for i, r in ((0, 4), (2, 1)):
        alone = pool[r:r + 1].clone()
        torch.testing.assert_close(y[i:i + 1], _conv_alone(x[i:i + 1], w, None, "silu", before=alone), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(state[r], torch.cat([pool[r], x[i]], -1)[:, 2:])
    assert torch.equal(y[1], torch.zeros_like(y[1]))                   # padding slot
    for r in (0, 2, 3):
        assert torch.equal(state[r], pool[r])                          # rows not in the batch


def test_packed_and_state_arguments_are_checked():
    x, w = _randn(2, 3, 5), _randn(3, 4)
    seq = torch.zeros(2, 5, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="seq_idx excludes initial_states"):
        dlkern.nn.functional.causal_conv1d(x, w, None, seq, _randn(2, 3, 3))
    with pytest.raises(ValueError, match="seq_idx must be None or an int32"):
        dlkern.nn.functional.causal_conv1d(x, w, None, seq.long())
    with pytest.raises(TypeError, match="the 4th argument is seq_idx"):
        dlkern.nn.functional.causal_conv1d(x, w, None, "silu")
    with pytest.raises(ValueError, match="initial_states must be None or a"):
        dlkern.nn.functional.causal_conv1d(x, w, None, None, _randn(2, 3, 2))
    with pytest.raises(ValueError, match="conv_state must be"):  # a pool needs conv_state_indices
        dlkern.nn.functional.causal_conv1d_update(x, _randn(4, 3, 3), w)


# ---- depthwise_conv2d, conv2d, Conv2d ---------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_depthwise_keeps_channels_last(backend):
    _need(backend)
    x = _randn(1, 4, 6, 5, seed=1).to(memory_format=torch.channels_last)
    y = dlkern.nn.functional.depthwise_conv2d(x, _randn(4, 1, 3, 3, seed=2), None, 2, 1, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, _randn(4, 1, 3, 3, seed=2), None, 2, 1, groups=4))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,pad,channels,stride", [(7, 3, 8, 1), (3, 1, 136, 1), (5, 4, 12, 1), (3, 0, 4, 1),
                                                    (3, 1, 8, 2), (5, 2, 12, (2, 1))])
def test_depthwise_channels_last_gradient_from_a_channels_last_model(backend, dtype, k, pad, channels, stride):
    """In a channels_last network the output's gradient arrives channels_last too, which sends the
    CUDA backward down the register-blocked paths (the registry samples' contiguous cotangents take
    the element-wise ones): dx at unit stride (dy convolved with the filter turned by 180 degrees)
    and dweight at any stride (per-chunk partial sums, then their fixed-order sum). Padding above
    K - 1 (5, 4) starts the turned window inside dy; 136 channels fill a second, partial channel
    tile. Forward and every gradient against torch in fp64, to the rounding of the output dtype."""
    _need(backend)
    x = _randn(2, channels, 7, 9, seed=1, dtype=dtype).to(memory_format=torch.channels_last)
    w, b = _randn(channels, 1, k, k, seed=2, dtype=dtype) * 0.3, _randn(channels, seed=3, dtype=dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = dlkern.nn.functional.depthwise_conv2d(*leaves, stride, pad, backend=backend)
    ref = F.conv2d(*refs, stride, pad, groups=channels)
    g = _randn(*ref.shape, seed=4, dtype=dtype).to(memory_format=torch.channels_last)
    y.backward(g)
    ref.backward(g.double())
    tol = 1e-4 if dtype == torch.float32 else 3e-2   # bf16 outputs and gradients: 8 significant bits
    torch.testing.assert_close(y.double(), ref.detach(), rtol=tol, atol=tol)
    for name, got, want in zip(("x", "weight", "bias"), leaves, refs):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=tol, atol=tol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("plane", [1, 7])
def test_depthwise_small_planes_of_many_images(backend, layout, plane):
    """Late-stage planes (7x7, 1x1) in batches: a pixel tile spans several images (Triton), so each
    image must read and write only its own plane; forward and every gradient against torch (fp64)."""
    _need(backend)
    k = 3   # the tile spans images whatever the filter; 3x3 keeps the interpreter quick
    x = _randn(3, 10, plane, plane, seed=1)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, b = _randn(10, 1, k, k, seed=2) * 0.3, _randn(10, seed=3)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = dlkern.nn.functional.depthwise_conv2d(*leaves, 1, k // 2, backend=backend)
    ref = F.conv2d(*refs, 1, k // 2, groups=10)
    g = _randn(*ref.shape, seed=4)
    y.backward(g)
    ref.backward(g.double())
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    for got, want in zip(leaves, refs):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_conv2d_routes_depthwise_to_the_kernel_and_the_rest_to_torch(backend):
    _need(backend)
    x = _randn(2, 4, 7, 7, seed=1)
    w_dw, w_full = _randn(4, 1, 3, 3, seed=2), _randn(6, 4, 3, 3, seed=3)
    y = dlkern.nn.functional.conv2d(x, w_dw, None, 1, "same", 1, 4, backend=backend)
    torch.testing.assert_close(y, F.conv2d(x, w_dw, None, 1, "same", 1, 4))
    with pytest.raises(BackendError, match="serves depthwise convolutions only"):
        dlkern.nn.functional.conv2d(x, w_full, backend=backend)
    with dlkern.use_backend(backend):  # a backend in force (not named per call) leaves the rest to torch
        torch.testing.assert_close(dlkern.nn.functional.conv2d(x, w_full, padding=1), F.conv2d(x, w_full, padding=1))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_patch_swaps_conv2d_modules(backend):
    _need(backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 7, padding=3, groups=4),
                                torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
                                torch.nn.Conv2d(4, 8, 1)).to(DEVICE)
    x = _randn(1, 4, 6, 6, seed=1)
    expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dlkern.patch(model)
    assert all(type(m) is dlkern.nn.Conv2d for m in model)
    assert model.state_dict().keys() == state.keys()
    with dlkern.use_backend(backend):
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_depthwise_bad_arguments():
    x = _randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="weight must have shape"):
        dlkern.nn.functional.depthwise_conv2d(x, _randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        dlkern.nn.functional.depthwise_conv2d(x, _randn(3, 1, 3, 3), None, 2, "same")
    with pytest.raises(ValueError, match="padding must be"):
        dlkern.nn.functional.depthwise_conv2d(x, _randn(3, 1, 3, 3), None, 1, "full")
    with pytest.raises(ValueError, match="stride must be"):
        dlkern.nn.functional.depthwise_conv2d(x, _randn(3, 1, 3, 3), None, 0)


# ---- dilated_conv1d ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_dilated_conv1d_causal_sees_no_future(backend):
    _need(backend)
    x, w = _randn(1, 3, 12, seed=1), _randn(4, 3, 2, seed=2)
    y = dlkern.nn.functional.dilated_conv1d(x, w, None, 4, True, backend=backend)
    x2 = x.clone()
    x2[:, :, 7:] += 1.0
    y2 = dlkern.nn.functional.dilated_conv1d(x2, w, None, 4, True, backend=backend)
    torch.testing.assert_close(y[:, :, :7], y2[:, :, :7])
    assert not torch.allclose(y[:, :, 7:], y2[:, :, 7:])


def test_dilated_conv1d_centered_matches_symmetric_padding():
    x, w = _randn(2, 3, 10, seed=1), _randn(4, 3, 3, seed=2)
    y = dlkern.nn.functional.dilated_conv1d(x, w, None, 2, False)
    torch.testing.assert_close(y, F.conv1d(x, w, None, padding=2, dilation=2))


def test_dilated_conv1d_bad_arguments():
    x = _randn(1, 3, 5)
    with pytest.raises(ValueError, match="weight must have shape"):
        dlkern.nn.functional.dilated_conv1d(x, _randn(2, 4, 3))
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        dlkern.nn.functional.dilated_conv1d(x, _randn(2, 3, 3), None, 0)


# ---- WaveNet layer ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_wavenet_layer_module_matches_the_eager_composition(backend):
    _need(backend)
    torch.manual_seed(0)
    layer = dlkern.nn.WaveNetLayer(4, 6, kernel_size=2, dilation=3, cond_channels=5).to(DEVICE)
    x, cond = _randn(2, 4, 11, seed=1).requires_grad_(), _randn(2, 5, 11, seed=2)
    with dlkern.use_backend(backend):
        out, skip = layer(x, cond)
    (out.square().sum() + skip.sum()).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    h = F.conv1d(F.pad(x, (3, 0)), layer.dilated.weight, layer.dilated.bias, dilation=3) + layer.cond(cond)
    z = torch.tanh(h[:, :4]) * torch.sigmoid(h[:, 4:])
    ref_out, ref_skip = x + layer.res(z), layer.skip(z)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skip, ref_skip, rtol=1e-5, atol=1e-5)
    layer.zero_grad()
    (ref_out.square().sum() + ref_skip.sum()).backward()
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_wavenet_layer_cond_must_match_the_module():
    layer = dlkern.nn.WaveNetLayer(4, 6).to(DEVICE)
    with pytest.raises(ValueError, match="cond must be given exactly"):
        layer(_randn(1, 4, 5), _randn(1, 3, 5))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_compile_fullgraph_conv_ops(backend):
    """The custom ops trace without graph breaks (fake kernels match the real output layouts)."""
    _need(backend)

    def block(x, w_dw, w_causal):
        y = dlkern.nn.functional.depthwise_conv2d(x, w_dw, None, 1, "same")          # (N, C, H, W)
        seq = y.flatten(2)                                                             # (N, C, H*W)
        return dlkern.nn.functional.causal_conv1d(seq, w_causal, None, activation="silu").square().sum()

    x = _randn(1, 4, 5, 5, seed=1).to(memory_format=torch.channels_last).requires_grad_()
    w_dw, w_causal = _randn(4, 1, 3, 3, seed=2).requires_grad_(), _randn(4, 3, seed=3).requires_grad_()
    with dlkern.use_backend(backend):
        eager = torch.autograd.grad(block(x, w_dw, w_causal), (x, w_dw, w_causal))
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        got = torch.autograd.grad(compiled(x, w_dw, w_causal), (x, w_dw, w_causal))
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e)


def test_named_backend_says_why_a_conv_is_not_served():
    x = torch.randn(1, 4, 40, 40)
    with pytest.raises(dlkern.BackendError, match=r"filter \[33, 33\] is larger than the kernels' 31x31"):
        dlkern.nn.functional.conv2d(x, torch.randn(4, 1, 33, 33), groups=4, backend="cuda")
    with pytest.raises(dlkern.BackendError, match="depthwise convolutions only"):
        dlkern.nn.functional.conv2d(x, torch.randn(8, 4, 3, 3), backend="cuda")
    # the others still run torch's conv
    torch.testing.assert_close(dlkern.nn.functional.conv2d(x, torch.ones(4, 1, 33, 33), groups=4, padding=16),
                               torch.nn.functional.conv2d(x, torch.ones(4, 1, 33, 33), groups=4, padding=16))
