"""The budgets of budgets.py on the quick ``dlkern perf`` run: one test per budget x op x backend;
known failures are strict xfails naming the issue that fixes them."""
import pytest

from budgets import BUDGETS, KNOWN

from dlkern.perf.cuda import LAUNCH_RULES

OPS = ("act_norm", "add_layer_norm", "add_rms_norm", "adamw_step", "affine_coupling", "batch_norm", "causal_conv1d",
       "causal_conv1d_update", "depthwise_conv2d", "dilated_conv1d", "group_norm", "group_norm_silu",
       "instance_norm", "inv_conv1x1", "layer_norm", "rms_norm", "scaled_dot_product_attention", "selective_scan",
       "selective_state_update", "wavenet_layer", "weight_norm")


def _matches(value, want):
    return value in want if isinstance(want, tuple) else value == want


def _cases():
    out = []
    for b in BUDGETS:
        ops = [o for o in OPS if "op" not in b.where or _matches(o, b.where["op"])]
        backends = [b.where["backend"]] if "backend" in b.where else ["triton", "cuda"]
        for op in ops:
            for backend in backends:
                if backend == "cuda" and op not in LAUNCH_RULES:
                    continue
                reason = KNOWN.get((b.id, op, backend))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                out.append(pytest.param(b, op, backend, marks=marks, id=f"{b.id}-{op}-{backend}"))
    return out


@pytest.mark.parametrize("budget,op,backend", _cases())
def test_budget(perf_quick, budget, op, backend):
    where = dict(budget.where, op=op, backend=backend)
    records = [r for r in perf_quick["records"]
               if r.get("launched", True) and r.get("picked") and all(_matches(r.get(k), v) for k, v in where.items())]
    if not records:
        pytest.skip(f"no {backend} launch of {op} is modelled for this budget (no launch rule or no such kernel)")
    bad = [f"{r['arch']} {r['case']} {r['mode']} {r['kernel']}: {budget.show(r)}" for r in records if not budget.check(r)]
    assert not bad, f"{budget.text}:\n" + "\n".join(bad)
