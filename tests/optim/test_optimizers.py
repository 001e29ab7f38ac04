"""dlkern.optim vs torch.optim: trajectories over 100 steps for every option, low precision
against an fp32 run, fp32 master weights, state_dict round trips both ways, torch's errors,
GradScaler, and a constant number of kernel launches per step whatever the number of parameters.

Every kernel test runs for each kernel backend: Triton (its interpreter without a GPU) and CUDA
(the emulation build without a GPU, where a few steps stand for the long trajectories: the
emulator runs each block's threads one at a time)."""
import copy
import importlib
import inspect
import re

import pytest
import torch

import dlkern
from dlkern.backend import availability

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in dlkern.optim.adam.ADAM_STEP.backends if not availability(b, DEVICE)]
needs_kernels = pytest.mark.skipif(not BACKENDS, reason="no kernel backend can run here")
SHAPES = [(1,), (7, 13), (1001,), (3, 5, 2), (64,)]


def _steps(backend, n):
    """n steps, or a few where the CUDA kernels run in the (slow) emulator."""
    return min(n, 10) if backend == "cuda" and DEVICE.type == "cpu" else n

CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True, betas=(0.8, 0.95), eps=1e-6)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    ("AdamW", dict(lr=torch.tensor(1e-2), weight_decay=0.05, amsgrad=True)),
    ("SGD", dict(lr=1e-2)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=5e-2)),
    ("Adagrad", dict(lr=5e-2, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, maximize=True)),
    ("RMSprop", dict(lr=1e-3)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01)),
    ("RMSprop", dict(lr=1e-3, momentum=0.9, maximize=True)),
]


def _params(dtype=torch.float32, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen).to(DEVICE, p.dtype) for p in params]


def _run(opt, params, steps, start=0):
    for step in range(start, start + steps):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        opt.step()


def _pair(name, kwargs, dtype=torch.float32, backend=None):
    ours_p, theirs_p = _params(dtype), _params(dtype)
    ours = getattr(dlkern.optim, name)(ours_p, backend=backend, **copy.deepcopy(kwargs))
    theirs = getattr(torch.optim, name)(theirs_p, foreach=False, **copy.deepcopy(kwargs))
    return ours, ours_p, theirs, theirs_p


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k)}" for n, k in CONFIGS])
def test_trajectory_matches_torch_fp32(backend, name, kwargs):
    ours, ours_p, theirs, theirs_p = _pair(name, kwargs, backend=backend)
    _run(ours, ours_p, _steps(backend, 100))
    _run(theirs, theirs_p, _steps(backend, 100))
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    for pa, pb in zip(ours_p, theirs_p):
        for key, value in theirs.state[pb].items():
            torch.testing.assert_close(ours.state[pa][key].cpu(), value.cpu(), rtol=2e-5, atol=2e-6, msg=key)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,kwargs", [CONFIGS[3], CONFIGS[6]], ids=["AdamW", "SGD-momentum"])
def test_low_precision_within_the_dtypes_own_error(backend, dtype, name, kwargs):
    """fp16/bf16 params: off from an fp32 run by no more than torch's own low-precision run."""
    if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter (3.8) truncates fp32->bf16 stores instead of rounding to "
                    "nearest even; over optimizer steps that bias accumulates (GPUs round correctly)")
    ours, ours_p, theirs, theirs_p = _pair(name, kwargs, dtype, backend)
    exact_p = [p.detach().float().requires_grad_() for p in ours_p]
    exact = getattr(torch.optim, name)(exact_p, **copy.deepcopy(kwargs))
    for step in range(_steps(backend, 20)):
        for group in (ours_p, theirs_p, exact_p):
            for p, g in zip(group, _grads(ours_p, step)):
                p.grad = g.to(p.dtype)
        ours.step(), theirs.step(), exact.step()
    for a, b, e in zip(ours_p, theirs_p, exact_p):
        ref_err = (b.float() - e).abs().max().item()
        err = (a.float() - e).abs().max().item()
        assert err <= 2 * ref_err + 2 * torch.finfo(dtype).eps * e.abs().max().item(), (err, ref_err)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_sized_large_tensor(backend):
    ours, ours_p, theirs, theirs_p = _pair("AdamW", dict(lr=1e-3, weight_decay=0.01), backend=backend)
    big = [torch.randn(1_000_003, device=DEVICE, requires_grad=True)]
    big_ref = [big[0].detach().clone().requires_grad_()]
    ours.add_param_group({"params": big})
    theirs.add_param_group({"params": big_ref})
    _run(ours, ours_p + big, 2)
    _run(theirs, theirs_p + big_ref, 2)
    torch.testing.assert_close(big[0], big_ref[0], rtol=2e-5, atol=2e-6)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", [CONFIGS[2], CONFIGS[7]], ids=["Adam-amsgrad", "SGD-nesterov"])
def test_state_dict_round_trips_with_torch(backend, name, kwargs):
    ours, ours_p, theirs, theirs_p = _pair(name, kwargs, backend=backend)
    _run(ours, ours_p, 5)
    # dlkern -> torch: the torch optimizer continues exactly where dlkern stopped.
    with torch.no_grad():
        for a, b in zip(ours_p, theirs_p):
            b.copy_(a)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # as a checkpoint would: no shared tensors
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    _run(ours, ours_p, 5, start=5)
    _run(theirs, theirs_p, 5, start=5)
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    # torch -> dlkern.
    fresh = getattr(dlkern.optim, name)(ours_p, backend=backend, **copy.deepcopy(kwargs))
    fresh.load_state_dict(copy.deepcopy(theirs.state_dict()))
    with torch.no_grad():
        for a, b in zip(ours_p, theirs_p):
            a.copy_(b)
    _run(fresh, ours_p, 3, start=10)
    _run(theirs, theirs_p, 3, start=10)
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_params_without_grad_are_skipped(backend):
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = dlkern.optim.AdamW(params, lr=0.1, backend=backend)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert not torch.equal(params[0], before[0])
    for p, b in zip(params[1:], before[1:]):
        assert torch.equal(p, b) and len(opt.state[p]) == 0


def test_adagrad_sparse_gradients_run_torchs_update():
    emb, ref = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3, sparse=True)
    ref.load_state_dict(emb.state_dict())
    ours, theirs = dlkern.optim.Adagrad(emb.parameters(), lr=0.1), torch.optim.Adagrad(ref.parameters(), lr=0.1)
    for m, o in ((emb, ours), (ref, theirs)):
        m(torch.tensor([1, 2])).sum().backward()
        o.step()
    torch.testing.assert_close(emb.weight, ref.weight)
    if BACKENDS:
        named = dlkern.optim.Adagrad(emb.parameters(), lr=0.1, backend=BACKENDS[0])
        with pytest.raises(dlkern.BackendError, match="sparse gradients run torch's own implementation"):
            named.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_sparse_gradients_raise(name):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    opt = getattr(dlkern.optim, name)(emb.parameters(), lr=0.1, backend=BACKENDS[0] if BACKENDS else "reference")
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name,kwargs,pattern", [
    ("Adam", dict(lr=-1.0), "Invalid learning rate"),
    ("AdamW", dict(betas=(1.5, 0.9)), "Invalid beta parameter"),
    ("Adam", dict(eps=-1.0), "Invalid epsilon"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
])
def test_invalid_hyperparameters_raise_torchs_errors(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(dlkern.optim, name)(_params(), **kwargs)


def test_bad_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        dlkern.optim.SGD(_params(), lr=0.1, backend="gpu")


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
def test_grad_scaler_skips_inf_steps_and_unscales(backend, fused):
    """torch.amp.GradScaler: a step with an inf gradient changes nothing (and halves the scale), a
    finite step equals torch's step on the unscaled gradients. fused=True makes torch's Adam ask
    GradScaler to leave unscaling to step(); dlkern's step must not (it takes unscaled grads)."""
    model = torch.nn.Linear(4, 3).to(DEVICE)
    ref = copy.deepcopy(model)
    opt = dlkern.optim.AdamW(model.parameters(), lr=0.1, backend=backend, fused=fused)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1, foreach=False)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=1024.0)
    x = torch.randn(2, 4, device=DEVICE)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(x).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scaler.get_scale() == 512.0 and len(opt.state[model.weight]) == 0
    opt.zero_grad()
    scaler.scale(model(x).sum()).backward()
    ref(x).sum().backward()
    scaler.step(opt)
    ref_opt.step()
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad)  # unscaled in place
        torch.testing.assert_close(p, r, rtol=2e-5, atol=2e-6)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_launch_per_dtype_group_whatever_the_parameter_count(backend, monkeypatch):
    """203 parameter tensors in two dtypes: two launches (Triton: counted at the kernel; CUDA: at
    the launcher, which makes exactly one launch per call)."""
    launches = []
    if backend == "triton":
        module = importlib.import_module("dlkern.kernels.optim")
        real = module._adam_kernel

        class Counting:
            def __getitem__(self, grid):
                launches.append(grid)
                return real[grid]
        monkeypatch.setattr(module, "_adam_kernel", Counting())
    else:
        module = dlkern.backend.launchers(backend, DEVICE)
        real = module.multi_tensor_adam
        monkeypatch.setattr(module, "multi_tensor_adam", lambda *a: (launches.append(a), real(*a))[1])
    params = [torch.randn(3 + i % 7, device=DEVICE, requires_grad=True) for i in range(200)]
    params += [torch.randn(5, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    opt = dlkern.optim.AdamW(params, lr=0.1, backend=backend)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert len(launches) == 2, f"expected one launch per dtype group, got {len(launches)}"


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
def test_unaligned_params_take_the_scalar_path(backend):
    """Parameters at an odd element offset in their storage (no 16-byte accesses) update right."""
    bufs = [torch.randn(n + 1, device=DEVICE) for n in (37, 1001)]
    ours_p = [torch.nn.Parameter(b[1:]) for b in bufs]
    theirs_p = [torch.nn.Parameter(b[1:].clone()) for b in bufs]
    ours = dlkern.optim.AdamW(ours_p, lr=1e-2, weight_decay=0.1, backend=backend)
    theirs = torch.optim.AdamW(theirs_p, lr=1e-2, weight_decay=0.1, foreach=False)
    _run(ours, ours_p, 3)
    _run(theirs, theirs_p, 3)
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
def test_launcher_names_a_mismatched_list(backend):
    launch = dlkern.backend.launchers(backend, DEVICE).multi_tensor_sgd
    p = torch.zeros(8, device=DEVICE)
    with pytest.raises((ValueError, RuntimeError), match="grads"):
        launch([p], [torch.zeros(7, device=DEVICE)], None, 0.1, 0.0, 0.0, 0.0, False, False, False)


STEP_SPECS = [dlkern.optim.adam.ADAM_STEP, dlkern.optim.sgd.SGD_STEP, dlkern.optim.adagrad.ADAGRAD_STEP,
              dlkern.optim.rmsprop.RMSPROP_STEP, dlkern.optim.adabound.ADABOUND_STEP]


@pytest.mark.parametrize("module_name", ["_C", "_C_emu"])
def test_cuda_launchers_mirror_the_triton_ones(module_name):
    """Both builds expose every optimizer launcher with the Triton launcher's parameter names."""
    mod = getattr(dlkern._ext, module_name)
    if mod is None or dlkern._ext.kernels is None:
        pytest.skip(f"dlkern.{module_name} or the Triton kernels are not available")
    for name in (n for spec in STEP_SPECS for n in spec.launchers):
        first_line = getattr(mod, name).__doc__.splitlines()[0]  # pybind: name(a: type, b: type) -> None
        triton_params = list(inspect.signature(getattr(dlkern._ext.kernels, name)).parameters)
        assert re.findall(r"(\w+): ", first_line) == triton_params, name


# --------------------------------------------------------------------------- fp32 master weights
def _low_precision_runs(backend, dtype, steps):
    """AdamW on dtype params with and without master weights, and torch's AdamW in fp32, all on
    the same (dtype-rounded) gradients."""
    with_master = _params(dtype)
    plain = [p.detach().clone().requires_grad_() for p in with_master]
    exact_p = [p.detach().float().requires_grad_() for p in with_master]
    kwargs = dict(lr=1e-3, weight_decay=0.01)
    master_opt = dlkern.optim.AdamW(with_master, backend=backend, master_weights=True, **kwargs)
    opts = [master_opt, dlkern.optim.AdamW(plain, backend=backend, **kwargs),
            torch.optim.AdamW(exact_p, foreach=False, **kwargs)]
    for step in range(steps):
        grads = _grads(with_master, step)
        for params in (with_master, plain, exact_p):
            for p, g in zip(params, grads):
                p.grad = g.to(p.dtype)
        for opt in opts:
            opt.step()
    return master_opt, with_master, plain, exact_p


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_master_weights_follow_the_fp32_trajectory(backend, dtype):
    """The fp32 master follows torch's fp32 run to fp32 accuracy and the parameter is its rounding
    (written in the same pass); without master weights, updates below half an ulp are lost."""
    steps = _steps(backend, 12)
    opt, with_master, plain, exact_p = _low_precision_runs(backend, dtype, steps)
    master_err = plain_err = 0.0
    for a, b, e in zip(with_master, plain, exact_p):
        state = opt.state[a]
        assert {state[k].dtype for k in ("master_param", "exp_avg", "exp_avg_sq")} == {torch.float32}
        torch.testing.assert_close(state["master_param"], e.detach(), rtol=1e-5, atol=1e-6)
        if backend == "triton" and DEVICE.type == "cpu" and dtype == torch.bfloat16:
            # The interpreter truncates fp32->bf16 stores (see above): within one ulp.
            torch.testing.assert_close(a.detach().float(), state["master_param"], rtol=2 ** -7, atol=0)
        else:
            assert torch.equal(a.detach(), state["master_param"].to(dtype))
        rounded = e.detach().to(dtype).float()  # the best a dtype parameter can be
        master_err += (a.float() - rounded).abs().sum().item()
        plain_err += (b.float() - rounded).abs().sum().item()
    assert master_err * 5 < plain_err, (master_err, plain_err)


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_master_weights_state_dict_round_trip(backend):
    opt, params, _, _ = _low_precision_runs(backend, torch.bfloat16, 3)
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["master_weights"] is True
    assert saved["state"][0]["master_param"].dtype == torch.float32
    copies = [p.detach().clone().requires_grad_() for p in params]
    resumed = dlkern.optim.AdamW(copies, backend=backend, master_weights=True)
    resumed.load_state_dict(copy.deepcopy(saved))  # torch casts states to bf16; the master comes back exact
    for p, c in zip(params, copies):
        for key, value in opt.state[p].items():
            assert torch.equal(resumed.state[c][key], value), key
    _run(opt, params, 2, start=3)
    _run(resumed, copies, 2, start=3)
    assert all(torch.equal(p, c) for p, c in zip(params, copies))
    # torch's AdamW takes the checkpoint (states cast to bf16, the master carried along unused).
    theirs = torch.optim.AdamW(copies)
    theirs.load_state_dict(copy.deepcopy(saved))
    _run(theirs, copies, 1, start=5)


@pytest.mark.parametrize("name,kwargs", [CONFIGS[2], CONFIGS[4], CONFIGS[7]], ids=["Adam-amsgrad", "AdamW-tensor-lr", "SGD"])
def test_reference_backend_is_torchs_step(name, kwargs):
    """The CPU default (reference) runs torch's step, via its fused CPU kernel for Adam/AdamW when the
    user chose no implementation; the group's own settings are left as the user gave them."""
    ours, ours_p, theirs, theirs_p = _pair(name, kwargs, backend="reference")
    _run(ours, ours_p, 30)
    _run(theirs, theirs_p, 30)
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    assert ours.param_groups[0].get("fused") is None


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
def test_step_hooks_run_once_per_step(backend):
    torch.optim.AdamW(_params(), lr=0.1)  # torch wraps its class's step with the hook runner now
    params = _params()
    opt = dlkern.optim.AdamW(params, lr=0.1, backend=backend)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    _run(opt, params, 2)
    assert calls == ["pre", "post", "pre", "post"]


# --------------------------------------------------------------------------- AdaBound (not in torch)
def test_adabound_reference_first_step_is_the_papers_rule():
    """One step by hand, in float64: m = (1-b1) g, v = (1-b2) g^2, the Adam step size
    lr sqrt(1-b2) / (1-b1) per element divided by sqrt(v) + eps, clipped into
    [final_lr (1 - 1/(gamma+1)), final_lr (1 + 1/gamma)], times m."""
    lr, (b1, b2), final_lr, gamma, eps = 1e-2, (0.9, 0.999), 0.1, 1e-3, 1e-8
    p = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1e-3, -2.0, 50.0, 0.3], dtype=torch.float64)
    expected = p.detach().clone()
    m, v = (1 - b1) * g, (1 - b2) * g * g
    rate = lr * (1 - b2) ** 0.5 / (1 - b1) / (v.sqrt() + eps)
    expected -= rate.clamp(final_lr * (1 - 1 / (gamma + 1)), final_lr * (1 + 1 / gamma)) * m
    opt = dlkern.optim.AdaBound([p], lr=lr, betas=(b1, b2), final_lr=final_lr, gamma=gamma, eps=eps,
                                backend="reference")
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), expected)


@needs_kernels
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.01, amsbound=True, gamma=0.05)],
                         ids=["plain", "amsbound-wd"])
def test_adabound_kernel_matches_reference(backend, kwargs):
    ours_p, ref_p = _params(), _params()
    ours = dlkern.optim.AdaBound(ours_p, backend=backend, **kwargs)
    ref = dlkern.optim.AdaBound(ref_p, backend="reference", **kwargs)
    sched = torch.optim.lr_scheduler.StepLR(ours, step_size=30, gamma=0.5)
    sched_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=30, gamma=0.5)
    for step in range(_steps(backend, 100)):
        for params in (ours_p, ref_p):
            for p, g in zip(params, _grads(params, step)):
                p.grad = g
        ours.step(), ref.step(), sched.step(), sched_ref.step()
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    # Checkpoints carry base_lr, so a resumed run keeps the same bounds.
    resumed = dlkern.optim.AdaBound(ours_p, backend=backend, **kwargs)
    resumed.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert resumed.param_groups[0]["base_lr"] == kwargs["lr"]
    assert resumed.param_groups[0]["lr"] == ours.param_groups[0]["lr"]


@pytest.mark.parametrize("kwargs,pattern", [(dict(final_lr=-1.0), "Invalid final learning rate"),
                                            (dict(gamma=1.5), "Invalid gamma"), (dict(lr=-1.0), "Invalid learning rate")])
def test_adabound_invalid_hyperparameters(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        dlkern.optim.AdaBound(_params(), **kwargs)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton kernels cannot run here")
@pytest.mark.parametrize("offset", [0, 1])
def test_triton_vector_path_only_when_every_tensor_is_aligned(offset, monkeypatch):
    """The host gate of the 128-bit path: ALIGNED is set only when every pointer of the launch is
    16-byte aligned (one parameter at an odd element offset sends the whole launch down the
    element-wise path); either way the step equals torch's."""
    module = importlib.import_module("dlkern.kernels.optim")
    real, seen = module._adam_kernel, []

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["ALIGNED"])
                return real[grid](*args, **kwargs)
            return launch
    monkeypatch.setattr(module, "_adam_kernel", Spy())
    bufs = [torch.randn(n + offset, device=DEVICE) for n in (768, 5000)] + [torch.randn(64, device=DEVICE)]
    ours_p = [torch.nn.Parameter(b[offset:] if i < 2 else b) for i, b in enumerate(bufs)]
    theirs_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    _run(dlkern.optim.AdamW(ours_p, lr=1e-2, backend="triton"), ours_p, 2)
    _run(torch.optim.AdamW(theirs_p, lr=1e-2, foreach=False), theirs_p, 2)
    assert seen == [offset == 0] * 2
    for a, b in zip(ours_p, theirs_p):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton kernels cannot run here")
def test_triton_tables_are_one_buffer_sized_to_the_tensors():
    """Chunks end where their tensor ends (a 768-element bias is one 768-element chunk), and all
    of a step's tables (pointers, chunks, per-tensor scalars) are views of one buffer: one copy."""
    module = importlib.import_module("dlkern.kernels.optim")
    assert module.chunk_table([768, 9000, 1], 4096) == ([0, 1, 1, 1, 2], [0, 0, 4096, 8192, 0],
                                                         [768, 4096, 8192, 9000, 1])
    ps = [torch.randn(n, device=DEVICE) for n in (768, 70000, 3)]
    tab = module._Tables([ps, [p.clone() for p in ps]], [[0.5, 0.25, 2.0], [1.0, 3.0, 4.0]], DEVICE)
    storages = {t.untyped_storage().data_ptr() for t in tab.lists + tab.chunks + tab.scalars}
    assert len(storages) == 1
    assert tab.lists[0].tolist() == [p.data_ptr() for p in ps]
    assert tab.chunks[2].tolist()[0] == 768 and tab.grid == (len(tab.chunks[0]),)
    assert tab.scalars[1].tolist() == [1.0, 3.0, 4.0]
