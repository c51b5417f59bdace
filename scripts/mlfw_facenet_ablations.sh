#!/usr/bin/env bash
# Tuning of configs/mlfw_facenet.py on a held-out 10% of the *train* identities (fixed by
# config.seed; val untouched), one change per run, then the recipe on all of train
# evaluated on val, with zero-shot, raw pixels and PowerSGD rank 4 beside it
# (docs/results.md). About 11 min a run on 2 cores after the one-off trunk cache (~4 min
# for train). Finished runs are skipped, so an interrupted script picks up where it stopped.
#
#   bash scripts/mlfw_facenet_ablations.sh tune    # runs/facenet_tune/<name>
#   bash scripts/mlfw_facenet_ablations.sh final   # runs/mlfw_facenet, runs/mlfw_facenet_powersgd
set -euo pipefail
cd "$(dirname "$0")/.."
TUNE="${TUNE:-runs/facenet_tune}"
VAL="${VAL:-../shared/data/mlfw/val}"
config=(--config configs/mlfw_facenet.py)

tune() {  # name, then config overrides
    local dir="$TUNE/$1"; shift
    [ -f "$dir/results.json" ] || python scripts/train.py "${config[@]}" \
        --config.data.holdout_fraction=0.1 "$@" --workdir "$dir"
}

evaluate() {  # output folder, then evaluate.py arguments
    local out="$1"; shift
    [ -f "$out/results.json" ] || python scripts/evaluate.py "${config[@]}" "$@" \
        --data_dir "$VAL" --out "$out"
}

final() {  # workdir, then config overrides
    local dir="$1"; shift
    [ -f "$dir/results.json" ] || python scripts/train.py "${config[@]}" "$@" --workdir "$dir"
    evaluate "$dir/eval_split" "$@" --workdir "$dir" --pairs generate
    evaluate "$dir/eval_first_file" "$@" --workdir "$dir" --protocol first_file
}

case "${1:-}" in
tune)
    tune base
    tune bn_inference --config.model.bn_mode=inference
    tune bn_train --config.model.bn_mode=train
    tune backbone_lr_1x --config.optim.backbone_lr_scale=1.0
    tune lars --config.optim.name=lars --config.optim.backbone_lr_scale=0.1
    ;;
final)
    final runs/mlfw_facenet
    evaluate runs/mlfw_facenet/eval_zero_shot_split --config.model.freeze_until= \
        --init converted_weights/facenet_casia --pairs generate
    final runs/mlfw_facenet_powersgd --config.reducer.name=powersgd \
        --config.reducer.powersgd.start_iter=14
    python scripts/compare_results.py runs/mlfw_facenet_powersgd/eval_split/results.json \
        runs/mlfw_facenet/eval_split/results.json
    ;;
*)
    echo "usage: $0 tune|final" >&2; exit 2 ;;
esac
