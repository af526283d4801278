#!/usr/bin/env bash
# The one command that runs the whole test suite (what CI runs): installs into .venv (the `test`
# extra: test tools and the feature encoders), installs redis-server when missing (the Redis
# integration tests start their own server on a free loopback port), then runs pytest. Extra
# arguments go to pytest.
#
# Day to day, once .venv exists, leave out the tests marked slow (the shipped model's full-split
# evaluation, the load campaign, real server processes, the browser, the containers):
#
#   .venv/bin/python -m pytest -m "not slow"      # about 80 s on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing redis-server" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >/dev/null
  else
    echo "test: redis-server is not installed; the Redis tests will be skipped (install it: apt-get install redis-server)" >&2
  fi
fi
# Headless Chromium + its driver for the explorer page's browser test (Debian's packages; no
# browser download exists offline). Only where they cannot be installed is the test skipped,
# with the reason in IMF_BROWSER_SKIP (printed by pytest -ra); otherwise a missing browser
# fails the run under CI.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing chromium and chromium-driver" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >/dev/null; then
      export IMF_BROWSER_SKIP="apt-get install chromium chromium-driver failed on this machine"
      echo "test: chromium could not be installed; the browser test will be skipped" >&2
    fi
  else
    export IMF_BROWSER_SKIP="not root or no apt-get: scripts/test.sh cannot install chromium here"
    echo "test: chromium is not installed; the browser test will be skipped (apt-get install chromium chromium-driver)" >&2
  fi
fi
exec .venv/bin/python -m pytest "$@"
