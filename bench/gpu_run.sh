#!/usr/bin/env bash
# The one prepared script for a session with a GPU (torch 2.11 + triton 3.6, no network).
# Run in the repository root; everything it produces goes under $OUT (at most 8 files come back):
#   gpu_run.log          full log (build, tests, benchmarks)
#   steps.txt            one line per step: name, exit status, seconds
#   pytest.xml           junit report of the native kernel tests
#   results.tar.gz       bench/results/<run-id>/ (CSV + markdown per script, summary.md, scaling PNG)
#   summary.md           copy of the run's summary (targets, ratios, rows not measured)
# Wall time stays under ~9.5 minutes (step limits 110 + 80 + 90 + 20 + 100 + 40 + 50 + 60 + 30 s); a step that
# times out or fails does not stop the following ones, and the benchmarks write their CSVs row by row. Pass the commit as DLSN_GIT_SHA (the device copy has no .git):
#   DLSN_GIT_SHA=<sha> bash bench/gpu_run.sh
# Dry run of the script's logic on a CPU machine (no build, tiny shapes, interpreter):
#   DLSN_SKIP_BUILD=1 BENCH_ARGS=--smoke OUT=/tmp/gpu-dry bash bench/gpu_run.sh
set -u
OUT=${OUT:-$PWD/bench/results/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
[ -z "${BENCH_ARGS:-}" ] && unset TRITON_INTERPRET
PY=${PYTHON:-python3}
export DLSN_GIT_SHA=${DLSN_GIT_SHA:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)-$DLSN_GIT_SHA
RESULTS=bench/results/$RUN_ID
mkdir -p "$RESULTS"
T0=$(date +%s)

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (timeout ${limit}s, t=$(( $(date +%s) - T0 ))s)"
    start=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo "=== $name: rc=$rc in $(( $(date +%s) - start ))s"
    echo "$name rc=$rc $(( $(date +%s) - start ))s" >> "$OUT/steps.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

# Build for sm_90 only (one arch keeps the extension build short); no dependencies fetched.
[ -z "${DLSN_SKIP_BUILD:-}" ] && step build 110 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY -m pip install --no-build-isolation --no-deps -e .
$PY -c "import dlsn, dlsn.ops.extension as e; print('extension built:', e.extension_available())"

# Kernel tests, natively (whichever of these exist).
TESTS=""
for t in tests/test_hash.py tests/test_bucket_sort.py tests/test_window_attention.py \
         tests/test_window_attention_bwd.py tests/test_gla_triton.py tests/test_gla_triton_grad.py \
         tests/test_scatter_back.py tests/test_fuzz.py; do
    [ -f "$t" ] && TESTS="$TESTS $t"
done
PER_TEST=""
$PY -c "import pytest_timeout" 2>/dev/null && PER_TEST="--timeout=60"
step tests 80 $PY -m pytest -q -p no:cacheprovider $PER_TEST --junitxml="$OUT/pytest.xml" $TESTS

# torch.compile(fullgraph=True) with Inductor on the GPU, both backends, eval and training, against the
# float64 oracle (tests/test_compile.py; the CPU runs the fused backend with aot_eager only).
step compile 90 $PY -m pytest -q -p no:cacheprovider $PER_TEST tests/test_compile.py -k inductor

# Benchmarks at full shapes, one run id, each script under its own timeout.
# Error of each float32 precision mode against float64, measured on the kernels (the CPU can only emulate it).
step precision 20 sh -c "$PY bench/precision_modes.py --device cuda | tee $RESULTS/precision_modes.md"
for spec in gla:100 stages:40 scaling:50 dlsn:60; do
    name=${spec%%:*}
    step "bench_$name" "${spec##*:}" $PY bench/run_all.py --only "$name" --run-id "$RUN_ID" --out "$RESULTS" ${BENCH_ARGS:-}
done
# One summary over every script that finished, and a short table at the end of the output.
step summary 30 $PY bench/run_all.py --summary-only --out "$RESULTS"

tar -czf "$OUT/results.tar.gz" "$RESULTS"
[ -f "$RESULTS/summary.md" ] && cp "$RESULTS/summary.md" "$OUT/summary.md"
echo "=== done in $(( $(date +%s) - T0 ))s; results in $RESULTS (tarred to \$OUT/results.tar.gz)"
cat "$OUT/steps.txt"
