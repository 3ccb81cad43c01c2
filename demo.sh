#!/usr/bin/env bash
# The README demo: the whole pipeline on a synthetic mini-EPIC that it makes itself.
# Called by `make demo` (which sets BIN to the venv's bin folder and WORK to the work folder).
set -euo pipefail
BIN=${BIN:-.venv/bin}
WORK=${WORK:-work/demo}
DEMO_TRAIN_ARGS=${DEMO_TRAIN_ARGS:-}
MINI="$WORK/mini-epic"
STORE="$WORK/store"
RUN="$WORK/run"

step() { printf '\n=== %s\n' "$*"; }

rm -rf "$WORK"
mkdir -p "$WORK"

step "1/6 epic-synth: a mini EPIC-KITCHENS (videos at real EPIC frame rates + official CSVs)"
"$BIN/epic-synth" --out "$MINI" --seed 0

step "2/6 epic-extract plan"
"$BIN/epic-extract" plan --videos "$MINI/EPIC-KITCHENS" --annotations "$MINI/annotations" \
  --store "$STORE" --shards 2

step "3/6 epic-extract run --all (on a cluster: one SLURM array task per shard)"
"$BIN/epic-extract" run --store "$STORE" --all --tmp-dir "$WORK/tmp"

step "4/6 epic-check"
"$BIN/epic-check" --store "$STORE" --annotations "$MINI/annotations"

step "5/6 epic-train (CPU, short run)"
# shellcheck disable=SC2086  # DEMO_TRAIN_ARGS is a list of options
"$BIN/epic-train" --store "$STORE" --annotations "$MINI/annotations" --output-dir "$RUN" $DEMO_TRAIN_ARGS

step "6/6 epic-validate best.pt on the validation split"
"$BIN/epic-validate" --checkpoint "$RUN/best.pt" --store "$STORE" --annotations "$MINI/annotations" \
  --split validation --output-dir "$WORK/validation" --workers 2

printf '\nDemo finished: store in %s, run folder in %s, metrics in %s\n' \
  "$STORE" "$RUN" "$WORK/validation/metrics.json"
