"""Compile Triton kernels for a real GPU target without a GPU and report ptxas resources.

Run as a script (``python tests/triton_compile_check.py sm90:NAME sm80:NAME ...`` or ``all``): it
must run in a process where TRITON_INTERPRET is unset, since under the interpreter triton's
language functions are rebound to their interpreted versions. Prints one JSON object per kernel.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

MODULES = ["dlkern.kernels.row_norm", "dlkern.kernels.channel_norm", "dlkern.kernels.weight_norm",
           "dlkern.kernels.optim", "dlkern.kernels.attention", "dlkern.kernels.affine_coupling",
           "dlkern.kernels.act_norm", "dlkern.kernels.inv_conv1x1", "dlkern.kernels.causal_conv1d",
           "dlkern.kernels.depthwise_conv2d", "dlkern.kernels.dilated_conv1d", "dlkern.kernels.wavenet",
           "dlkern.kernels.selective_scan"]


# Kernels allowed to spill, with the reason (the test still reports their spills).
SPILLS_ALLOWED = {
    "attention.": ("_fp32_", "fp32 attention runs its dots in IEEE mode on CUDA cores (operands twice "
                             "the size, no tensor cores): a correctness path, not a fast one"),
}


def spill_allowed(name):
    """The reason ``name`` may spill, or None."""
    for prefix, (marker, reason) in SPILLS_ALLOWED.items():
        if name.startswith(prefix) and marker in name:
            return reason
    return None


def specs():
    import importlib
    for modname in MODULES:
        mod = importlib.import_module(modname)
        for name, kernel, signature, constexprs, num_warps in mod.compile_specs():
            yield f"{modname.rsplit('.', 1)[-1]}.{name}", kernel, signature, constexprs, num_warps


def cases():
    """(arch, spec name): every configuration on sm_90; the heaviest ones on sm_80 as well."""
    names = [s[0] for s in specs()]
    heaviest = ("n8192", "looped", "channel_norm.", "weight_norm.", "optim.", "attention.fwd_bf16_d128",
                "attention.dkdv_bf16_d128", "attention.dq_bf16_d128", "affine_coupling.", "act_norm.",
                "inv_conv1x1.", "causal_conv1d.bwd_bfloat16_w8", "depthwise_conv2d.dweight_bfloat16",
                "dilated_conv1d.", "wavenet.", "selective_scan.")
    return [(90, n) for n in names] + [(80, n) for n in names if any(h in n for h in heaviest)]


def _ptxas(arch):
    from triton.backends.nvidia import compiler as nv
    try:
        return nv.get_ptxas(arch).path
    except TypeError:  # older triton: no arch argument
        return nv.get_ptxas().path


def compile_one(arch, name, kernel, signature, constexprs, num_warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(ASTSource(kernel, signature, constexprs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    out = subprocess.run([_ptxas(arch), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    if out.returncode != 0:
        return {"arch": arch, "name": name, "error": out.stderr}
    return {"arch": arch, "name": name, "num_warps": num_warps, "cubin_bytes": len(compiled.asm["cubin"]),
            "registers": int(re.search(r"Used (\d+) registers", out.stderr).group(1)),
            "spill_bytes": sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", out.stderr)),
            "shared_bytes": compiled.metadata.shared}


def main(argv):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
    table = {s[0]: s for s in specs()}
    wanted = cases() if argv == ["all"] else [(int(a[2:4]), n) for a, n in (x.split(":", 1) for x in argv)]
    for arch, name in wanted:
        _, kernel, signature, constexprs, num_warps = table[name]
        try:
            res = compile_one(arch, name, kernel, signature, constexprs, num_warps)
        except Exception as exc:  # report, don't stop: the test names each failure
            res = {"arch": arch, "name": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
