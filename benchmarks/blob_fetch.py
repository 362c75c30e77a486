"""Blob add and fetch between two node processes on loopback, next to the raw stream rate.

    python benchmarks/blob_fetch.py [--mib 256] [--runs 3] [--baseline DIR]
                                    [--reference-python PATH [--anchors DIR]]

Prints add MB/s (provider hashing + storing the file), fetch MB/s (second node fetching by
ticket, verified and committed), the raw one-stream MB/s through the bridge, the fetch/raw
ratio, the CPU seconds each side spent (all threads of the process, Rust's included: a measure
that load moves less than wall time), each side's page faults per MiB (fresh memory touched: a
count load does not move), and the fetching node's peak RSS (VmHWM: the whole process, Python
included).

The raw stream is measured two ways: between two processes, as a fetch runs (the sender writes
and the receiver reads in the chunk sizes the provider and the fetcher use; timed from the first
write until the receiver acknowledges the last byte), which is the baseline the ratio uses; and
with both ends in one process (`stream_throughput.py`), for comparison with earlier figures.
Raw and fetch runs alternate, `--runs` of each, and the medians are compared, so that a shared
machine's load weighs on both alike. `--baseline DIR` also runs fetches with the p2pnode sources
in DIR (e.g. a `git worktree` of main) in each round. With `--reference-python` (a python with
iroh==0.35.0), iroh-blobs 0.35 (`../shared/anchors/blobs_iroh035_2proc.py`) is run in the same
run, with its own add and fetch.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402
from benchmarks.stream_throughput import ALPN, bind, measure  # noqa: E402
from p2pnode.blobs.blocks import BLOCK_SIZE  # noqa: E402
from p2pnode.net import bridge  # noqa: E402
from p2pnode.net.addr import PeerAddr  # noqa: E402
from p2pnode.net.framing import read_exact  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def page_faults() -> int:
    """Minor page faults of this process so far: fresh memory touched, a load-independent cost
    (each is a zero-filled page the kernel maps in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def raw_receive(size: int) -> None:
    """The receiving process of the two-process raw stream: prints its address, reads `size`
    bytes a block per read as the fetcher reads, acknowledges with one byte, prints its CPU
    seconds."""
    endpoint = await bind()
    print(PeerAddr.from_endpoint(endpoint.addr(), None).model_dump_json(), flush=True)
    incoming = await endpoint.accept_next()
    assert incoming is not None
    connection = await (await incoming.accept()).connect()
    bi = await connection.accept_bi()
    started, faults = cpu_seconds(), page_faults()
    for offset in range(0, size, BLOCK_SIZE):
        await read_exact(bi.recv(), min(BLOCK_SIZE, size - offset))
    await bi.send().write_all(b"k")
    await bi.send().finish()
    print(
        json.dumps({"cpu_s": cpu_seconds() - started, "faults": page_faults() - faults}),
        flush=True,
    )
    with trio.move_on_after(10):
        await connection.closed()
    await endpoint.close()


async def raw_send(size: int, receiver: PeerAddr) -> tuple[float, float, int]:
    """Send `size` bytes a block per write, as the provider writes: (seconds until the receiver
    has them all, CPU seconds and page faults of this process meanwhile)."""
    endpoint = await bind()
    connection = await endpoint.connect(receiver.to_endpoint(), ALPN)
    bi = await connection.open_bi()
    payload = os.urandom(BLOCK_SIZE)
    started, cpu, faults = time.perf_counter(), cpu_seconds(), page_faults()
    for offset in range(0, size, BLOCK_SIZE):
        await bi.send().write_all(payload[: min(BLOCK_SIZE, size - offset)])
    await bi.send().finish()
    await read_exact(bi.recv(), 1)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    faults = page_faults() - faults
    connection.close(0, b"done")
    await endpoint.close()
    return elapsed, cpu, faults


class RawRun:
    """One raw stream from this process to another: MB/s, and each side's CPU seconds and page
    faults."""

    def __init__(self, size: int) -> None:
        receiver = subprocess.Popen(
            [sys.executable, __file__, "--raw-receive", str(size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert receiver.stdout is not None
        try:
            addr = PeerAddr.model_validate_json(receiver.stdout.readline())
            seconds, self.send_cpu, self.send_faults = trio.run(raw_send, size, addr)
            received = json.loads(receiver.stdout.readline())
        finally:
            receiver.wait(timeout=30)
        self.rate = size / seconds / 1e6
        self.receive_cpu, self.receive_faults = received["cpu_s"], received["faults"]


@contextlib.contextmanager
def sources(folder: Path | None) -> Iterator[None]:
    """Start node processes on the p2pnode sources in `folder` (`python -m p2pnode` imports from
    its working folder first); this tree's when None."""
    here = Path.cwd()
    os.chdir(folder or Path(__file__).resolve().parent.parent)
    try:
        yield
    finally:
        os.chdir(here)


class FetchRun:
    """One add and one fetch between two fresh node processes. The fetching node has answered
    one API call first, as a running node has: FastAPI builds its routes' state on the first
    request (~0.1 s of CPU), which is no part of a fetch."""

    def __init__(self, work: Path, name: str, source: Path, code: Path | None) -> None:
        with sources(code):
            provider = NodeProcess(work / f"provider-{name}")
            fetcher = NodeProcess(work / f"fetcher-{name}")
        try:
            with httpx.Client(timeout=None) as http:
                http.get(f"{fetcher.api}/status", headers=fetcher.headers).raise_for_status()
                self.idle_rss = peak_rss_mb(fetcher.proc.pid)
                started = time.perf_counter()
                added = http.post(
                    f"{provider.api}/blobs", json={"path": str(source)}, headers=provider.headers
                ).json()
                self.add_s = time.perf_counter() - started
                started = time.perf_counter()
                cpu = process_cpu(fetcher), process_cpu(provider)
                faults = process_faults(fetcher), process_faults(provider)
                with http.stream(
                    "POST",
                    f"{fetcher.api}/blobs/fetch",
                    json={"ticket": added["ticket"]},
                    headers=fetcher.headers,
                ) as response:
                    last = [line for line in response.iter_lines() if line][-1]
                self.fetch_s = time.perf_counter() - started
                self.cpu_s = process_cpu(fetcher) - cpu[0]
                self.provider_cpu_s = process_cpu(provider) - cpu[1]
                self.faults = process_faults(fetcher) - faults[0]
                self.provider_faults = process_faults(provider) - faults[1]
            assert '"blob"' in last, last
            self.peak_rss = peak_rss_mb(fetcher.proc.pid)
        finally:
            provider.kill()
            fetcher.kill()


def _stat(node: NodeProcess) -> list[str]:
    """The fields of /proc/PID/stat after the command name, from the process state on."""
    return Path(f"/proc/{node.proc.pid}/stat").read_text().rpartition(")")[2].split()


def process_cpu(node: NodeProcess) -> float:
    """CPU seconds the node process has used (all its threads, Rust's included)."""
    fields = _stat(node)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_faults(node: NodeProcess) -> int:
    """Minor page faults of the node process so far (see `page_faults`)."""
    return int(_stat(node)[7])


def default_anchors() -> Path:
    """`shared/anchors` in the nearest folder above the repo that has one (beside /work/main,
    or beside /work/wt when this is a worktree there)."""
    repo = Path(__file__).resolve().parent.parent
    for folder in repo.parents:
        if (folder / "shared" / "anchors").is_dir():
            return folder / "shared" / "anchors"
    return repo.parent / "shared" / "anchors"


def main(
    mib: int, runs: int, baseline: Path | None, reference_python: str | None, anchors: Path
) -> None:
    size = mib << 20
    bridge.install()
    raws_one: list[float] = []
    raws: list[RawRun] = []
    fetches: list[FetchRun] = []
    befores: list[FetchRun] = []
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = script.random_file(work / "random.bin", mib)
        for run in range(runs):
            raws_one.append(trio.run(measure, size))
            raws.append(RawRun(size))
            if baseline is not None:
                befores.append(FetchRun(work, f"before{run}", source, baseline))
            fetches.append(FetchRun(work, f"{run}", source, None))
    mbs = lambda seconds: size / seconds / 1e6  # noqa: E731
    rates = lambda values: " ".join(f"{v:.0f}" for v in values)  # noqa: E731
    fetch = mbs(statistics.median(r.fetch_s for r in fetches))
    raw = statistics.median(r.rate for r in raws)
    load = os.getloadavg()[0]
    print(f"blob of {mib} MiB, two node processes on loopback, median of {runs} (load {load:.1f})")
    print(f"  add              {mbs(statistics.median(r.add_s for r in fetches)):8.1f} MB/s")
    per_mib = lambda faults: statistics.median(faults) / mib  # noqa: E731
    cpus = lambda runs: (  # noqa: E731
        f"CPU fetcher {statistics.median(r.cpu_s for r in runs):.2f} s, "
        f"provider {statistics.median(r.provider_cpu_s for r in runs):.2f} s; page faults per "
        f"MiB fetcher {per_mib(r.faults for r in runs):.0f}, "
        f"provider {per_mib(r.provider_faults for r in runs):.0f}"
    )
    print(
        f"  fetch            {fetch:8.1f} MB/s   (runs: {rates(mbs(r.fetch_s) for r in fetches)}; "
        f"{cpus(fetches)})"
    )
    if befores:
        before = mbs(statistics.median(r.fetch_s for r in befores))
        print(
            f"  fetch, baseline  {before:8.1f} MB/s   "
            f"(runs: {rates(mbs(r.fetch_s) for r in befores)}; {cpus(befores)}; peak RSS "
            f"{max(r.peak_rss for r in befores):.1f} MB)"
        )
    print(
        f"  raw, 2 processes {raw:8.1f} MB/s   (runs: {rates(r.rate for r in raws)}; CPU "
        f"receiver {statistics.median(r.receive_cpu for r in raws):.2f} s, sender "
        f"{statistics.median(r.send_cpu for r in raws):.2f} s; page faults per MiB receiver "
        f"{per_mib(r.receive_faults for r in raws):.0f}, sender "
        f"{per_mib(r.send_faults for r in raws):.0f}; {BLOCK_SIZE >> 10} KiB writes, "
        f"{BLOCK_SIZE >> 10} KiB reads)"
    )
    print(
        f"  raw, 1 process   {statistics.median(raws_one):8.1f} MB/s   "
        f"(runs: {rates(raws_one)}; stream_throughput.py)"
    )
    print(f"  fetch / raw      {fetch / raw:8.2f}   (raw between two processes)")
    if befores:
        print(f"  fetch / baseline {fetch / before:8.2f}")
    print(
        f"  fetcher peak RSS {max(r.peak_rss for r in fetches):6.1f} MB "
        f"(idle node before the fetch: {fetches[-1].idle_rss:.1f} MB)"
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
    if sys.argv[1:2] == ["--raw-receive"]:
        bridge.install()
        trio.run(raw_receive, int(sys.argv[2]))
        sys.exit()
    parser = script.parser(__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to fetch with as well")
    parser.add_argument("--reference-python")
    parser.add_argument(
        "--anchors",
        type=Path,
        default=default_anchors(),
        help="folder of the reference scripts (default: shared/anchors beside the repo or the "
        "folder of worktrees it is in)",
    )
    args = parser.parse_args()
    main(args.mib, args.runs, args.baseline, args.reference_python, args.anchors)
