#!/usr/bin/env bash
# Creates .venv and installs the project into it: the CPU build of PyTorch first, then the
# package (with the extras named in $1, e.g. "test"). Idempotent: a stamp keyed by
# pyproject.toml skips the work when nothing changed.
#
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh test     # + test tools
#
# PyTorch: `pip install torch==2.13.0` takes the CPU build where pip's configured wheel folder
# has it (the project's machines). Elsewhere set TORCH_INDEX_URL, e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
# so pip does not fetch the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python 3.11+ needed ($python is $("$python" -V 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-${extras:-runtime}"
if [ -f "$stamp" ]; then exit 0; fi
echo "setup: installing into .venv (first run only; about a minute)" >&2
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then "${pip[@]}" torch==2.13.0 --index-url "$TORCH_INDEX_URL"; else "${pip[@]}" torch==2.13.0; fi
fi
"${pip[@]}" -c constraints.txt -e ".${extras:+[$extras]}"
touch "$stamp"
