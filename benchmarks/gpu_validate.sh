#!/usr/bin/env bash
# One-command GPU validation (about 10 minutes on an H100): build the CUDA extension, run the whole
# test suite on the GPU, then benchmark every registered op. Everything lands in one folder:
#   summary.json (the verdict: build, pytest counts, numerics FAILs, per-kernel speedups), pytest.log,
#   build.log, <stamp>_<gpu>.csv/.json (plot them later with benchmarks/plot.py); in the time left,
#   the model zoo's training steps (benchmarks/train_step.py: <stamp>_train_step_cuda.json) and the
#   static model's predictions beside the measurements (perf/perf.json, perf/perf_vs_measured.csv).
# Usage: bash benchmarks/gpu_validate.sh [extra dlkern validate options, e.g. --dtype bfloat16 float32]
# Exit status 0 only if the build, every test and every provider's numerics pass.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python3 || command -v python)}"
DEADLINE_S="${DEADLINE_S:-570}"            # the whole script, build included
start=$(date +%s)
dest="${OUT:-benchmarks/results}/gpu_$(date +%Y%m%d-%H%M%S)"
mkdir -p "$dest"
export PYTHONUNBUFFERED=1

echo "[gpu_validate] building dlkern (log: $dest/build.log)"
"$PY" -m pip install -e . --no-build-isolation --no-deps >"$dest/build.log" 2>&1
build_rc=$?
build_s=$(( $(date +%s) - start ))
if [ "$build_rc" -ne 0 ]; then
    echo "[gpu_validate] build FAILED (rc=$build_rc); tests and benchmarks still run on what imports"
    tail -n 30 "$dest/build.log"
fi

# python -m (not the `dlkern` script): works even when the build did not put one on PATH.
budget=$(( DEADLINE_S - $(date +%s) + start ))
"$PY" -m dlkern validate --out "$dest" --budget-s "$budget" \
    --build-rc "$build_rc" --build-log build.log --build-s "$build_s" "$@"
rc=$?

# The static model's predictions for the same bench cases, joined with what was just measured:
# <dest>/perf/perf.json and <dest>/perf/perf_vs_measured.csv (measured / predicted per case).
left=$(( DEADLINE_S - $(date +%s) + start ))
bench_json=$(ls -t "$dest"/*.json 2>/dev/null | grep -v summary.json | head -n 1)
if [ "$left" -gt 200 ] && [ -n "$bench_json" ]; then
    echo "[gpu_validate] dlkern perf --quick, then measured vs predicted (log: $dest/perf.log)"
    timeout $(( left - 60 )) "$PY" -m dlkern perf --quick --arch sm_90a --no-progress --out "$dest/perf" \
        >"$dest/perf.log" 2>&1 \
        && "$PY" benchmarks/perf_vs_measured.py "$bench_json" "$dest/perf/perf.json" | tee -a "$dest/perf.log" \
        || echo "[gpu_validate] dlkern perf incomplete or failed (see perf.log)"
fi

# End-to-end training steps of the model zoo (kernels vs eager vs torch.compile), in the time left.
left=$(( DEADLINE_S - $(date +%s) + start ))
if [ "$left" -gt 60 ]; then
    echo "[gpu_validate] model zoo training steps ($left s left; log: $dest/train_step.log)"
    timeout "$left" "$PY" benchmarks/train_step.py --out "$dest" >"$dest/train_step.log" 2>&1 \
        || echo "[gpu_validate] train_step.py incomplete or failed (see train_step.log)"
fi
echo "[gpu_validate] results in $dest (rc=$rc, $(( $(date +%s) - start )) s)"
exit $rc
