#!/usr/bin/env bash
# Fills wheels/ (gitignored), the folder the Dockerfile installs PyTorch from, with the CPU
# build of torch for the image's platform (CPython 3.11, linux x86_64).
#
#   scripts/container_wheels.sh [DEST]        # DEST defaults to wheels/ at the repository root
#
# Where the wheel comes from, first match wins:
#   1. $IMF_TORCH_WHEELS, a folder holding torch-*+cpu-cp311-*linux_x86_64.whl
#   2. pip's configured find-links folder: $PIP_FIND_LINKS, else `pip config get global.find-links`
#   3. /opt/wheels
# On a machine that has no such folder, download the wheel instead (about 190 MB, no CUDA):
#   pip download torch==2.13.0 --no-deps --only-binary=:all: \
#       --index-url https://download.pytorch.org/whl/cpu \
#       --platform manylinux_2_28_x86_64 --python-version 3.11 -d wheels
# Only a CPU build (a "+cpu" wheel) is accepted: the PyPI wheel of torch for Linux pulls the
# multi-GB CUDA libraries. The folder is copied into the build stage only, never into the
# final image. Idempotent: an identical wheel already in DEST is left alone.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$repo/wheels}
pattern='torch-*+cpu-cp311-cp311-*linux*_x86_64.whl'

candidates=()
[ -n "${IMF_TORCH_WHEELS:-}" ] && candidates+=("$IMF_TORCH_WHEELS")
links=${PIP_FIND_LINKS:-}
if [ -z "$links" ] && command -v pip >/dev/null 2>&1; then
  links=$(pip config get global.find-links 2>/dev/null || true)
fi
for l in $links; do candidates+=("${l#file://}"); done   # find-links may list several, space separated
candidates+=(/opt/wheels)

src=""
for dir in "${candidates[@]}"; do
  [ -d "$dir" ] || continue
  # the newest matching wheel of that folder
  src=$(find "$dir" -maxdepth 1 -name "$pattern" -print 2>/dev/null | sort -V | tail -n 1)
  [ -n "$src" ] && break
done
if [ -z "$src" ]; then
  cat >&2 <<EOF
container_wheels: no CPU torch wheel ($pattern) in: ${candidates[*]}
Download one into $dest with:
  pip download torch==2.13.0 --no-deps --only-binary=:all: --index-url https://download.pytorch.org/whl/cpu \\
      --platform manylinux_2_28_x86_64 --python-version 3.11 -d $dest
EOF
  exit 1
fi

mkdir -p "$dest"
target="$dest/$(basename "$src")"
if [ -f "$target" ] && cmp -s "$src" "$target"; then
  echo "container_wheels: $target is up to date" >&2
else
  # drop other torch wheels so the build cannot pick a different one
  find "$dest" -maxdepth 1 -name 'torch-*.whl' ! -name "$(basename "$src")" -delete
  cp "$src" "$target.tmp" && mv "$target.tmp" "$target"
  echo "container_wheels: copied $src -> $target" >&2
fi
echo "$target"
