#!/usr/bin/env bash
# The two models of the inductive benchmark (bench/inductive.py), trained with one recipe:
#   runs/inductive/heldout  on the FB15k-237 copy without the held-out entities
#   runs/inductive/seen     on the full FB15k-237 (the same entities seen in training)
# A smaller model than the shipped default (d=64, d_r=16) on a 45-minute budget each; the two
# run side by side on one CPU thread each (about 50 minutes on the 2-core CPU).
#
#   python bench/inductive.py prepare && bash scripts/train_inductive.sh
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${MINUTES:-45}
recipe=(--dim 64 --relation-dim 16 --batch-size 512 --seed 0 --epochs 100 --lr 0.003 --lr-decay 0.97
        --input-dropout 0.2 --hidden-dropout1 0.2 --hidden-dropout2 0.3 --patience 4 --max-minutes "$minutes" --threads 1)
.venv/bin/imf train --dataset runs/inductive/data "${recipe[@]}" --out runs/inductive/heldout --overwrite > runs/inductive/heldout.log 2>&1 &
.venv/bin/imf train --dataset fb15k-237 "${recipe[@]}" --out runs/inductive/seen --overwrite > runs/inductive/seen.log 2>&1 &
wait
