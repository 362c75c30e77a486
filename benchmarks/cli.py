"""CLI start-up: what every command pays before it does anything, next to bare Python.

    python benchmarks/cli.py [--runs 20] [--baseline DIR]

Runs `p2pnode --version`, `p2pnode --help`, `p2pnode status` and `p2pnode blob add` of a 1-byte
file (against a running node) and `python -c pass` (the floor), each a fresh process per run (what
a person or a script pays per command), and prints per command the median wall time and the
median CPU seconds of the process (user + system, from `wait4`: less moved by the load of other
processes than the wall time). One run of each comes first and is not counted: it writes Python's
bytecode caches, as a user's first run does (PYTHONDONTWRITEBYTECODE is dropped for the runs: with
it, every run would compile the project's modules again). `--baseline DIR` (a checkout of the code
before a change, e.g. a `git worktree` of main) runs DIR's CLI against the same node, the two
trees taking turns within each run, and prints the ratios. `python -X importtime -m p2pnode
status` shows where the time goes.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one process; `python -m p2pnode` imports from `cwd` first."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main(runs: int, baseline: Path | None) -> None:
    trees = {"this tree": ROOT} | ({"before": baseline.resolve()} if baseline else {})
    with tempfile.TemporaryDirectory(prefix="p2pnode-cli-") as tmp:
        one_byte = Path(tmp) / "one.bin"
        one_byte.write_bytes(b"1")
        node = NodeProcess(Path(tmp) / "node")
        try:
            api = ["--api", node.api, "--data", str(node.data_dir)]
            commands = {
                "--version": ["--version"],
                "--help": ["--help"],
                "status": [*api, "status"],
                "blob add (1 B)": [*api, "blob", "add", str(one_byte)],
            }
            cases = [("python -c pass", "", [sys.executable, "-c", "pass"])] + [
                (label, tree, [sys.executable, "-m", "p2pnode", *argv])
                for label, argv in commands.items()
                for tree in trees
            ]
            for _, tree, args in cases:  # writes the bytecode caches
                run_once(args, trees.get(tree, ROOT))
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(runs):
                for label, tree, args in cases:
                    results.setdefault((label, tree), []).append(
                        run_once(args, trees.get(tree, ROOT))
                    )
        finally:
            node.kill()
    load = os.getloadavg()[0]
    print(f"{runs} runs each, one process per run, load {load:.1f}; median wall / CPU")

    def medians(key: tuple[str, str]) -> tuple[float, float]:
        walls, cpus = zip(*results[key], strict=True)
        return statistics.median(walls), statistics.median(cpus)

    for (label, tree), _ in results.items():
        wall, cpu = medians((label, tree))
        line = f"  {label:16} {tree:10} {wall * 1e3:5.0f} ms  {cpu * 1e3:5.0f} ms CPU"
        if tree == "this tree" and baseline is not None:
            old_wall, old_cpu = medians((label, "before"))
            line += f"   before/now: {old_wall / wall:.2f}x wall, {old_cpu / cpu:.2f}x CPU"
        print(line)


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before a change")
    args = parser.parse_args()
    main(args.runs, args.baseline)
