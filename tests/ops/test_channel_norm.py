"""BatchNorm / InstanceNorm / GroupNorm / WeightNorm specifics beyond the generic registry tests:
running statistics over several training steps (momentum and cumulative), eval mode, modules and
patching, the weight_norm parametrization, torch's errors, and small training loops that must give
the same losses on the reference and on the kernels."""
import copy

import pytest
import torch

import dlkern
from dlkern.backend import availability

F = dlkern.nn.functional
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_OPS = ("batch_norm", "instance_norm", "group_norm", "group_norm_silu", "weight_norm")
BACKENDS = ["reference"] + [b for b in ("triton", "cuda") if not availability(b, DEVICE)
                            and all(b in dlkern.get_op(name).backends for name in _OPS)]
KERNEL_BACKENDS = BACKENDS[1:]
needs_kernels = pytest.mark.skipif(not KERNEL_BACKENDS, reason="no kernel backend can run here")


def _assert_buffers_equal(ours, theirs):
    for (name, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"buffer {name}")
        else:
            assert torch.equal(a, b), f"buffer {name}: {a} != {b}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batch_norm_module_running_stats_and_eval(backend, momentum, layout):
    torch.manual_seed(0)
    theirs = torch.nn.BatchNorm2d(6, momentum=momentum).to(DEVICE)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours = dlkern.patch(copy.deepcopy(theirs))
    assert type(ours) is dlkern.nn.BatchNorm2d
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    with dlkern.use_backend(backend):
        for step in range(4):
            x = (torch.randn(5, 6, 4, 3, device=DEVICE) * (step + 1) + step).to(memory_format=fmt)
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        _assert_buffers_equal(ours, theirs)
        ours.eval(), theirs.eval()
        x = torch.randn(3, 6, 4, 3, device=DEVICE).to(memory_format=fmt)
        out = ours(x)
        torch.testing.assert_close(out, theirs(x), rtol=1e-5, atol=1e-5)
        assert out.is_contiguous(memory_format=fmt), "the output keeps the input's memory format"


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_without_running_stats(backend):
    theirs = torch.nn.BatchNorm1d(7, track_running_stats=False, affine=False).to(DEVICE)
    ours = dlkern.patch(copy.deepcopy(theirs))
    x = torch.randn(9, 7, 5, device=DEVICE)
    with dlkern.use_backend(backend):
        torch.testing.assert_close(ours(x), theirs(x))
        ours.eval(), theirs.eval()  # no buffers: eval mode uses the batch statistics too
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm_module_with_running_stats(backend):
    torch.manual_seed(0)
    theirs = torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True).to(DEVICE)
    ours = dlkern.patch(copy.deepcopy(theirs))
    with dlkern.use_backend(backend):
        for _ in range(3):
            x = torch.randn(3, 4, 5, 6, device=DEVICE) * 2 + 1
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        _assert_buffers_equal(ours, theirs)
        ours.eval(), theirs.eval()
        x = torch.randn(2, 4, 5, 6, device=DEVICE)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x[0]), theirs(x[0]), rtol=1e-5, atol=1e-5)  # unbatched input


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("activation", ["gelu", "relu", None])
def test_group_norm_act_other_activations(backend, activation):
    x = torch.randn(2, 8, 5, 3, device=DEVICE, requires_grad=True)
    w = torch.rand(8, device=DEVICE, requires_grad=True)
    b = torch.randn(8, device=DEVICE, requires_grad=True)
    y = F.group_norm_act(x, 4, w, b, 1e-5, activation, backend=backend)
    ref = F.group_norm_act(x, 4, w, b, 1e-5, activation, backend="reference")
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: F.batch_norm(torch.randn(1, 3), None, None, training=True), ValueError, "more than 1 value per channel"),
    (lambda: F.batch_norm(torch.randn(4, 3), None, None, training=False), ValueError, "running_mean must be given"),
    (lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(3), None, training=True), ValueError, "given together"),
    (lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(4), torch.ones(4), training=True), ValueError, r"running_mean must have shape \(C,\) = \(3,\)"),
    (lambda: F.batch_norm(torch.randn(4), None, None, training=True), ValueError, "input must have 2 to 5 dimensions"),
    (lambda: F.group_norm(torch.randn(2, 6, 4), 4), ValueError, "num_groups must be a positive int dividing the channel count 6"),
    (lambda: F.group_norm_act(torch.randn(2, 6, 4), 3, activation="tanh"), ValueError, "activation must be one of"),
    (lambda: F.instance_norm(torch.randn(2, 3, 1)), ValueError, "more than 1 spatial element"),
    (lambda: F.instance_norm(torch.randn(2, 3)), ValueError, "input must have 3 to 5 dimensions"),
    (lambda: F.weight_norm(torch.randn(4, 3), torch.ones(4, 1), dim=2), ValueError, r"dim must be None, -1"),
    (lambda: F.weight_norm(torch.randn(4, 3), torch.ones(3, 1), dim=0), ValueError, r"g must have shape \[4, 1\]"),
])
def test_bad_arguments_name_the_argument(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_parametrization_matches_torch(backend, dim):
    torch.manual_seed(0)
    ours = dlkern.nn.utils.weight_norm(torch.nn.Conv1d(4, 6, 3).to(DEVICE), dim=dim)
    theirs = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 6, 3).to(DEVICE), dim=dim)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 9, device=DEVICE)
    with dlkern.use_backend(backend):
        y = ours(x)
        grads = torch.autograd.grad(y.square().sum(), list(ours.parameters()))
    y_ref = theirs(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(theirs.parameters()))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads, grads_ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- training parity
class _ResBlock(torch.nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the identity: a ResNet basic block."""

    def __init__(self, c=8):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.conv2, self.bn2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class _UNetBlock(torch.nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus the identity: a DDPM/UNet residual block."""

    def __init__(self, c=8):
        super().__init__()
        self.gn1, self.conv1 = torch.nn.GroupNorm(4, c), torch.nn.Conv2d(c, c, 3, padding=1)
        self.gn2, self.conv2 = torch.nn.GroupNorm(4, c), torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.group_norm_act(x, 4, self.gn1.weight, self.gn1.bias, self.gn1.eps, "silu"))
        return x + self.conv2(torch.nn.functional.silu(self.gn2(h)))


def _train_losses(model, backend, steps=20, channels_last=False):
    torch.manual_seed(1)
    model = dlkern.patch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with dlkern.use_backend(backend):
        for _ in range(steps):
            x = torch.randn(4, 8, 6, 6, device=DEVICE)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            loss = (model(x) - 0.5).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("block,channels_last", [(_ResBlock, False), (_ResBlock, True), (_UNetBlock, False)])
def test_training_losses_match_reference(backend, block, channels_last):
    torch.manual_seed(0)
    model = block().to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    expected = _train_losses(copy.deepcopy(model), "reference", channels_last=channels_last)
    got = _train_losses(copy.deepcopy(model), backend, channels_last=channels_last)
    assert expected[-1] < expected[0], "the reference run should learn"
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patched_batch_norm_trains_on_an_empty_batch_as_torch(backend):
    """N = 0 in training: torch returns an empty output and leaves the running statistics as they
    were; so does a patched model on every backend (the reference serves empty inputs)."""
    theirs = torch.nn.Sequential(torch.nn.BatchNorm2d(3)).train()
    with torch.no_grad():
        theirs[0].running_mean.normal_()
    ours = dlkern.patch(copy.deepcopy(theirs))
    assert type(ours[0]) is not torch.nn.BatchNorm2d
    x = torch.randn(0, 3, 4, 5, device=DEVICE, requires_grad=True)
    with dlkern.use_backend(backend):
        y = ours.to(DEVICE)(x)
        y.sum().backward()
    expected = theirs.to(DEVICE)(x)
    assert y.shape == expected.shape == (0, 3, 4, 5)
    _assert_buffers_equal(ours, theirs)
    assert torch.equal(ours[0].weight.grad, torch.zeros(3, device=DEVICE))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_output_is_contiguous_as_torch(backend, use_input_stats):
    """torch's instance norm returns a contiguous (N, C, H, W) tensor for a channels_last input
    (unlike batch and group norm, which keep the layout); so does dlkern's on every backend."""
    x = torch.randn(2, 3, 5, 4, device=DEVICE).to(memory_format=torch.channels_last)
    rm, rv = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
    expected = torch.nn.functional.instance_norm(x, rm.clone(), rv.clone(), use_input_stats=use_input_stats)
    got = F.instance_norm(x, rm.clone(), rv.clone(), use_input_stats=use_input_stats, backend=backend)
    assert expected.is_contiguous() and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_six_dim_batch_and_instance_norm_as_torch(backend):
    x = torch.randn(2, 3, 2, 3, 2, 3, device=DEVICE, requires_grad=True)
    w = torch.randn(3, device=DEVICE, requires_grad=True)
    for ours, theirs in ((lambda t: F.batch_norm(t, None, None, w, None, True, backend=backend),
                          lambda t: torch.nn.functional.batch_norm(t, None, None, w, None, True)),
                         (lambda t: F.instance_norm(t, None, None, w, backend=backend),
                          lambda t: torch.nn.functional.instance_norm(t, None, None, w))):
        got, expected = ours(x), theirs(x)
        assert got.shape == expected.shape == x.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        g = torch.autograd.grad(got.square().sum(), (x, w))
        e = torch.autograd.grad(expected.square().sum(), (x, w))
        for a, b in zip(g, e):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_triton_launchers_refuse_int32_overflowing_inputs():
    """More elements than int32 element indices cover: the Triton launchers raise before they
    allocate (an expanded view stands for the > 2**31-element input), and supports() refuses."""
    pytest.importorskip("triton")
    from dlkern.kernels import channel_norm as kcn
    from dlkern.ops.channel_norm import MAX_ELEMENTS, kernel_support
    assert MAX_ELEMENTS == kcn.INDEX_LIMIT
    x = torch.zeros(1, 1, 1).expand(2 ** 16, 2, 2 ** 15)  # 2**32 elements, 4 bytes of storage
    w = torch.ones(2)
    with pytest.raises(ValueError, match="int32"):
        kcn.batch_norm_fwd(x, w, w, None, None, True, 1e-5)
    with pytest.raises(ValueError, match="int32"):
        kcn.group_norm_fwd(x, 1, w, w, 1e-5, None)
    with pytest.raises(ValueError, match="int32"):
        kcn.group_norm_bwd(x, x, 1, w, w, torch.zeros(2 ** 16), torch.ones(2 ** 16), None)
    assert any("int32" in r for r in kernel_support(x))
    assert not kernel_support(torch.zeros(1, 1, 1).expand(2, 2, 2))


@needs_kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2], ids=["both_split", "fwd_onchip_bwd_split"])
def test_group_norm_groups_larger_than_the_on_chip_tile(backend, channels_last, groups):
    """Groups past the Triton one-pass tiles (ONCHIP_FWD_ELEMS / ONCHIP_BWD_ELEMS; the small groups
    of the generic tests take the one-pass kernels) use the split statistics and gradient-sum
    kernels; forward and every gradient vs float64."""
    x = (torch.randn(2, 4, 100, 100, dtype=torch.float64) * 3 + 2).to(DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.rand(4, dtype=torch.float64, device=DEVICE), torch.randn(4, dtype=torch.float64, device=DEVICE)
    leaves = [t.float().requires_grad_() for t in (x, w, b)]
    y = dlkern.nn.functional.group_norm(leaves[0], groups, leaves[1], leaves[2], backend=backend)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, g)
    ref = [t.requires_grad_() for t in (x, w, b)]
    y_ref = torch.nn.functional.group_norm(ref[0], groups, ref[1], ref[2])
    want = torch.autograd.grad(y_ref, ref, g.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-3)
