"""Blob add and fetch between two node processes on loopback, next to the raw stream rate.

    python benchmarks/blob_fetch.py [--mib 256] [--runs 3] [--reference-python PATH [--anchors DIR]]

Prints add MB/s (provider hashing + storing the file), fetch MB/s (second node fetching by
ticket, verified and committed), the bridge's raw one-stream MB/s, the fetch/raw ratio, and the
fetching node's peak RSS (VmHWM: the whole process, Python included). Raw and fetch runs
alternate, `--runs` of each, and the medians are compared, so that a shared machine's load
weighs on both alike. With `--reference-python` (a python with iroh==0.35.0), iroh-blobs 0.35
(`../shared/anchors/blobs_iroh035_2proc.py`) is run in the same run, with its own add and fetch.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402
from benchmarks.stream_throughput import measure  # noqa: E402
from p2pnode.net import bridge  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main(mib: int, runs: int, reference_python: str | None, anchors: Path) -> None:
    size = mib << 20
    bridge.install()
    adds, fetches, raws, peaks = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = script.random_file(work / "random.bin", mib)
        for run in range(runs):
            raws.append(trio.run(measure, size))
            provider = NodeProcess(work / f"provider{run}")
            fetcher = NodeProcess(work / f"fetcher{run}")
            try:
                rss_before = peak_rss_mb(fetcher.proc.pid)
                with httpx.Client(timeout=None) as http:
                    started = time.perf_counter()
                    added = http.post(
                        f"{provider.api}/blobs",
                        json={"path": str(source)},
                        headers=provider.headers,
                    ).json()
                    adds.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    with http.stream(
                        "POST",
                        f"{fetcher.api}/blobs/fetch",
                        json={"ticket": added["ticket"]},
                        headers=fetcher.headers,
                    ) as response:
                        last = [line for line in response.iter_lines() if line][-1]
                    fetches.append(time.perf_counter() - started)
                assert '"blob"' in last, last
                peaks.append(peak_rss_mb(fetcher.proc.pid))
            finally:
                provider.kill()
                fetcher.kill()
    add = size / statistics.median(adds) / 1e6
    fetch = size / statistics.median(fetches) / 1e6
    raw = statistics.median(raws)
    each = lambda seconds: " ".join(f"{size / s / 1e6:.0f}" for s in seconds)  # noqa: E731
    print(f"blob of {mib} MiB, two node processes on loopback, median of {runs}")
    print(f"  add            {add:8.1f} MB/s")
    print(f"  fetch          {fetch:8.1f} MB/s   (runs: {each(fetches)})")
    print(f"  raw stream     {raw:8.1f} MB/s   (runs: {' '.join(f'{r:.0f}' for r in raws)})")
    print(f"  fetch / raw    {fetch / raw:8.2f}")
    print(
        f"  fetcher peak RSS {max(peaks):6.1f} MB (idle node before the fetch: {rss_before:.1f} MB)"
    )
    if reference_python:
        result = subprocess.run(
            [reference_python, str(anchors / "blobs_iroh035_2proc.py"), str(size)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(f"  reference: {result.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reference-python")
    parser.add_argument(
        "--anchors",
        type=Path,
        default=Path(__file__).resolve().parent.parent.parent / "shared" / "anchors",
        help="folder of the reference scripts (default: ../shared/anchors beside the repo)",
    )
    args = parser.parse_args()
    main(args.mib, args.runs, args.reference_python, args.anchors)
