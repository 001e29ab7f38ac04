"""dlkern.patch on subclasses of torch's modules (swapped only when they keep torch's computation)
and dlkern.patch_functional (torch.nn.functional's norm/conv calls served by dlkern), on the
patterns timm and HF use: a channels-first LayerNorm2d and a BatchNormAct2d that call the
functionals, a subclass that only adds a method."""
import copy

import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern.backend import availability
from dlkern.debug import OpsServed

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL = next((b for b in ("triton", "cuda") if not availability(b, DEVICE)), None)
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no kernel backend can run here")


class LayerNorm2d(torch.nn.LayerNorm):
    """timm/HF style: normalizes the channels of NCHW by permuting around the functional."""
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class BatchNormAct2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                   self.training, self.momentum, self.eps))


class NamedLayerNorm(torch.nn.LayerNorm):
    """Adds a method, keeps torch's forward."""
    def describe(self):
        return f"LN{tuple(self.normalized_shape)}"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.ln2d = LayerNorm2d(4)
        self.bn = BatchNormAct2d(4)
        self.named = NamedLayerNorm(8)

    def forward(self, x):                      # x (B, 4, 8, 8)
        return self.named(self.bn(self.ln2d(self.conv(x))))


def test_subclasses_keeping_torchs_forward_are_swapped_the_others_kept():
    net = dlkern.patch(Net())
    assert isinstance(net.named, dlkern.nn.LayerNorm) and isinstance(net.named, NamedLayerNorm)
    assert type(net.named).__name__ == "NamedLayerNorm" and net.named.describe() == "LN(8,)"
    assert type(net.ln2d) is LayerNorm2d and type(net.bn) is BatchNormAct2d   # their own forward stays
    assert isinstance(net.conv, dlkern.nn.Conv2d)


@needs_kernel
def test_patch_functional_serves_the_functionals_and_matches_torch():
    torch.manual_seed(0)
    net = Net().to(DEVICE).train()
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    want = net(x)
    want.sum().backward()
    want_grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    ours = dlkern.patch(copy.deepcopy(net))
    ours.zero_grad(set_to_none=True)
    with dlkern.patch_functional(), dlkern.use_backend(KERNEL), OpsServed() as seen:
        got = ours(x)
        got.sum().backward()
    fwd = {name: n for name, n in seen.counts.items() if name.endswith("_fwd")}
    # the conv (module), LayerNorm2d and BatchNormAct2d (functionals), NamedLayerNorm (swapped)
    assert fwd == {"depthwise_conv2d_fwd": 1, "layer_norm_fwd": 2, "batch_norm_fwd": 1}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(dict(ours.named_parameters())[name].grad, grad, rtol=1e-3, atol=1e-5)


def test_patch_functional_restores_torch_and_does_not_recurse():
    originals = {name: getattr(F, name) for name in dlkern.nn.patch.FUNCTIONALS}
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="boom"):
        with dlkern.patch_functional():
            assert F.layer_norm is not originals["layer_norm"]
            # the reference path calls torch.nn.functional.layer_norm itself: it must get torch's
            torch.testing.assert_close(F.layer_norm(x, (5,)), originals["layer_norm"](x, (5,)))
            with dlkern.use_backend("reference"):
                torch.testing.assert_close(F.group_norm(x[:, :4, None], 2), originals["group_norm"](x[:, :4, None], 2))
            raise RuntimeError("boom")
    assert all(getattr(F, name) is fn for name, fn in originals.items())
