#!/usr/bin/env bash
# Tuning of configs/mlfw_facenet.py on a held-out 10% of the *train* identities (fixed by
# config.seed; val untouched), one change per run, then the recipe on all of train
# evaluated on val, with zero-shot, raw pixels and PowerSGD rank 4 beside it
# (docs/results.md). About 11 min a run on 2 cores after the one-off trunk cache (~4 min
# for train). Finished runs are skipped, so an interrupted script picks up where it stopped.
#
#   bash scripts/mlfw_facenet_ablations.sh tune    # runs/facenet_tune/<name>
#   bash scripts/mlfw_facenet_ablations.sh deep    # the deeper splits (issue 28), the same way
#   bash scripts/mlfw_facenet_ablations.sh final   # runs/mlfw_facenet, runs/mlfw_facenet_powersgd
#   CONFIG=configs/mlfw_facenet_deep.py bash scripts/mlfw_facenet_ablations.sh final
#       # the same for a variant: runs/mlfw_facenet_deep, runs/mlfw_facenet_deep_powersgd
set -euo pipefail
cd "$(dirname "$0")/.."
TUNE="${TUNE:-runs/facenet_tune}"
VAL="${VAL:-../shared/data/mlfw/val}"
CONFIG="${CONFIG:-configs/mlfw_facenet.py}"
RUN="runs/$(basename "$CONFIG" .py)"
config=(--config "$CONFIG")

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
deep)  # the layers from the split on train; fewer epochs, as the held-out curve stops rising
    tune deep6a --config.model.freeze_until=Mixed_6a --config.train.epochs=4 \
        --config.evals.knn.every_epochs=1
    tune deep17_5 --config.model.freeze_until=block17_5 --config.train.epochs=4 \
        --config.evals.knn.every_epochs=1
    tune deep6a_lr03 --config.model.freeze_until=Mixed_6a --config.train.epochs=4 \
        --config.evals.knn.every_epochs=1 --config.optim.backbone_lr_scale=0.3
    ;;
final)
    final "$RUN"
    evaluate "$RUN/eval_zero_shot_split" --config.model.freeze_until= \
        --init converted_weights/facenet_casia --pairs generate
    final "${RUN}_powersgd" --config.reducer.name=powersgd \
        --config.reducer.powersgd.start_iter=14
    python scripts/compare_results.py "${RUN}_powersgd/eval_split/results.json" \
        "$RUN/eval_split/results.json"
    ;;
*)
    echo "usage: $0 tune|deep|final" >&2; exit 2 ;;
esac
