"""CLI start-up: wall time of `p2pnode status` against a running node, next to bare Python.

    python benchmarks/cli.py [--runs 30]

Each run is a fresh process (what a person or a script pays per command); prints the median and
the slowest run, and the same for `python -c pass` as the floor. `python -X importtime -m p2pnode
status` shows where the time goes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402


def timed(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pnode-cli-") as tmp:
        node = NodeProcess(Path(tmp) / "node")
        try:
            command = ["--api", node.api, "--data", str(node.data_dir), "status"]
            status = timed([sys.executable, "-m", "p2pnode", *command], runs)
        finally:
            node.kill()
    floor = timed([sys.executable, "-c", "pass"], runs)
    print(f"{runs} runs each, one process per run")
    for label, times in (("p2pnode status", status), ("python -c pass", floor)):
        print(
            f"  {label:16} median {statistics.median(times) * 1e3:.0f} ms,"
            f" slowest {max(times) * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    main(args.runs)
