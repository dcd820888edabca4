#!/usr/bin/env bash
# Trains the demo weights on CPU from scratch and evaluates them:
#   1. writes the phantom data set (300 scans, 5 centres) into .cache/phantoms-v1,
#   2. trains the narrow networks with the northfield centre held out, into .cache/train-demo,
#   3. evaluates the result on the test split and on the held-out centre,
#   4. copies the weights to models/demo-narrow-phantom.safetensors.
# Every step is deterministic for its seed, and on 2 cores the whole run takes about 50 minutes.
# Extra arguments go to `lungstream train` (e.g. --epochs 2 for a quick trial).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
source "$root/scripts/env.sh"
cargo build --quiet --release --locked -p lungstream
bin="$root/target/release/lungstream"

data=${LUNGSTREAM_PHANTOMS:-$root/.cache/phantoms-v1}
run=${LUNGSTREAM_TRAIN_RUN:-$root/.cache/train-demo}
if [[ ! -f "$data/manifest.csv" ]]; then
    "$bin" dataset phantoms --out "$data" --scans 300 --seed 20201123
fi

resume=()
if [[ -f "$run/state.json" ]]; then
    echo "resuming the run in $run (delete it to start again)" >&2
    resume=(--resume)
fi
"$bin" train --manifest "$data/manifest.csv" --out "$run" --config narrow \
    --holdout-centres northfield --epochs 40 --fine-epochs 3 --slices-per-scan 5 \
    --warmup-epochs 2 --warmup-patch-weight 1 --covid-on-diseased-top \
    --learning-rate 1e-3 --final-learning-rate 5e-5 --fine-learning-rate 1e-4 \
    --model-id lungstream-demo-narrow-phantom --research-only \
    --trained-on "300 synthetic chest CT phantoms (lungstream dataset phantoms --seed 20201123), centres riverside, hillcrest, lakeside and harbour; northfield held out" \
    --notes "Synthetic phantoms only: NOT FOR CLINICAL USE. Shows that the pipeline, the weak supervision and the reports work; it has never seen a real patient." \
    "${resume[@]}" "$@"

"$bin" evaluate --manifest "$run/test.csv" --model "$run/model.safetensors" --out "$run/eval-test"
"$bin" evaluate --manifest "$run/heldout.csv" --model "$run/model.safetensors" --out "$run/eval-heldout"
mkdir -p "$root/models"
cp "$run/model.safetensors" "$root/models/demo-narrow-phantom.safetensors"
echo "demo weights: models/demo-narrow-phantom.safetensors; evaluations: $run/eval-test, $run/eval-heldout"
