"""``dlkern.patch`` + ``dlkern.patch_functional`` + ``dlkern.patch_sdpa`` on timm's own models
(convnext_atto, efficientnet_b0, resnet18, vit_tiny), random weights, reduced depth and resolution:
the patched model (dlkern's Triton kernels) gives logits and parameter gradients as close to the
fp64 model's as the unpatched one (torch) does, and every norm/conv/attention family the
architecture uses was served by dlkern (timm's ``LayerNorm2d`` and ``BatchNormAct2d`` have their
own ``forward``, so they reach dlkern through the functionals)."""
import copy

import pytest
import torch

import dlkern
from dlkern.debug import OpsServed

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[test]' brings it)")

KERNEL_BACKEND = "triton"   # interpreted on CPU (tests/conftest.py)

CASES = {
    # name: (timm kwargs, input (N, C, H, W), op families dlkern must have served, fwd and bwd).
    # timm's own blocks and norm classes at reduced depth and resolution: the Triton kernels run in
    # the interpreter here, where every launched program costs milliseconds.
    "convnext_atto": ({"depths": (1, 1, 1, 1)}, (2, 3, 32, 32), {"layer_norm", "depthwise_conv2d"}),
    # efficientnet_b0: its stem and first three stages (timm's BatchNormAct2d, depthwise-separable
    # and inverted-residual blocks with squeeze-excitation); the whole network costs ~4 min here.
    "efficientnet_b0": ({}, (2, 3, 16, 16), {"batch_norm", "depthwise_conv2d"}),
    "resnet18": ({"layers": (1, 1, 1, 1)}, (2, 3, 32, 32), {"batch_norm"}),
    "vit_tiny_patch16_224": ({"img_size": 32, "depth": 2}, (2, 3, 32, 32), {"layer_norm", "attention"}),
}


def _logits_and_grads(model, x):
    out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_as_close_as_torch(got, want, exact, what):
    """dlkern's fp32 result is within 4x torch's own fp32 error of the fp64 result (plus a floor of
    1e-5 of the values' scale): training-mode BatchNorm on the 2 x 1 x 1 planes of the last stages
    amplifies rounding, so a fixed tolerance against torch's fp32 would test luck."""
    exact = exact.float()
    bound = 4 * (want - exact).abs().max() + 1e-5 * exact.abs().max()
    err = (got - exact).abs().max()
    assert err <= bound, f"{what}: dlkern error {err:.3g} > {bound:.3g} (torch fp32 error x 4 + floor)"


@pytest.mark.parametrize("name", list(CASES))
def test_patched_timm_model_matches_unpatched(name):
    kwargs, shape, families = CASES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    if name == "efficientnet_b0":
        model = torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:3])
    model.train()                          # batch statistics for BatchNorm; timm's drop rates are 0 by default
    patched = dlkern.patch(copy.deepcopy(model))
    x = torch.randn(shape)
    exact, exact_grads = _logits_and_grads(copy.deepcopy(model).double(), x.double())
    want, want_grads = _logits_and_grads(model, x)

    with dlkern.patch_sdpa(), dlkern.patch_functional(), dlkern.use_backend(KERNEL_BACKEND), OpsServed() as seen:
        got, got_grads = _logits_and_grads(patched, x)

    for family in families:      # forward and backward of each family ran as dlkern kernels
        assert seen.counts.get(f"{family}_fwd", 0) > 0 and seen.counts.get(f"{family}_bwd", 0) > 0, \
            f"{name}: dlkern ops run: {seen.counts}"
    _assert_as_close_as_torch(got, want, exact, "logits")
    assert got_grads.keys() == want_grads.keys() == exact_grads.keys() and len(want_grads) > 10
    for pname, grad in want_grads.items():
        _assert_as_close_as_torch(got_grads[pname], grad, exact_grads[pname], pname)
