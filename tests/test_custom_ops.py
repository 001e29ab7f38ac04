"""Every dlkern custom op passes ``torch.library.opcheck`` (schema, fake/meta, autograd
registration, AOT dispatch), on the argument sets it actually receives when the registered ops
run their samples forward and backward. A torch.compile(fullgraph=True) model built on the ops
traces without graph breaks and matches eager."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dlkern
from dlkern.backend import availability
from numerics import assert_compiled_matches_eager, clone_inputs, run_with_grads

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _RecordDlkernCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "dlkern":
            self.calls.setdefault(func._overloadpacket._qualified_op_name + str(len(self.calls)), (func, args, kwargs))
        return func(*args, **kwargs)


def _recorded_calls(backend):
    calls = {}
    for op in (op for op in dlkern.all_ops() if backend in op.backends):
        for sample in list(op.samples(DEVICE, torch.float32))[:3]:
            args = clone_inputs(sample.args, sample.grad_inputs)
            with _RecordDlkernCalls() as rec:
                run_with_grads(op.fn, args, sample.grad_inputs, backend=backend, **sample.kwargs)
            for func, a, k in rec.calls.values():
                calls.setdefault(func._schema.name, []).append((func, a, k))
    return calls


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_opcheck_every_custom_op(backend):
    if availability(backend, DEVICE):
        pytest.skip("; ".join(availability(backend, DEVICE)))
    calls = _recorded_calls(backend)
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("dlkern::")}
    assert calls and set(calls) <= registered
    if all(backend in op.backends for op in dlkern.all_ops()):  # else some ops are not reachable
        assert set(calls) == registered, \
            f"custom ops never exercised by the registry samples: {sorted(registered - set(calls))}"
    for name, recorded in calls.items():
        for func, args, kwargs in recorded[:2]:
            if name.endswith("_bwd"):  # backward kernels have no double backward (documented)
                args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            torch.library.opcheck(func, args, kwargs)


class _Block(torch.nn.Module):
    """A pre-norm residual block: the layout of GPT/LLaMA blocks, built on dlkern ops."""

    def __init__(self, d=64):
        super().__init__()
        self.ln = dlkern.nn.LayerNorm(d)
        self.rms = dlkern.nn.RMSNorm(d)
        self.fc = torch.nn.Linear(d, d)

    def forward(self, x):
        h, resid = dlkern.nn.functional.add_layer_norm(self.fc(x), x, (x.shape[-1],), self.ln.weight, self.ln.bias)
        return self.rms(h) + resid


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
def test_compile_fullgraph_matches_eager(backend):
    if backend != "reference" and availability(backend, DEVICE):
        pytest.skip("; ".join(availability(backend, DEVICE)))
    torch.manual_seed(0)
    model = _Block().to(DEVICE)
    assert_compiled_matches_eager(model, torch.randn(2, 7, 64, device=DEVICE, requires_grad=True), backend)


class _ConvBlock(torch.nn.Module):
    """conv -> BatchNorm (training: running stats updated in place) -> GroupNorm+SiLU."""

    def __init__(self, c=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.bn = dlkern.nn.BatchNorm2d(c)
        self.gn = dlkern.nn.GroupNorm(4, c)

    def forward(self, x):
        h = self.bn(self.conv(x))
        return dlkern.nn.functional.group_norm_act(h, 4, self.gn.weight, self.gn.bias, 1e-5, "silu")


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
def test_compile_fullgraph_conv_block_with_running_stats(backend):
    if backend != "reference" and availability(backend, DEVICE):
        pytest.skip("; ".join(availability(backend, DEVICE)))
    missing = [n for n in ("batch_norm", "group_norm_silu") if backend not in dlkern.get_op(n).backends + ("reference",)]
    if missing:
        pytest.skip(f"{', '.join(missing)} have no {backend} implementation")
    torch.manual_seed(0)
    eager_model = _ConvBlock().to(DEVICE)
    compiled_model = copy.deepcopy(eager_model)
    x = torch.randn(2, 8, 5, 5, device=DEVICE)
    with dlkern.use_backend(backend):
        torch._dynamo.reset()
        compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
        for _ in range(2):
            eager = eager_model(x)
            out = compiled(x)
            g_eager = torch.autograd.grad(eager.square().sum(), eager_model.conv.weight)[0]
            g_comp = torch.autograd.grad(out.square().sum(), compiled_model.conv.weight)[0]
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_model.bn.running_var, eager_model.bn.running_var)
    assert int(compiled_model.bn.num_batches_tracked) == 2
