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
# TEST_WORKERS processes side by side (pytest-xdist): most tests wait on real subprocesses and servers, so
# more workers than cores pays; tests timed against a rate-limit window run one at a time (loadgroup).
# Extra arguments come last, so `-n 0` runs everything in this process.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-4}" --dist loadgroup "$@"
