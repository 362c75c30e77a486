"""Blob add and fetch between two node processes on loopback, next to the raw stream rate.

    python benchmarks/blob_fetch.py [--mib 256]

Prints add MB/s (provider hashing + storing the file), fetch MB/s (second node fetching by
ticket, verified and committed), the bridge's raw one-stream MB/s measured in the same run,
the fetch/raw ratio, and the fetching node's peak RSS (VmHWM: the whole process, Python included).
"""

from __future__ import annotations

import os
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


def main(mib: int) -> None:
    size = mib << 20
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = work / "random.bin"
        with open(source, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        provider, fetcher = NodeProcess(work / "provider"), NodeProcess(work / "fetcher")
        try:
            rss_before = peak_rss_mb(fetcher.proc.pid)
            with httpx.Client(timeout=None) as http:
                started = time.perf_counter()
                added = http.post(
                    f"{provider.api}/blobs", json={"path": str(source)}, headers=provider.headers
                ).json()
                add_s = time.perf_counter() - started
                started = time.perf_counter()
                with http.stream(
                    "POST",
                    f"{fetcher.api}/blobs/fetch",
                    json={"ticket": added["ticket"]},
                    headers=fetcher.headers,
                ) as response:
                    last = [line for line in response.iter_lines() if line][-1]
                fetch_s = time.perf_counter() - started
            assert '"blob"' in last, last
            rss_peak = peak_rss_mb(fetcher.proc.pid)
        finally:
            provider.kill()
            fetcher.kill()
    bridge.install()
    raw = trio.run(measure, size)
    add, fetch = size / add_s / 1e6, size / fetch_s / 1e6
    print(f"blob of {mib} MiB, two node processes on loopback")
    print(f"  add            {add:8.1f} MB/s")
    print(f"  fetch          {fetch:8.1f} MB/s")
    print(f"  raw stream     {raw:8.1f} MB/s")
    print(f"  fetch / raw    {fetch / raw:8.2f}")
    print(
        f"  fetcher peak RSS {rss_peak:6.1f} MB (idle node before the fetch: {rss_before:.1f} MB)"
    )


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--mib", type=int, default=256)
    main(parser.parse_args().mib)
