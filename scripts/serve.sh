#!/usr/bin/env bash
# The one command from a fresh clone to a serving API: installs into .venv (first run), then
# serves the shipped trained model (artifacts/default, committed; scripts/train_default.sh
# rebuilds it) on http://127.0.0.1:8000, ready seconds after the install. Never trains.
# No Redis needed (an in-process cache stands in; set IMF_REDIS_URL to use Redis).
# Arguments go to `imf serve` (e.g. a bundle path); settings come from IMF_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/imf serve "$@"
