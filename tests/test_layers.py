"""Imports go down the layers and never round in a circle (ARCHITECTURE.md draws the layers).

Every `import` in `p2pnode/` and `tickets/` counts, at module level, inside functions and under
`TYPE_CHECKING` alike: a lazy or typing-only import still ties the lower layer to the higher one.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [  # low to high; a module belongs to the first pattern it matches, in this order
    [
        "tickets",
        "tickets.*",
        "p2pnode",
        "p2pnode.fsutil",
        "p2pnode.concurrency",
        "p2pnode.identity",
        "p2pnode.labels",
        "p2pnode.metrics",
        "p2pnode.apitoken",
        "p2pnode.ids",
    ],
    ["p2pnode.net", "p2pnode.net.*", "p2pnode.executors", "p2pnode.executors.*", "p2pnode.config"],
    ["p2pnode.blobs", "p2pnode.blobs.*", "p2pnode.membership", "p2pnode.join_protocol"],
    ["p2pnode.gossip", "p2pnode.gossip.*"],
    ["p2pnode.jobs", "p2pnode.jobs.*"],
    ["p2pnode.status", "p2pnode.node"],
    ["p2pnode.api", "p2pnode.api.*"],
    ["p2pnode.cli", "p2pnode.cli.*", "p2pnode.__main__"],
]

ALLOWED: list[tuple[str, str]] = []
"""(importer, imported) patterns that may break the rules, each with its reason; none today."""


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in ("p2pnode", "tickets"):
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module's imports of project modules (`from pkg import sub` counts as `pkg.sub`)."""
    known = modules(root)

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = module.split(".")[: None if path.name == "__init__.py" else -1]
                source = (
                    ".".join([*base[: len(base) - node.level + 1], *filter(None, [node.module])])
                    if node.level
                    else node.module or ""
                )
                targets.update(f"{source}.{alias.name}" for alias in node.names)
        graph[module] = {t for name in targets if (t := owner(name)) and t != module}
    return graph


def layer(module: str) -> int:
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and ARCHITECTURE.md)")


def allowed(importer: str, imported: str) -> bool:
    return any(fnmatch(importer, a) and fnmatch(imported, b) for a, b in ALLOWED)


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if layer(b) > layer(a) and not allowed(a, b)
    )


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, if there is any (depth-first search for a back edge)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if allowed(module, target):
                continue
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert upward_edges(import_graph(ROOT)) == []


def test_no_import_cycles() -> None:
    assert cycle(import_graph(ROOT)) is None


def test_the_check_sees_lazy_relative_and_typing_imports(tmp_path: Path) -> None:
    """A function-level import upward and a typing-only circle are both caught."""
    files = {
        "tickets/__init__.py": "",
        "p2pnode/__init__.py": "",
        "p2pnode/net/__init__.py": "",
        "p2pnode/net/dialer.py": "def f():\n    from p2pnode.membership import Member\n",
        "p2pnode/membership.py": "from .net import dialer\n",
        "p2pnode/gossip/__init__.py": "",
        "p2pnode/gossip/a.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p2pnode.gossip import b\n",
        "p2pnode/gossip/b.py": "import p2pnode.gossip.a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert upward_edges(graph) == ["p2pnode.net.dialer -> p2pnode.membership"]
    assert cycle(graph) in (
        ["p2pnode.gossip.a", "p2pnode.gossip.b", "p2pnode.gossip.a"],
        ["p2pnode.membership", "p2pnode.net.dialer", "p2pnode.membership"],
    )
