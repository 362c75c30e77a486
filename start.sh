#!/usr/bin/env bash
# Installs p2pnode into .venv (first run only) and starts a node on embedded defaults; extra args go to `p2pnode start`.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/p2pnode ] || { "$PY" -m venv .venv && .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .; }
exec .venv/bin/p2pnode start "$@"
