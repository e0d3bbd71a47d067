#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with one CUDA GPU, PyTorch and Triton and
# nothing else (no OpenMMLab, no install, no network); about 8 minutes on one H100/H200:
#
#   bash tools/gpu_check.sh                    # results in $OUT/gpu_check.md, else work_dirs/
#   bash tools/gpu_check.sh --dry-run          # the same steps on CPU, tiny shapes, Triton's
#                                              # interpreter (TRITON_INTERPRET=1): a rehearsal
#   bash tools/gpu_check.sh --prepare          # copy pytest (pure Python) into .gpu_pylib/ to
#                                              # carry to a GPU machine that lacks it
#
# Steps, each under its own time limit, all output into ONE results file (a failed step is
# recorded and the next one runs; the exit status is the number of failed steps):
#   1. versions and device;
#   2. tests/triton_cases.py with compiled kernels (values, float64 gradients, fp16/bf16,
#      repeatable backward, opcheck, torch.compile);
#   3. tools/benchmark.py --device cuda: conv 3x3, sliced, triton at the ResNet-50 stages and
#      COCO stage 1 (64 x 200 x 336), float32 and bfloat16, fwd and fwd+bwd, peak memory;
#   4. the Triton tile sizes: the shipped TILE_ELEMENTS/NUM_WARPS against others;
#   5. tools/backbone_benchmark.py: ResNet-50 backbone fwd+bwd, conv against SASA, at 640 x 640
#      and 800 x 1333 (mmdet's ResNet where mmdet imports, else the same built from sasa_det).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="${PYTHON:-python}"
[ -x "$ROOT/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && PY="$ROOT/.venv/bin/python"
MODE="gpu"
case "${1:-}" in
    --dry-run) MODE="dry" ;;
    --prepare) MODE="prepare" ;;
    "") ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --dry-run, --prepare, none)" >&2
       exit 2 ;;
esac

if [ "$MODE" = prepare ]; then
    dest="$ROOT/.gpu_pylib"
    rm -rf "$dest" && mkdir -p "$dest"
    site=$("$PY" -c "import pytest, os; print(os.path.dirname(os.path.dirname(pytest.__file__)))")
    for package in pytest _pytest pluggy iniconfig packaging py.py; do
        [ -e "$site/$package" ] && cp -r "$site/$package" "$dest/"
    done
    echo "copied pytest and its pure-Python dependencies to $dest ($(du -sh "$dest" | cut -f1))"
    exit 0
fi

if [ "$MODE" = dry ]; then
    export TRITON_INTERPRET=1
    RESULTS="${SASA_DET_GPU_CHECK_RESULTS:-work_dirs/gpu_check/dry_run.md}"
else
    RESULTS="${SASA_DET_GPU_CHECK_RESULTS:-${OUT:+$OUT/gpu_check.md}}"
    RESULTS="${RESULTS:-work_dirs/gpu_check/gpu_check.md}"
fi
mkdir -p "$(dirname "$RESULTS")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pytest" 2>/dev/null && [ -d "$ROOT/.gpu_pylib" ]; then
    export PYTHONPATH="$PYTHONPATH:$ROOT/.gpu_pylib"
fi
FAILED=0
START=$(date +%s)

# run LIMIT_S TITLE COMMAND...: the command's output in a fenced block under a heading.
run() {
    local limit=$1 title=$2
    shift 2
    local t0=$(date +%s)
    { printf '\n## %s\n\n`%s`\n\n```text\n' "$title" "$*"; } >>"$RESULTS"
    timeout "$limit" "$@" 2>&1 | grep -v 'USDT' >>"$RESULTS"
    local rc=${PIPESTATUS[0]}
    printf '```\n\nexit status %s, %s s\n' "$rc" "$(( $(date +%s) - t0 ))" >>"$RESULTS"
    echo "[gpu_check $(( $(date +%s) - START ))s] $title: exit $rc"
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
}

printf '# sasa-det GPU check (%s, %s)\n' "$MODE" "$(date -u '+%Y-%m-%d %H:%M UTC')" >"$RESULTS"
run 60 "1. versions and device" "$PY" - <<'PY'
import platform, subprocess, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError as error:
    print(f"triton missing: {error}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs")
    print(subprocess.run(['nvidia-smi', '--query-gpu=driver_version,clocks.max.sm,power.limit',
                          '--format=csv'], capture_output=True, text=True).stdout.strip())
else:
    print("no CUDA device visible")
try:
    import mmdet
    print(f"mmdet {mmdet.__version__}")
except ImportError:
    print("mmdet not installed: the backbone comparison uses sasa_det's standalone ResNet-50")
PY

if "$PY" -c "import pytest" 2>/dev/null; then
    run 240 "2. tests/triton_cases.py (kernels $([ "$MODE" = dry ] && echo interpreted || echo compiled))" \
        "$PY" -m pytest tests/triton_cases.py -q -p no:cacheprovider -x --durations=5
else
    printf '\n## 2. tests/triton_cases.py\n\nnot run: pytest is not importable; run `bash tools/gpu_check.sh --prepare` where it is and carry .gpu_pylib/\n' >>"$RESULTS"
    FAILED=$((FAILED + 1))
fi

if [ "$MODE" = dry ]; then
    run 120 "3. layer benchmark (dry run: CPU, conv and sliced, one tiny stage)" \
        "$PY" tools/benchmark.py --device cpu --methods conv,sliced --stages 16x8 --batch 1 \
        --warmup 0 --repeats 1 --dtype float32,bfloat16
    printf '\n## 4. Triton tile sizes\n\nnot run in the dry run: the triton methods time compiled kernels on CUDA only\n' >>"$RESULTS"
    run 180 "5. ResNet-50 backbone fwd+bwd (dry run: CPU, 64 x 64)" \
        "$PY" tools/backbone_benchmark.py --device cpu --sizes 64x64 --batch 1 --warmup 0 \
        --repeats 1
else
    run 150 "3. layer benchmark: conv, sliced, triton" \
        "$PY" tools/benchmark.py --device cuda --dtype float32,bfloat16
    run 90 "4. Triton tile sizes (TILE_ELEMENTS/NUM_WARPS)" \
        "$PY" tools/benchmark.py --device cuda --methods triton,triton@256/4,triton@1024/4,triton@1024/8 \
        --stages 64x56,256x14,64x200x336 --no-memory --dtype float32,bfloat16
    run 120 "5. ResNet-50 backbone fwd+bwd, conv against SASA" \
        "$PY" tools/backbone_benchmark.py --device cuda
fi
printf '\n%s failed step(s), %s s in all\n' "$FAILED" "$(( $(date +%s) - START ))" >>"$RESULTS"
echo "[gpu_check] results in $RESULTS ($FAILED failed step(s))"
exit "$FAILED"
