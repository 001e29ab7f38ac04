"""What is special to the Triton attention kernels: the tile tables (rules read from the SASS, and
every config compiled for its GPU without spills), and the backward's deterministic switch."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dlkern.kernels import attention as kattn
from dlkern.kernels.attention_configs import ARCHS, HEAD_DIMS, KINDS, TILES, pruner, tune_key
from dlkern.ops.attention import attention_ref
from dlkern.ops.attention import scaled_dot_product_attention as sdpa
from numerics import assert_close_to_reference

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_LIMIT = {"sm_90a": 227 * 1024, "sm_80": 163 * 1024}   # opt-in shared memory per block


# ---------------------------------------------------------------------------------------------
# Tile tables
# ---------------------------------------------------------------------------------------------
def test_every_column_has_a_list():
    for kind in KINDS:
        for arch in ARCHS:
            for d in HEAD_DIMS:
                for dt in ("16bit", "fp32"):
                    for causal in (False, True):
                        assert TILES[kind][(arch, d, dt, causal)], (kind, arch, d, dt, causal)


def test_hopper_warpgroups_own_their_rows():
    """sm_90: wgmma gives each warpgroup (4 warps) 64 rows of M; with 8 warps and fewer than 128
    rows both warpgroups compute the same scores (the query tile is M in the forward and dQ, the
    key tile in dK/dV). Under 64 rows Triton falls back to mma.sync, without duplication."""
    for kind in KINDS:
        for (arch, d, dt, causal), tiles in TILES[kind].items():
            if arch != "sm_90" or dt != "16bit":
                continue
            for bm, bn, warps, _ in tiles:
                m = bn if kind == "dkdv" else bm
                assert warps < 8 or m >= 128, (kind, d, causal, (bm, bn, warps))


def test_ampere_forward_rows_cover_the_head_dim():
    """sm_80 forward: a query tile smaller than the head dim splits warps along the keys and every
    softmax row reduction crosses warps through shared memory (d256: no such tile fits)."""
    for (arch, d, dt, causal), tiles in TILES["fwd"].items():
        if arch == "sm_80" and dt == "16bit" and d <= 128:
            assert all(bm >= d for bm, *_ in tiles), (d, causal, tiles)


class _Arg:
    def __init__(self, nbytes):
        self.nbytes = nbytes

    def element_size(self):
        return self.nbytes


@pytest.mark.parametrize("kind", KINDS)
def test_pruner_keeps_the_column_in_order(kind, monkeypatch):
    monkeypatch.setattr("dlkern.kernels.attention_configs.INTERPRET", False)
    import triton
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for tiles in TILES[kind].values() for m, n, w, s in tiles]
    prune = pruner(kind)["early_config_prune"]
    for arch_key, arch in enumerate(ARCHS):
        for block_d, causal in ((64, False), (128, True), (32, True)):
            kept = prune(configs, {"Q": _Arg(2)}, ARCH_KEY=arch_key, BLOCK_D=block_d, IS_CAUSAL=causal)
            want = TILES[kind][tune_key(kind, arch, block_d, 2, causal)]
            assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept] == want


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DLKERN_DEBUG_NAN_FILL")}
    env["PYTHONPATH"] = TESTS + os.pathsep + env.get("PYTHONPATH", "")
    script = os.path.join(TESTS, "attention_tiles_check.py")
    procs = [subprocess.Popen([sys.executable, script, str(i), "2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    rows = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        assert p.returncode == 0, err[-4000:]
        rows += [json.loads(line) for line in out.splitlines()]
    return rows


@pytest.mark.slow
def test_every_table_config_compiles_without_spill(compiled):
    """Each bf16 config of the tables, as launched (forward, atomic and deterministic backward),
    compiles for its GPU with no local memory and within the shared memory a block may opt into."""
    from attention_tiles_check import ARCHS as COMPILED_ARCHS
    seen = {(r["table_arch"], r["head_dim"], r["causal"], r["kernel"], tuple(r["tile"])) for r in compiled}
    names = {"fwd": ["_attn_fwd_kernel"], "dkdv": ["_attn_bwd_dkdv_kernel"], "dq": ["_attn_bwd_dq_kernel"]}
    missing = [(kind, key, t) for kind in KINDS for key, tiles in TILES[kind].items() for t in tiles
               if key[0] in COMPILED_ARCHS.values() and key[2] == "16bit"
               and (key[0], key[1], key[3], names[kind][0], tuple(t)) not in seen]
    assert not missing, f"table configs never launched: {missing}"
    bad = []
    for r in compiled:
        line = f"{r['arch']} d{r['head_dim']} causal={r['causal']} {r['kernel']} atomic={r['atomic']} {r['tile']}"
        if "error" in r:
            bad.append(f"{line}: {r['error']}")
        elif r["spill_bytes"] or r["shared_bytes"] > SHARED_LIMIT[r["arch"]]:
            bad.append(f"{line}: {r['registers']} registers, {r['spill_bytes']} B stack, {r['shared_bytes']} B shared")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# Deterministic backward
# ---------------------------------------------------------------------------------------------
class _Counting:
    """A kernel wrapper counting launches (kernel[grid](...))."""
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.kernel[grid]


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 37, 16, generator=gen, dtype=dtype)
    k, v = (torch.randn(1, 2, 45, 16, generator=gen, dtype=dtype) for _ in range(2))
    return q, k, v, torch.randn(1, 4, 37, 16, generator=gen, dtype=dtype)


def _grads(q, k, v, cot, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = sdpa(*leaves, backend="triton", enable_gqa=True, is_causal=True, causal_alignment="bottom_right", **kw)
    return out, torch.autograd.grad(out, leaves, cot)


@pytest.mark.parametrize("how", ["argument", "torch_flag"])
def test_deterministic_backward_uses_the_dq_pass_and_repeats_bitwise(how, monkeypatch):
    spy = _Counting(kattn._attn_bwd_dq_kernel)
    monkeypatch.setattr(kattn, "_attn_bwd_dq_kernel", spy)
    q, k, v, cot = _inputs()
    runs = []
    for _ in range(2):
        if how == "argument":
            runs.append(_grads(q, k, v, cot, deterministic=True)[1])
        else:
            prior = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(True)
            try:
                runs.append(_grads(q, k, v, cot)[1])
            finally:
                torch.use_deterministic_algorithms(prior)
    assert spy.calls == 2
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_default_backward_accumulates_dq_atomically(monkeypatch):
    spy = _Counting(kattn._attn_bwd_dq_kernel)
    monkeypatch.setattr(kattn, "_attn_bwd_dq_kernel", spy)
    _grads(*_inputs())
    assert spy.calls == 0


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_both_backward_paths_match_the_reference(deterministic, dtype):
    """GQA, bottom-right causal, ragged lengths: masked diagonal, unmasked and ragged tiles."""
    q, k, v, cot = _inputs(dtype)
    out, grads = _grads(q, k, v, cot, deterministic=deterministic)
    kw = dict(enable_gqa=True, is_causal=True, causal_alignment="bottom_right")
    exact_in = [t.double().requires_grad_(True) for t in (q, k, v)]
    exact = attention_ref(*exact_in, **kw)
    exact_grads = torch.autograd.grad(exact, exact_in, cot.double())
    low_in = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    low = attention_ref(*low_in, **kw)
    low_grads = torch.autograd.grad(low, low_in, cot)
    assert_close_to_reference("out", out, exact, low, dtype, 4.0)
    for name, g, e, lo in zip(("dq", "dk", "dv"), grads, exact_grads, low_grads):
        assert_close_to_reference(name, g, e, lo, dtype, 4.0)
