#!/usr/bin/env bash
# Mutation testing of the trust checks (not part of ./test.sh; results and verdicts: docs/mutation.md).
# Each trust module is mutated against only the test files that guard it, in a scratch copy of the
# tree, so an interrupted run never leaves a mutant behind. Slow: run it on an idle machine.
#   tools/mutation.sh                      all five modules
#   tools/mutation.sh p2pnode/membership.py
# MUTATION_TIMEOUT caps each module's run (seconds, default 1800).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "error: run ./test.sh once first (it creates .venv)" >&2; exit 2; }
"$PY" -c "import mutmut" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check "mutmut==2.5.1"

declare -A GUARDS=(
  [p2pnode/membership.py]="tests/test_trust_join.py tests/test_trust_access.py tests/test_trust_state.py"
  [p2pnode/blobs/protocol.py]="tests/test_trust_access.py tests/test_blob_protocol.py"
  [p2pnode/net/endpoint.py]="tests/test_trust_access.py tests/test_router.py"
  [p2pnode/gossip/envelope.py]="tests/test_gossip_envelope.py tests/test_trust_gossip.py"
  [p2pnode/blobs/blocks.py]="tests/test_blob_blocks.py tests/test_blob_protocol.py"
)
MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=(p2pnode/membership.py p2pnode/blobs/protocol.py p2pnode/net/endpoint.py p2pnode/gossip/envelope.py p2pnode/blobs/blocks.py)

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./data -cf - . | tar -C "$SCRATCH" -xf -
cd "$SCRATCH"  # `python -m pytest` puts the scratch copy first on sys.path, ahead of the editable install
for module in "${MODULES[@]}"; do
  [ -n "${GUARDS[$module]:-}" ] || { echo "error: no guarding tests listed for $module" >&2; exit 2; }
  echo "=== $module  <-  ${GUARDS[$module]}"
  rm -f .mutmut-cache
  timeout "${MUTATION_TIMEOUT:-1800}" nice "$ROOT/.venv/bin/mutmut" run --paths-to-mutate "$module" --tests-dir tests \
    --runner "$PY -m pytest -x -q -p no:cacheprovider ${GUARDS[$module]}" --simple-output --no-progress || true
  "$ROOT/.venv/bin/mutmut" results || true
  for id in $("$ROOT/.venv/bin/mutmut" result-ids survived 2>/dev/null); do
    "$ROOT/.venv/bin/mutmut" show "$id"
  done
done
