#!/usr/bin/env bash
# The recipe of configs/mlfw_cpu.py and its ablations (docs/results.md): one change per
# run, each trained on MLFW train and evaluated on val with the split protocol, plus the
# raw-pixel and untrained baselines. About 4-5 min a run on 2 cores. Finished runs are
# skipped, so an interrupted script picks up where it stopped.
#
#   bash scripts/mlfw_cpu_ablations.sh      # writes runs/mlfw_cpu and runs/ablations/<name>
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/ablations}"
VAL="${VAL:-../shared/data/mlfw/val}"
config=(--config configs/mlfw_cpu.py)

evaluate() {  # output folder, then evaluate.py arguments
    local out="$1"; shift
    [ -f "$out/results.json" ] || python scripts/evaluate.py "${config[@]}" "$@" \
        --data_dir "$VAL" --out "$out"
}

run() {  # workdir, then config overrides
    local dir="$1"; shift
    [ -f "$dir/results.json" ] || python scripts/train.py "${config[@]}" "$@" --workdir "$dir"
    evaluate "$dir/eval" "$@" --workdir "$dir"
}

evaluate runs/mlfw_cpu/eval_raw_pixels --raw_pixels
evaluate runs/mlfw_cpu/eval_untrained --init scratch
run runs/mlfw_cpu
evaluate runs/mlfw_cpu/eval_projector --config.eval.embedding=projector --workdir runs/mlfw_cpu
run "$OUT/standard_sampler" --config.data.pair_sampler=standard
run "$OUT/same_source" --config.data.pair_sampler=same_source
run "$OUT/lambda_0.02" --config.loss.lambd=0.02
run "$OUT/projector_1024" --config.model.projector=1024-1024
run "$OUT/powersgd_rank4" --config.reducer.name=powersgd --config.reducer.powersgd.start_iter=20
