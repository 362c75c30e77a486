#!/usr/bin/env bash
# Installs everything the tests need into .venv (Python 3.11+ and git are all it assumes), checks
# style and types, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The dashboard's browser test needs Debian's Chromium and chromedriver: installed here when we may
# (root with apt-get, as in CI), once; otherwise that one test is skipped and says why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
    echo "installing chromium and chromium-driver with apt-get (for the dashboard's browser test)"
    chromium_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }
    chromium_install || { apt-get update -qq >/dev/null 2>&1 && chromium_install; } \
        || echo "could not install chromium: the dashboard's browser test will be skipped"
fi
# Gates first: style (ruff) and types (mypy, strict) fail CI before any test runs.
.venv/bin/ruff check p2pnode tickets tests benchmarks
.venv/bin/ruff format --check p2pnode tickets tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
