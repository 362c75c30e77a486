"""Blob add against the disk's own speed, in one run on the same filesystem.

    python benchmarks/blob_add.py [--mib 256] [--runs 3]

Prints, for a file of random bytes already in the page cache: `dd conv=fsync` copying it (the
disk's speed for the same bytes), `p2pnode blob add` (the CLI streaming it to a node process,
which hashes, writes and fsyncs it), the API's path add (the node reads the file itself) and
`blob add --in-place` (hashing only, no copy), each the best of `--runs`, and each add's ratio
to dd.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402


def best(runs: int, once: Callable[[int], None]) -> float:
    """Shortest wall time of `runs` calls (each given its run number)."""
    times = []
    for run in range(runs):
        started = time.perf_counter()
        once(run)
        times.append(time.perf_counter() - started)
    return min(times)


def main(mib: int, runs: int) -> None:
    size = mib << 20
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = script.random_file(work / "random.bin", mib)
        node = NodeProcess(work / "node")
        try:
            with httpx.Client(timeout=None) as http:

                def forget(blob_hash: str) -> None:
                    url = f"{node.api}/blobs/{blob_hash}"
                    http.delete(url, params={"force": True}, headers=node.headers)

                def dd(run: int) -> None:
                    subprocess.run(
                        ["dd", f"if={source}", f"of={work / 'dd.out'}", "bs=8M", "conv=fsync"],
                        check=True,
                        capture_output=True,
                    )

                def cli_add(run: int) -> None:
                    out = node.cli("blob", "add", str(source)).stdout
                    forget(out.split("hash:", 1)[1].split()[0])

                def path_add(run: int) -> None:
                    added = http.post(
                        f"{node.api}/blobs", json={"path": str(source)}, headers=node.headers
                    ).json()
                    forget(added["blob"]["hash"])

                def in_place(run: int) -> None:
                    added = http.post(
                        f"{node.api}/blobs",
                        json={"path": str(source), "in_place": True},
                        headers=node.headers,
                    ).json()
                    forget(added["blob"]["hash"])

                dd_s = best(runs, dd)
                results = {
                    "blob add (CLI upload)": best(runs, cli_add),
                    "path add (API)": best(runs, path_add),
                    "blob add --in-place": best(runs, in_place),
                }
        finally:
            node.kill()
    rate = lambda seconds: size / seconds / 1e6  # noqa: E731
    print(f"blob add of {mib} MiB (page-cached source, best of {runs}), same filesystem")
    print(f"  {'dd conv=fsync':<24}{rate(dd_s):8.1f} MB/s")
    for name, seconds in results.items():
        print(f"  {name:<24}{rate(seconds):8.1f} MB/s   {dd_s / seconds:5.2f}x dd")


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    main(args.mib, args.runs)
