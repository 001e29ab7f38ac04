"""What the multi-tensor engine may address: dense layouts (channels_last conv weights, permuted
dims) on the kernel path over their memory; DTensor parameters stepped on their local shards (two
gloo ranks, uneven shards); any other tensor subclass refused (BackendError when named, the torch
step under auto). The segfault this guards against: a DTensor passed the old contiguity check and
the kernel ran on the wrapper's (absent) data."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import dlkern
from dlkern.backend import availability

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in dlkern.optim.adam.ADAM_STEP.backends if not availability(b, DEVICE)]
needs_kernels = pytest.mark.skipif(not BACKENDS, reason="no kernel backend can run here")
WORKER = Path(__file__).with_name("dtensor_worker.py")


def _pair(make, opt_cls, torch_cls, backend, steps=3, **kw):
    """The same parameters stepped by dlkern (on ``backend``) and by torch; both parameter lists."""
    ours, theirs = make(), make()
    o = opt_cls(ours, backend=backend, **kw)
    t = torch_cls(theirs, **kw)
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, generator=gen).to(DEVICE, a.dtype)
            a.grad, b.grad = g.clone(), g.clone()
        o.step()
        t.step()
    return ours, theirs


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "permuted", "transposed_grad"])
def test_dense_layouts_take_the_kernel_path(backend, layout, monkeypatch):
    calls = []
    launchers = dlkern.backend.launchers(backend, DEVICE)
    real = launchers.multi_tensor_adam
    monkeypatch.setattr(launchers, "multi_tensor_adam", lambda *a, **k: (calls.append(a), real(*a, **k))[1])

    def make():
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(6, 5, 3, 3, generator=gen).to(DEVICE)
        if layout == "channels_last":
            w = w.to(memory_format=torch.channels_last)
        elif layout == "permuted":
            w = w.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)   # dense, no standard format
        return [torch.nn.Parameter(w), torch.nn.Parameter(torch.randn(7, 3, generator=gen).to(DEVICE))]

    kw = dict(lr=1e-2, weight_decay=0.1)
    if layout == "transposed_grad":   # a contiguous parameter whose gradient is a transposed view
        ours, theirs = make(), make()
        o, t = dlkern.optim.AdamW(ours, backend=backend, **kw), torch.optim.AdamW(theirs, **kw)
        for step in range(3):
            g = torch.randn(3, 7, generator=torch.Generator().manual_seed(step)).to(DEVICE).t()
            ours[1].grad, theirs[1].grad = g, g.clone()
            ours[0].grad = theirs[0].grad = None
            o.step()
            t.step()
    else:
        ours, theirs = _pair(make, dlkern.optim.AdamW, torch.optim.AdamW, backend, **kw)
        assert ours[0].stride() == theirs[0].stride()   # the layout was kept
    assert calls, "the kernel did not run"
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class Tagged(torch.Tensor):
    """A tensor subclass the engine knows nothing about."""


@needs_kernels
def test_other_tensor_subclasses_are_refused():
    p = torch.nn.Parameter(torch.randn(4, 3, device=DEVICE).as_subclass(Tagged))
    p.grad = torch.randn(4, 3, device=DEVICE)
    backend = BACKENDS[0]
    with pytest.raises(dlkern.BackendError, match="Tagged.*tensor subclass"):
        dlkern.optim.AdamW([p], lr=0.1, backend=backend).step()
    q = torch.nn.Parameter(torch.randn(4, 3, device=DEVICE).as_subclass(Tagged))
    q.grad = p.grad.clone()
    ref = torch.nn.Parameter(q.detach().clone().as_subclass(torch.Tensor))
    ref.grad = p.grad.clone()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dlkern.optim.AdamW([q], lr=0.1).step()    # auto: torch's step on CPU or a fallback on GPU
    torch.optim.AdamW([ref], lr=0.1).step()
    torch.testing.assert_close(q.as_subclass(torch.Tensor), ref.detach())


@needs_kernels
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_dtensor_parameters_step_on_their_local_shards(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLKERN_TEST_BACKENDS": ",".join(BACKENDS),
           "DLKERN_TEST_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):   # each rank checked every backend x case
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert len(lines) == len(BACKENDS) * 4 and all(line.startswith("checked ") for line in lines)
