#!/usr/bin/env bash
# Set up a virtualenv with the runtime and test dependencies, seed tiktoken's
# cache offline, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.test.txt
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}
.venv/bin/python tools/seed_tiktoken_cache.py "$TIKTOKEN_CACHE_DIR" >/dev/null
exec .venv/bin/python -m pytest -q "$@"
