#!/usr/bin/env bash
# The README's main command: the whole product on a CPU, no COCO and no download needed.
#
#   bash tools/demo.sh
#
# 1. set up .venv if needed (tools/setup_env.sh, idempotent),
# 2. write the embedded demo data set to data/demo/ (once),
# 3. train the convolutional and the SASA demo RetinaNets (configs/demo/),
# 4. evaluate both on the held-out split with mmdet's CocoMetric (tools/test.py),
# 5. tabulate params / FLOPs / mAP and plot mAP against FLOPs (tools/analyze.py).
# Everything goes to work_dirs/demo/. About 15 minutes on a 2-core CPU.
#
# Knobs (environment variables; the defaults are the demo):
#   SASA_DEMO_WORK_DIR   output directory                    (work_dirs/demo)
#   SASA_DEMO_DATA       data directory                      (data/demo)
#   SASA_DEMO_DATA_ARGS  extra tools/make_demo_data.py args  (e.g. "--num-train 8 --num-val 4")
#   SASA_DEMO_CFG_OPTIONS  extra --cfg-options for training and testing
#                        (e.g. "train_cfg.max_iters=2 train_dataloader.batch_size=2")
#   SASA_DEMO_SKIP_SETUP=1  do not run tools/setup_env.sh (CI, where it already ran)
set -euo pipefail
# glibc hands freed blocks of 128 KiB and more back to the kernel and maps them afresh on the next
# allocation, so every training step page-faults its activations in again. Keeping up to 64 MiB
# blocks and 256 MiB of free heap makes both demo models' training steps 5-10% faster
# (docs/performance.md); a caller's own setting wins.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-67108864}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-268435456}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORK="${SASA_DEMO_WORK_DIR:-work_dirs/demo}"
DATA="${SASA_DEMO_DATA:-data/demo}"
PY="$ROOT/.venv/bin/python"
MODELS=(retinanet_r26w16_demo retinanet_sasa_r26w16_demo)
START=$(date +%s)
STEP_START=$START

say() { printf '[demo %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
step() { STEP_START=$(date +%s); say "== $*"; }
done_step() { say "   done in $(( $(date +%s) - STEP_START )) s"; }
trap 'say "FAILED (see the output above)"' ERR

step "1/5 environment (tools/setup_env.sh)"
if [ "${SASA_DEMO_SKIP_SETUP:-0}" != 1 ]; then
    bash tools/setup_env.sh
fi
done_step

step "2/5 demo data in $DATA"
if [ -f "$DATA/annotations/instances_train.json" ] && [ -f "$DATA/annotations/instances_val.json" ]; then
    say "   already there (delete $DATA to write it again)"
else
    # shellcheck disable=SC2086  # SASA_DEMO_DATA_ARGS is a list of arguments
    "$PY" tools/make_demo_data.py --out "$DATA" ${SASA_DEMO_DATA_ARGS:-}
fi
done_step

# The configs read data/demo/; point them elsewhere when SASA_DEMO_DATA says so.
OPTIONS=()
if [ "$DATA" != data/demo ]; then
    root="${DATA%/}/"
    OPTIONS+=("train_dataloader.dataset.data_root=$root" "val_dataloader.dataset.data_root=$root"
              "test_dataloader.dataset.data_root=$root"
              "val_evaluator.ann_file=${root}annotations/instances_val.json"
              "test_evaluator.ann_file=${root}annotations/instances_val.json")
fi
# shellcheck disable=SC2206  # SASA_DEMO_CFG_OPTIONS is a list of key=value
OPTIONS+=(${SASA_DEMO_CFG_OPTIONS:-})
CFG_OPTIONS=()
if [ ${#OPTIONS[@]} -gt 0 ]; then
    CFG_OPTIONS=(--cfg-options "${OPTIONS[@]}")
fi

step "3/5 training ${MODELS[*]} (mmengine logs progress and ETA)"
for model in "${MODELS[@]}"; do
    step "3/5 training $model"
    "$PY" tools/train.py "configs/demo/$model.py" --work-dir "$WORK/$model" "${CFG_OPTIONS[@]}"
    done_step
done

step "4/5 evaluating on the held-out split (mmdet CocoMetric)"
for model in "${MODELS[@]}"; do
    step "4/5 evaluating $model"
    checkpoint=$(cat "$WORK/$model/last_checkpoint")
    "$PY" tools/test.py "configs/demo/$model.py" "$checkpoint" --work-dir "$WORK/$model" \
        "${CFG_OPTIONS[@]}"
    done_step
done

step "5/5 params, FLOPs, mAP: table and plot (tools/analyze.py)"
configs=()
results=()
for model in "${MODELS[@]}"; do
    configs+=("configs/demo/$model.py")
    results+=("$WORK/$model")
done
"$PY" tools/analyze.py "${configs[@]}" --results "${results[@]}" --names conv-R26-demo SASA-R26-demo \
    --plot "$WORK/map_vs_flops.png" --table "$WORK/table.md" --paper
done_step

say "finished in $(( $(date +%s) - START )) s: table $WORK/table.md, plot $WORK/map_vs_flops.png"
