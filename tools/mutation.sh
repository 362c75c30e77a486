#!/usr/bin/env bash
# Mutation testing of the trust checks (not part of ./test.sh; results and verdicts: docs/mutation.md).
# Only the functions that make trust decisions are mutated (a patch marks their lines), each module
# against only the test files that guard it, in a scratch copy of the tree so an interrupted run
# never leaves a mutant behind. Slow: run it on an idle machine.
#   tools/mutation.sh                      all five modules
#   tools/mutation.sh p2pnode/membership.py
# MUTATION_TIMEOUT caps each module's run (seconds, default 1800).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || { echo "error: run ./test.sh once first (it creates .venv)" >&2; exit 2; }
"$PY" -c "import mutmut, whatthepatch" 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check "mutmut[patch]==2.5.1"

# module -> "functions and classes to mutate | tests that guard them"
declare -A SCOPE=(
  [p2pnode/membership.py]="Membership.__init__,Membership.is_member,Membership.adopt,Membership.admit,proof,_load,JoinLimiter,handle_join,_verify_joiner,join | tests/test_trust_join.py tests/test_trust_access.py tests/test_trust_state.py::test_damaged_state_file_is_one_error_line_naming_it tests/test_trust_state.py::test_secrets_are_written_owner_only"
  [p2pnode/blobs/protocol.py]="Capabilities,BlobProvider.handle_stream,parse_header | tests/test_trust_access.py tests/test_blob_protocol.py"
  [p2pnode/net/endpoint.py]="Router,serve_streams,_guarded_stream | tests/test_trust_access.py tests/test_router.py"
  [p2pnode/gossip/envelope.py]="Envelope,validate_incoming | tests/test_gossip_envelope.py tests/test_trust_gossip.py"
  [p2pnode/blobs/blocks.py]="block_count,BlockList | tests/test_trust_blocks.py tests/test_blob_blocks.py tests/test_blob_protocol.py"
)
MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=(p2pnode/membership.py p2pnode/blobs/protocol.py p2pnode/net/endpoint.py p2pnode/gossip/envelope.py p2pnode/blobs/blocks.py)

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./data -cf - . | tar -C "$SCRATCH" -xf -
cd "$SCRATCH"  # `python -m pytest` puts the scratch copy first on sys.path, ahead of the editable install
for module in "${MODULES[@]}"; do
  [ -n "${SCOPE[$module]:-}" ] || { echo "error: no scope listed for $module" >&2; exit 2; }
  names=${SCOPE[$module]%% | *}
  tests=${SCOPE[$module]#* | }
  # A patch that "adds" exactly the named definitions: mutmut mutates only added lines.
  "$PY" - "$module" "$names" > scope.patch <<'PYEOF'
import ast, difflib, sys
from pathlib import Path

path, wanted = sys.argv[1], set(sys.argv[2].split(","))
source = Path(path).read_text().splitlines(keepends=True)
lines: set[int] = set()

def visit(node: ast.AST, prefix: str) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if name in wanted:
                wanted.discard(name)
                lines.update(range(min([child.lineno] + [d.lineno for d in child.decorator_list]), child.end_lineno + 1))
            visit(child, name + ".")

visit(ast.parse("".join(source)), "")
if wanted:
    sys.exit(f"error: {path} has no {', '.join(sorted(wanted))}")
rest = [line for number, line in enumerate(source, 1) if number not in lines]
sys.stdout.writelines(difflib.unified_diff(rest, source, path, path))
PYEOF
  echo "=== $module [$names] <- $tests"
  rm -f .mutmut-cache
  timeout "${MUTATION_TIMEOUT:-1800}" nice "$ROOT/.venv/bin/mutmut" run --paths-to-mutate "$module" --use-patch-file scope.patch \
    --tests-dir tests --runner "$PY -m pytest -x -q -p no:cacheprovider $tests" --simple-output --no-progress || true
  "$ROOT/.venv/bin/mutmut" results || true
  for id in $("$ROOT/.venv/bin/mutmut" result-ids survived 2>/dev/null); do
    "$ROOT/.venv/bin/mutmut" show "$id" || true
  done
done
