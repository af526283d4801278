#!/usr/bin/env bash
# Trains the bundled default model, artifacts/default: IMF on FB15k-237 with the text and
# numeric features (no real images exist offline for FB15k-237), then writes the compact
# serving bundle (int8 entity tables, float16 weights, no raw features; about 12 MB) with its
# validation and test metrics measured on exactly those weights.
#
#   bash scripts/train_default.sh             # about 60 minutes on 2 CPU cores
#   DEVICE=cuda bash scripts/train_default.sh # on a GPU
#
# The full-precision bundle stays in runs/default-full (gitignored). docs/benchmarks.md holds
# the output of the run that produced the committed bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
device=${DEVICE:-cpu}
.venv/bin/imf train --dataset fb15k-237 --out runs/default-full --overwrite \
  --epochs 100 --dim 128 --relation-dim 32 --batch-size 512 --lr 0.003 --lr-decay 0.97 \
  --input-dropout 0.2 --hidden-dropout1 0.2 --hidden-dropout2 0.3 \
  --max-minutes "${MAX_MINUTES:-55}" --patience 4 --seed 0 --device "$device" "$@"
.venv/bin/imf bundle compact runs/default-full --out artifacts/default --report-test --overwrite
