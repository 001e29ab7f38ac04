"""Comparing a backend with the op's reference, flash-attn style: the backend run in a low
precision may be off from the exact (fp64) answer by at most a small multiple of how far the
reference itself is off when run in that same precision."""
import torch

# Floor of the tolerance, in units of the dtype's epsilon times the answer's magnitude: covers
# answers the low-precision reference happens to get exactly right (e.g. fp32 sums of few terms).
EPS_FLOOR = {torch.float32: 8, torch.float16: 2, torch.bfloat16: 2}


def to_double(obj):
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.detach().double().requires_grad_(obj.requires_grad)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_double(o) for o in obj)
    return obj


def clone_inputs(args, grad_inputs):
    """Fresh leaves; the ones in ``grad_inputs`` require grad. Non-contiguous layouts survive."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            c = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
            c.copy_(a)
            c.requires_grad_(i in grad_inputs)
            out.append(c)
        else:
            out.append(a)
    return tuple(out)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def run_with_grads(fn, args, grad_inputs, cotangents=None, **kwargs):
    """Outputs and the gradients of ``sum(out * cotangent)`` w.r.t. ``args[i] for i in grad_inputs``."""
    outs = as_tuple(fn(*args, **kwargs))
    if cotangents is None:
        gen = torch.Generator().manual_seed(1234)
        cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]
    diff = [(o, c.to(o.device, o.dtype)) for o, c in zip(outs, cotangents) if o.requires_grad]
    grads = ()
    if grad_inputs and diff:
        grads = torch.autograd.grad([o for o, _ in diff], [args[i] for i in grad_inputs],
                                    [c for _, c in diff], allow_unused=True)
    return outs, grads, cotangents


def assert_close_to_reference(name, got, exact, lowprec_ref, dtype, floor_factor=1.0):
    """``got`` (backend, low precision) vs ``exact`` (reference in fp64) with a tolerance set by
    ``lowprec_ref`` (the reference run in ``dtype``)."""
    assert got is not None, f"{name}: backend returned no value"
    assert got.shape == exact.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    got, exact, lowprec_ref = got.double().cpu(), exact.double().cpu(), lowprec_ref.double().cpu()
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten output?)"
    ref_err = (lowprec_ref - exact).abs().max().item() if exact.numel() else 0.0
    scale = exact.abs().max().item() if exact.numel() else 0.0
    tol = 2 * ref_err + floor_factor * EPS_FLOOR[dtype] * torch.finfo(dtype).eps * max(scale, 1.0)
    err = (got - exact).abs().max().item() if exact.numel() else 0.0
    assert err <= tol, f"{name}: max error {err:.3e} > tolerance {tol:.3e} (reference's own error {ref_err:.3e})"


def assert_compiled_matches_eager(model, x, backend):
    """``torch.compile(fullgraph=True)`` of ``model`` on ``backend`` gives eager's output and input
    gradient (aot_eager: dynamo + AOT autograd, no inductor code generation needed)."""
    import dlkern
    with dlkern.use_backend(backend):
        eager = model(x)
        (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        (g_comp,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(g_comp, g_eager)
