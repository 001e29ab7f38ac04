"""Compile a recorded Triton launch for sm_90a / sm_80 exactly as the JIT would at launch.

The specialization is Triton's own: ``create_function_from_signature`` builds the JIT's binder
(``native_specialize_impl``: ints equal to 1 folded to constexprs, ints divisible by 16 and
16-byte-aligned pointers marked ``tt.divisibility=16``), and ``JITFunction._pack_args`` turns its
output into the (signature, constexprs, attrs, options) that ``JITFunction.run`` hands to
``triton.compile``. The cubin and the facts ptxas/Triton report are kept under the cache folder,
keyed by the kernel's source hash (Triton's ``cache_key``, which covers the functions it calls)
and the specialization.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ARCH_CC = {"sm_90a": 90, "sm_80": 80}


def cache_dir() -> Path:
    root = os.environ.get("DLKERN_PERF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dlkern", "perf")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _target(arch):
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", ARCH_CC[arch], 32)


def specialize(launch, arch):
    """(signature, constexprs, attrs, options) of ``launch`` on ``arch``, from Triton's JIT code."""
    from triton import knobs
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    backend = make_backend(_target(arch))
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def spec_key(launch, arch) -> tuple[str, dict]:
    """(hash, description) of what gets compiled: equal keys compile to the same cubin."""
    signature, constexprs, attrs, options = specialize(launch, arch)
    desc = {"kernel": launch.kernel, "module": launch.module, "arch": arch,
            "source": launch.fn.cache_key, "signature": signature,
            "constexprs": {str(k): repr(v) for k, v in constexprs.items()},
            "attrs": {str(k): repr(v) for k, v in attrs.items()},
            "options": {k: repr(v) for k, v in sorted(options.__dict__.items())}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24], desc


def compile_launch(launch, arch) -> dict:
    """Compile (or load from the cache) and return the kept facts: ``cubin`` (path), ``ptx``
    (path), ``num_warps``, ``num_stages``, ``shared_bytes`` (Triton's metadata), ``key``."""
    import triton
    from triton.compiler import ASTSource

    key, desc = spec_key(launch, arch)
    folder = cache_dir() / "triton" / key
    meta_path = folder / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    signature, constexprs, attrs, options = specialize(launch, arch)
    compiled = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=_target(arch),
                              options=options.__dict__)
    folder.mkdir(parents=True, exist_ok=True)
    name = compiled.metadata.name
    (folder / f"{name}.cubin").write_bytes(compiled.asm["cubin"])
    (folder / f"{name}.ptx").write_text(compiled.asm["ptx"])
    meta = {"key": key, "name": name, "cubin": str(folder / f"{name}.cubin"), "ptx": str(folder / f"{name}.ptx"),
            "num_warps": compiled.metadata.num_warps, "num_stages": compiled.metadata.num_stages,
            "shared_bytes": compiled.metadata.shared, "spec": desc}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)
    return meta
