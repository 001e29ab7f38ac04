"""Triton's CPU interpreter: dlkern turns it on exactly when Triton does, and the triton backend
refuses the inputs the interpreter computes wrongly (bf16 ``tl.dot``) instead of serving them."""
import inspect
import os
import subprocess
import sys

import pytest
import torch

import dlkern
from dlkern import _ext
from dlkern.backend import reasons_against

needs_triton = pytest.mark.skipif(_ext.kernels is None, reason=f"triton unavailable: {_ext.kernels_error}")


def _triton_ops():
    return [op for op in dlkern.all_ops() if "triton" in op.backends and op.launchers]


def _defined_in(obj) -> str:
    """The module that defines ``obj``, through Triton's Autotuner/Heuristics/JITFunction wrappers."""
    while hasattr(obj, "fn"):
        obj = obj.fn
    return str(getattr(obj, "__module__", ""))


@needs_triton
@pytest.mark.parametrize("op", _triton_ops(), ids=lambda op: op.name)
def test_uses_tl_dot_flag_matches_the_kernels(op):
    """The registry's flag (which drives the refusal) is what the launchers' kernel modules do."""
    modules = {inspect.getmodule(getattr(_ext.kernels, name)) for name in op.launchers}
    # a launcher module may import its kernels from sibling modules (attention_fwd / attention_bwd)
    modules |= {sys.modules[_defined_in(v)] for m in list(modules) for v in vars(m).values()
                if _defined_in(v).startswith(m.__package__ + ".")}
    uses = any("tl.dot(" in inspect.getsource(m) for m in modules)
    assert uses == op.uses_tl_dot, f"{op.name}: kernels use tl.dot: {uses}; OpSpec.uses_tl_dot={op.uses_tl_dot}"


@needs_triton
@pytest.mark.parametrize("op", [op for op in _triton_ops() if op.uses_tl_dot], ids=lambda op: op.name)
def test_interpreter_refuses_bf16_tl_dot_and_serves_the_rest(op):
    if not dlkern.backend.triton_interpreter_enabled():
        pytest.skip("Triton's interpreter is off")
    bf16 = next(iter(op.samples(torch.device("cpu"), torch.bfloat16)))
    assert any("tl.dot with bfloat16" in r for r in reasons_against(op, "triton", bf16.args, bf16.kwargs))
    with pytest.raises(dlkern.BackendError, match=rf"dlkern\.{op.name}: backend 'triton'.*tl\.dot with bfloat16"):
        op.fn(*bf16.args, backend="triton", **bf16.kwargs)
    out = op.fn(*bf16.args, **bf16.kwargs)  # auto: the reference path on CPU, never the interpreter
    ref = op.reference(*bf16.args, **bf16.kwargs)
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(o.float(), r.float(), atol=0.05, rtol=0.05)  # bf16 rounding, not 1e8
    for dtype in (torch.float16, torch.float32):
        s = next(iter(op.samples(torch.device("cpu"), dtype)))
        assert reasons_against(op, "triton", s.args, s.kwargs) == [], dtype


def _interpret_in_child(value):
    code = ("import triton, dlkern, dlkern.kernels.interpret as i; "
            "print(i.INTERPRET, bool(triton.knobs.runtime.interpret))")
    env = dict(os.environ, TRITON_INTERPRET=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-2:]


@needs_triton
@pytest.mark.parametrize("value,expected", [("1", "True"), ("true", "True"), ("ON", "True"), ("yes", "True"),
                                            ("0", "False"), ("false", "False"), ("garbage", "False")])
def test_triton_interpret_is_read_as_triton_reads_it(value, expected):
    ours, tritons = _interpret_in_child(value)
    assert ours == tritons == expected, f"TRITON_INTERPRET={value!r}: dlkern {ours}, triton {tritons}"
