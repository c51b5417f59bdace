#!/usr/bin/env bash
# Zero-shot FaceNet on MLFW val (docs/evaluation.md): the converted CASIA-WebFace network,
# the same network untrained, and raw pixels, each under the split and first_file
# protocols at 160 px. About 1 min per network evaluation on 2 cores. Finished
# evaluations are skipped. Fetches and converts the weights first if needed.
#
#   bash scripts/facenet_zero_shot.sh     # writes runs/facenet_zero_shot/<name>/<protocol>
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/facenet_zero_shot}"
VAL="${VAL:-../shared/data/mlfw/val}"
WEIGHTS=converted_weights/facenet_casia

if [ ! -d "$WEIGHTS" ]; then
    graph=$(python scripts/download_facenet.py | sed -n 's/^\(.*\.pb\)$/\1/p')
    python scripts/convert_weights.py --source "$graph" --out "$WEIGHTS"
fi

for protocol in split first_file; do
    for run in "facenet --init $WEIGHTS" "untrained --init scratch" "raw_pixels --raw_pixels"; do
        set -- $run
        name=$1; shift
        out="$OUT/$name/$protocol"
        [ -f "$out/results.json" ] || python scripts/evaluate.py --config configs/facenet.py \
            "$@" --protocol "$protocol" --data_dir "$VAL" --out "$out"
    done
done
for protocol in split first_file; do
    echo "## $protocol"
    python scripts/results_table.py --vs raw_pixels "raw_pixels=$OUT/raw_pixels/$protocol/results.json" \
        "untrained=$OUT/untrained/$protocol/results.json" \
        "FaceNet CASIA-WebFace=$OUT/facenet/$protocol/results.json"
done
