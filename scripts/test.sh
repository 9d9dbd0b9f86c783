#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run lint, types and the whole test suite.
# This is the README's test command and exactly what .ci/run executes.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: an open range would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e '.[train,dev]'
# Headless Chromium for the web widget's browser test (tests/test_gateway_browser.py), from
# Debian's packages; as root (CI) it is required, elsewhere the test skips without it.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
  fi
fi
if [ "$(id -u)" = 0 ]; then export KEFU_REQUIRE_BROWSER=1; fi
ruff check .
# The layer contracts (kefu/dev/layers.py): fails on a forbidden import or an import cycle.
python -m kefu.dev.layers
./scripts/typecheck.sh
# The kefu-node executable (its own build venv, no torch; ~1 min, reused when the sources did
# not change): prints size, cold start and RSS; tests/test_packaging.py smoke-tests it.
./packaging/build.sh --runs 2
# Two workers, whole files each (module fixtures such as the unpacked binary stay one per file).
pytest -q -n 2 --dist loadfile "$@"
