#!/usr/bin/env bash
# Installs p2pnode into .venv (first run only) and starts a node on embedded defaults; extra args go to `p2pnode start`.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/p2pnode ]; then
  # First run: say what the wait is for, and let pip show its progress (on stderr: stdout is the node's).
  echo "start.sh: first run: installing p2pnode and its dependencies into .venv (takes about a minute)" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --disable-pip-version-check -e . >&2
fi
exec .venv/bin/p2pnode start "$@"
