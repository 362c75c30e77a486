#!/usr/bin/env bash
# Installs everything the tests need into .venv (Python 3.11+ and git are all it assumes), checks
# style and types, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Gates first: style (ruff) and types (mypy, strict) fail CI before any test runs.
.venv/bin/ruff check p2pnode tickets tests benchmarks
.venv/bin/ruff format --check p2pnode tickets tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
