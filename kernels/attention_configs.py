"""Launch configurations of the Triton attention kernels, as data.

``TILES[kind][(arch, head-dim bucket, dtype class, causal)]`` lists (BLOCK_M, BLOCK_N, num_warps,
num_stages), best first, for ``kind`` in fwd / dkdv / dq (BLOCK_M is always the query tile and
BLOCK_N the key tile). The lists were chosen on the variants that really launch (``dlkern perf``
compiles each with the JIT's own specialization and predicts its time; see the commit that set
them) under two rules read from the SASS (review-attention.md §2.3):

* sm_90: a warpgroup (4 warps) needs 64 query rows of its own, else two warpgroups compute the
  same scores and softmax (wgmma M = 64): 8 warps only with BLOCK_M >= 128;
* sm_80: at BLOCK_M < head dim the mma-v2 layout splits warps along the key axis and every row
  max/sum crosses warps through shared memory: BLOCK_M >= head dim (d256 excepted: nothing fits).

The autotuner is given the union of all lists; the pruner keeps the list of the launch's key, so
the autotuner (and ``dlkern perf``, which predicts each kept config) only ever sees those.
fp32 inputs run IEEE dots on CUDA cores (a correctness path): small tiles, one list for all GPUs.
The interpreter runs one small configuration (it executes every program in Python).
"""
import triton

from .interpret import INTERPRET

KINDS = ("fwd", "dkdv", "dq")
ARCHS = ("sm_90", "sm_80")
HEAD_DIMS = (64, 128, 256)

_FP32 = {"fwd": [(32, 32, 4, 2), (16, 32, 4, 1)], "dkdv": [(16, 32, 4, 1), (16, 16, 4, 1)],
         "dq": [(32, 16, 4, 1), (16, 16, 4, 1)]}

# (arch, head dim) -> 16-bit lists per kind; causal launches use the same tiles (their unmasked loop
# is the non-causal one, and the model picked the same tiles for both).
_HALF = {
    ("sm_90", 64): {
        "fwd": [(128, 128, 8, 3), (64, 64, 4, 4)],
        "dkdv": [(64, 128, 8, 3), (32, 64, 4, 3)],
        "dq": [(128, 64, 8, 3), (64, 64, 4, 3)],
    },
    ("sm_90", 128): {
        "fwd": [(128, 128, 8, 2), (128, 64, 8, 3)],
        "dkdv": [(32, 128, 8, 3), (16, 128, 8, 3)],
        "dq": [(128, 64, 8, 2), (64, 64, 4, 3)],
    },
    ("sm_90", 256): {
        "fwd": [(32, 32, 4, 2), (32, 16, 4, 2)],
        "dkdv": [(16, 16, 4, 2)],
        "dq": [(32, 32, 4, 2), (16, 32, 4, 2)],
    },
    ("sm_80", 64): {
        "fwd": [(128, 64, 8, 3), (64, 64, 4, 3)],
        "dkdv": [(32, 128, 8, 2), (32, 64, 4, 2)],
        "dq": [(128, 64, 8, 2), (64, 64, 4, 2)],
    },
    ("sm_80", 128): {
        "fwd": [(128, 64, 8, 2), (128, 32, 8, 2)],
        "dkdv": [(32, 64, 8, 2), (16, 64, 4, 2)],
        "dq": [(128, 32, 8, 2), (64, 32, 4, 2)],
    },
    ("sm_80", 256): {
        "fwd": [(32, 32, 4, 2), (32, 16, 4, 2)],
        "dkdv": [(16, 16, 4, 2)],
        "dq": [(32, 32, 4, 2), (16, 32, 4, 2)],
    },
}


def _table():
    table = {kind: {} for kind in KINDS}
    for (arch, d), lists in _HALF.items():
        for kind in KINDS:
            for causal in (False, True):
                table[kind][(arch, d, "16bit", causal)] = lists[kind]
                table[kind][(arch, d, "fp32", causal)] = _FP32[kind]
    return table


TILES = _table()


def arch_of(device) -> str:
    """The table column of a CUDA device: Hopper and Blackwell datacenter parts (228 KB shared
    memory, wgmma or better) use the sm_90 lists; every other GPU the sm_80 lists (a config that
    does not fit a smaller part fails to compile and the autotuner skips it)."""
    import torch
    major = torch.cuda.get_device_properties(device).major
    return "sm_90" if major in (9, 10) else "sm_80"


def head_dim_bucket(block_d: int) -> int:
    return min(b for b in HEAD_DIMS if b >= block_d)


def tune_key(kind, arch, block_d, elem_bytes, causal):
    return (arch, head_dim_bucket(block_d), "fp32" if elem_bytes == 4 else "16bit", bool(causal))


def _config(m, n, w, st):
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)


def configs(kind):
    """Every config of ``kind`` in the table (the autotuner's full list; the pruner picks)."""
    if INTERPRET:
        return [_config(16, 16, 4, 1)]
    seen = []
    for tiles in TILES[kind].values():
        seen += [t for t in tiles if t not in seen]
    return [_config(*t) for t in seen]


def pruner(kind):
    """Keep the table's list for the launch (ARCH_KEY, BLOCK_D, dtype, IS_CAUSAL), in its order."""
    def prune(all_configs, named_args, **kwargs):
        if INTERPRET:
            return all_configs
        get = lambda name: kwargs.get(name, named_args.get(name))  # noqa: E731
        arch = ARCHS[get("ARCH_KEY")]
        wanted = TILES[kind][tune_key(kind, arch, get("BLOCK_D"), named_args["Q"].element_size(), get("IS_CAUSAL"))]
        by_tile = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c for c in all_configs}
        return [by_tile[t] for t in wanted]
    return {"early_config_prune": prune}


# Autotune key: arch, power-of-two length buckets, head dim and the code-path flags.
TUNE_KEY = ["ARCH_KEY", "LQ_KEY", "LK_KEY", "BLOCK_D", "HAS_BIAS", "IS_CAUSAL", "DROPOUT"]


def len_key(n):
    """Lengths are tuned per power-of-two bucket, not per exact value."""
    return triton.next_power_of_2(max(int(n), 1))
