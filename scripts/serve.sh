#!/usr/bin/env bash
# The one command from a fresh clone to a serving API: installs into .venv (first run), trains
# the bundled default model into artifacts/default when it is missing (FB15k-237, about
# 5 minutes on 2 CPU cores, with a progress bar), then serves it on http://127.0.0.1:8000.
# No Redis needed (an in-process cache stands in; set IMF_REDIS_URL to use Redis).
# Arguments go to `imf serve` (e.g. a bundle path); settings come from IMF_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/imf serve "$@"
