#!/usr/bin/env bash
# The README demo: the whole pipeline on a synthetic mini-EPIC that it makes itself.
# Called by `make demo` (which sets BIN to the venv's bin folder and WORK to the work folder).
set -euo pipefail
BIN=${BIN:-.venv/bin}
WORK=${WORK:-work/demo}
DEMO_TRAIN_ARGS=${DEMO_TRAIN_ARGS:-}
# TWO_STREAM=1 (`make demo-two-stream`): also the mini-EPIC's optical flow, a flow store, a
# flow stream trained beside the RGB one, and the two fused (docs/training.md, two streams).
TWO_STREAM=${TWO_STREAM:-0}
TOTAL=6
[ "$TWO_STREAM" = 1 ] && TOTAL=9
MINI="$WORK/mini-epic"
STORE="$WORK/store"
RUN="$WORK/run"

step() { printf '\n=== %s\n' "$*"; }

rm -rf "$WORK"
mkdir -p "$WORK"

step "1/$TOTAL epic-synth: a mini EPIC-KITCHENS (videos at real EPIC frame rates + official CSVs)"
if [ "$TWO_STREAM" = 1 ]; then
  "$BIN/epic-synth" --out "$MINI" --seed 0 --flow
else
  "$BIN/epic-synth" --out "$MINI" --seed 0
fi

step "2/$TOTAL epic-extract plan"
"$BIN/epic-extract" plan --videos "$MINI/EPIC-KITCHENS" --annotations "$MINI/annotations" \
  --store "$STORE" --shards 2

step "3/$TOTAL epic-extract run --all (on a cluster: one SLURM array task per shard)"
"$BIN/epic-extract" run --store "$STORE" --all --tmp-dir "$WORK/tmp"

step "4/$TOTAL epic-check"
"$BIN/epic-check" --store "$STORE" --annotations "$MINI/annotations"

step "5/$TOTAL epic-train (CPU, short run)"
# shellcheck disable=SC2086  # DEMO_TRAIN_ARGS is a list of options
"$BIN/epic-train" --store "$STORE" --annotations "$MINI/annotations" --output-dir "$RUN" $DEMO_TRAIN_ARGS

step "6/$TOTAL epic-validate best.pt on the validation split"
"$BIN/epic-validate" --checkpoint "$RUN/best.pt" --store "$STORE" --annotations "$MINI/annotations" \
  --split validation --output-dir "$WORK/validation" --workers 2

if [ "$TWO_STREAM" != 1 ]; then
  printf '\nDemo finished: store in %s, run folder in %s, metrics in %s\n' \
    "$STORE" "$RUN" "$WORK/validation/metrics.json"
  exit 0
fi

FLOW_STORE="$WORK/flow-store"
FLOW_RUN="$WORK/flow-run"
step "7/$TOTAL the flow store: epic-extract plan --flow, run, epic-check (synthetic tars: --not-official)"
"$BIN/epic-extract" plan --flow "$MINI/EPIC-KITCHENS" --not-official \
  --annotations "$MINI/annotations" --store "$FLOW_STORE" --shards 2
"$BIN/epic-extract" run --store "$FLOW_STORE" --all --tmp-dir "$WORK/tmp"
"$BIN/epic-check" --store "$FLOW_STORE" --annotations "$MINI/annotations"

step "8/$TOTAL epic-train --modality flow, then epic-validate the flow stream"
# shellcheck disable=SC2086  # DEMO_TRAIN_ARGS is a list of options
"$BIN/epic-train" --store "$FLOW_STORE" --annotations "$MINI/annotations" --output-dir "$FLOW_RUN" \
  --modality flow $DEMO_TRAIN_ARGS
"$BIN/epic-validate" --checkpoint "$FLOW_RUN/best.pt" --store "$FLOW_STORE" \
  --annotations "$MINI/annotations" --split validation --output-dir "$WORK/flow-validation" --workers 2

step "9/$TOTAL epic-validate --fuse: the two streams' predictions, fused"
"$BIN/epic-validate" --fuse "$WORK/validation/predictions.pkl" "$WORK/flow-validation/predictions.pkl" \
  --annotations "$MINI/annotations" --split validation --output-dir "$WORK/fused"

printf '\nTwo-stream demo finished: stores %s and %s, metrics in %s, %s and %s\n' \
  "$STORE" "$FLOW_STORE" "$WORK/validation/metrics.json" "$WORK/flow-validation/metrics.json" \
  "$WORK/fused/metrics.json"
