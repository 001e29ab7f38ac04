"""Compile every launch configuration of the Triton attention tile tables
(kernels/attention_configs.py) for its GPU, as the launchers start it, without a GPU.

For each table column (arch x head dim x causal; bf16) the real launchers run on fake CUDA tensors
of a representative shape (dlkern.perf.launches.recording: the modelled GPU answers
``get_device_properties``, so the pruner picks that arch's list), forward and backward in both
backward modes (atomic dQ and deterministic); every config the pruner keeps is compiled with the
JIT's own specialization (dlkern.perf.tcompile, cached under ~/.cache/dlkern/perf). Prints one JSON
object per compiled variant: registers, stack (spill) bytes, shared bytes.

Run as ``python tests/attention_tiles_check.py SHARD NSHARDS`` without TRITON_INTERPRET.
"""
import json
import os
import sys

ARCHS = {"sm_90a": "sm_90", "sm_80": "sm_80"}
SHAPE = (1, 2, 1024)   # batch, heads, length: every length a multiple of every tile (the common case)


def columns():
    from dlkern.kernels.attention_configs import HEAD_DIMS
    return [(arch, d, causal) for arch in ARCHS for d in HEAD_DIMS for causal in (False, True)]


def launches(arch, head_dim, causal):
    """The Triton launches (one per kept config) of a forward and both backwards."""
    import torch

    from dlkern.kernels import attention as ka
    from dlkern.perf.launches import recording

    b, h, n = SHAPE
    with recording(arch) as rec:
        dev = torch.device("cuda")
        q, k, v, do = (torch.empty(b, h, n, head_dim, dtype=torch.bfloat16, device=dev) for _ in range(4))
        scale = torch.empty(h, dtype=torch.float32, device=dev)
        o, lse = ka.attention_fwd(q, k, v, None, scale, 0.0, 0, causal, False)
        for deterministic in (False, True):
            ka.attention_bwd(do, q, k, v, o, lse, None, scale, 0.0, 0, causal, False, False, deterministic)
        return [la for la in rec.launches if "delta" not in la.kernel]


def main(argv):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
    from dlkern.perf.pipeline import kernel_facts
    from dlkern.perf.tcompile import compile_launch, spec_key

    shard, nshards = (int(argv[0]), int(argv[1])) if argv else (0, 1)
    jobs, seen = [], set()
    for arch, d, causal in columns():
        for la in launches(arch, d, causal):
            key = spec_key(la, arch)[0]
            if key not in seen:
                seen.add(key)
                jobs.append((arch, d, causal, la))
    for i, (arch, d, causal, la) in enumerate(jobs):
        if i % nshards != shard:
            continue
        c = la.config
        row = {"arch": arch, "table_arch": ARCHS[arch], "head_dim": d, "causal": causal, "kernel": la.kernel,
               "atomic": bool(la.kwargs.get("DQ_ATOMIC", False)),
               "tile": [c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]]}
        try:
            meta = compile_launch(la, arch)
            facts = kernel_facts(meta["cubin"])
            row.update(registers=facts["registers"], spill_bytes=facts["spill_bytes"],
                       shared_bytes=max(meta["shared_bytes"], facts["static_shared"]))
        except Exception as exc:  # reported, not raised: the test names each failure
            row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
