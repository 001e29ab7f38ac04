"""Performance budgets per kernel family, as data, checked on the quick ``dlkern perf`` records.

A budget selects records (``where``: field -> value or tuple of values; only picked, launched
records) and states what each must satisfy (``check(record) -> bool``; ``show`` says what was
measured from the SASS). ``KNOWN`` lists today's failures with the issue whose rewrite fixes them:
the tests mark those ``xfail(strict=True)``, so a fix turns them green and the entry must go.
"""
import dataclasses
from typing import Callable

STREAMING = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "adamw_step", "act_norm",
             "affine_coupling", "weight_norm", "group_norm", "group_norm_silu", "batch_norm", "instance_norm",
             "causal_conv1d")
ROW_NORMS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")


@dataclasses.dataclass
class Budget:
    id: str
    text: str
    where: dict
    check: Callable
    show: Callable


def _scores(r):
    """Query x key pairs that are computed (half of them under a causal mask)."""
    return r["elements"] * (0.5 if "causal" in r["case"] else 1.0)


def _ldg(r, width):
    return r["total_counts"].get(f"LDG.{width}", 0)


def vector_share(r) -> float:
    """Share of a thread's global-load bytes (hot loop if any, else the whole kernel) that 128-bit
    loads carry."""
    counts = r["loop_counts"] if r["loop_counts"] else r["total_counts"]
    by_width = {w: counts.get(f"LDG.{w}", 0) * w // 8 for w in (8, 16, 32, 64, 128)}
    total = sum(by_width.values())
    return by_width[128] / total if total else 1.0


def _streams(r) -> bool:
    """A kernel whose grid fills the GPU (not a one-block finalize step)."""
    g = r["grid"]
    return g[0] * g[1] * g[2] >= 100


BUDGETS = [
    Budget("attention-fwd-hgmma", "sm_90 Triton attention forward runs its dots on wgmma (HGMMA)",
           dict(op="scaled_dot_product_attention", backend="triton", arch="sm_90a", kernel="_attn_fwd_kernel"),
           lambda r: r["total_counts"].get("HGMMA", 0) > 0, lambda r: f"HGMMA {r['total_counts'].get('HGMMA', 0)}"),
    Budget("attention-dkdv-hgmma", "sm_90 Triton attention dK/dV runs its dots on wgmma (HGMMA)",
           dict(op="scaled_dot_product_attention", backend="triton", arch="sm_90a", kernel="_attn_bwd_dkdv_kernel"),
           lambda r: r["total_counts"].get("HGMMA", 0) > 0, lambda r: f"HGMMA {r['total_counts'].get('HGMMA', 0)}"),
    Budget("attention-fwd-one-exp", "no duplicated softmax across warp groups: at most 1.25 MUFU per score",
           dict(op="scaled_dot_product_attention", mode="fwd", arch="sm_90a"),
           lambda r: r["mufu"] / _scores(r) <= 1.25, lambda r: f"{r['mufu'] / _scores(r):.2f} MUFU per score"),
    Budget("cuda-attention-async-copy", "CUDA attention forward stages K/V with cp.async or TMA",
           dict(op="scaled_dot_product_attention", backend="cuda", mode="fwd"),
           lambda r: r["total_counts"].get("LDGSTS", 0) + r["total_counts"].get("UTMALDG", 0) > 0,
           lambda r: f"LDGSTS {r['total_counts'].get('LDGSTS', 0)}, UTMALDG {r['total_counts'].get('UTMALDG', 0)}"),
    Budget("streaming-128bit", "memory-bound kernels move at least half their loaded bytes with 128-bit loads "
           "(aligned bench inputs)", dict(op=STREAMING, mode=("fwd", "bwd", "step")),
           lambda r: not _streams(r) or vector_share(r) >= 0.5,
           lambda r: f"{vector_share(r):.0%} of load bytes in LDG.128 (LDG.128 {_ldg(r, 128)}, LDG.64 {_ldg(r, 64)}, "
                     f"LDG.32 {_ldg(r, 32)}, LDG.16 {_ldg(r, 16)})"),
    Budget("scan-no-membar", "no MEMBAR (fences) in the selective scan's kernels",
           dict(op="selective_scan"),
           lambda r: r["total_counts"].get("MEMBAR", 0) == 0, lambda r: f"MEMBAR {r['total_counts'].get('MEMBAR', 0)}"),
    Budget("no-local-memory", "no local memory (spills) in the configs that launch",
           dict(dtype="bfloat16"),
           lambda r: r["spill_bytes"] == 0 and not r["total_counts"].get("LDL") and not r["total_counts"].get("STL"),
           lambda r: f"stack {r['spill_bytes']} B, LDL {r['total_counts'].get('LDL', 0)}, STL {r['total_counts'].get('STL', 0)}"),
    Budget("row-norm-fwd-instructions", "row norm forward issues at most 35 instructions per element (PERF.md)",
           dict(op=ROW_NORMS, mode="fwd", arch="sm_90a"),
           lambda r: r["instructions_per_element"] <= 35, lambda r: f"{r['instructions_per_element']:.1f} per element"),
    Budget("row-norm-bwd-instructions", "row norm backward issues at most 53 instructions per element (PERF.md)",
           dict(op=ROW_NORMS, mode="bwd", arch="sm_90a"),
           lambda r: r["instructions_per_element"] <= 53, lambda r: f"{r['instructions_per_element']:.1f} per element"),
    Budget("adamw-instructions", "AdamW issues at most 60 instructions per parameter",
           dict(op="adamw_step", arch="sm_90a"),
           lambda r: r["instructions_per_element"] <= 60, lambda r: f"{r['instructions_per_element']:.1f} per element"),
    Budget("depthwise-fwd-instructions", "depthwise conv forward: at most 2 instructions per multiply-add",
           dict(op="depthwise_conv2d", mode="fwd", arch="sm_90a"),
           lambda r: r["instructions"] <= 2 * r["flops"] / 2, lambda r: f"{r['instructions'] / (r['flops'] / 2):.2f} per FMA"),
]

# (budget id, op, backend) -> the issue that fixes it. Today's failures, from the quick run.
KNOWN = {
    ("depthwise-fwd-instructions", "depthwise_conv2d", "triton"):
        "#19: the Triton forward loads every tap with int64 addresses per element (51 instructions per trip "
        "of its tap loop for 4 FMAs: 13.7 per FMA at 49 trips); its trips, counted on padding-dominated samples, "
        "come out ~5 and hide it; the register-blocked forward exists in CUDA only",
}
