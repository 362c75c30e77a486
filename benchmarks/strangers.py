"""What strangers parking half-sent frames on the open join protocol cost a node, while a member
fetches.

    python benchmarks/strangers.py [--streams 2000] [--ids 100] [--frames 8192:4096,262144:131072]

A provider node runs in its own process; a member node (another process) has joined it. From
this process `--ids` strangers (fresh ids, as an attacker would mint them) each connect on the
join protocol and open `--streams / --ids` streams, each sent a frame header declaring
DECLARED bytes and SENT of them, then nothing. While they are parked, the member fetches a
16 MiB blob from the provider. For each DECLARED:SENT of `--frames` (a fresh pair of nodes each),
prints the provider's RSS growth (current and peak), how many streams the strangers got through,
and how long the member's fetch took.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import iroh
import psutil
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import bind_loopback  # noqa: E402
from tests.nodeproc import NodeProcess  # noqa: E402

import tickets  # noqa: E402
from benchmarks import script  # noqa: E402
from p2pnode.membership import JOIN_ALPN  # noqa: E402
from p2pnode.net.addr import PeerAddr  # noqa: E402

OPEN_TIMEOUT_S = (
    5.0  # a stream QUIC will not let a stranger open (no credit) is given up after this
)


@dataclass
class Parked:
    sent: int = 0  # streams the strangers opened and sent a half frame on (the node may reset them)


async def _stranger(
    endpoint: iroh.Endpoint,
    target: iroh.EndpointAddr,
    streams: int,
    frame: bytes,
    parked: Parked,
    done: trio.Semaphore,
) -> None:
    keep: list[iroh.BiStream] = []
    try:
        connection = await endpoint.connect(target, JOIN_ALPN)
    except iroh.IrohError:
        done.release()
        return
    with trio.move_on_after(OPEN_TIMEOUT_S):
        for _ in range(streams):
            try:
                bi = await connection.open_bi()
                await bi.send().write_all(frame)
            except iroh.IrohError:
                break  # the node closed the connection: refused past the caps
            keep.append(bi)
            parked.sent += 1
    done.release()
    await trio.sleep_forever()  # hold every stream open, never finishing a frame


@asynccontextmanager
async def parked_half_frames(
    target: PeerAddr, *, ids: int, streams: int, declared: int, sent: int
) -> AsyncIterator[Parked]:
    """Strangers parking `streams` half-sent frames in all on `target`'s join protocol, until
    exit."""
    frame = struct.pack(">I", declared) + b"{" * sent
    parked = Parked()
    endpoints = [await bind_loopback([JOIN_ALPN]) for _ in range(ids)]
    done = trio.Semaphore(0)
    try:
        async with trio.open_nursery() as nursery:
            for endpoint in endpoints:
                nursery.start_soon(
                    _stranger, endpoint, target.to_endpoint(), streams // ids, frame, parked, done
                )
            for _ in endpoints:
                await done.acquire()
            yield parked
            nursery.cancel_scope.cancel()
    finally:
        for endpoint in endpoints:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await endpoint.close()


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, in MB."""
    info = psutil.Process(pid).memory_full_info()
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    return info.rss / 1e6, peak / 1e6


@dataclass
class Measurement:
    rss_before_mb: float
    rss_during_mb: float
    rss_peak_mb: float
    streams_sent: int
    refused_connections: int
    attack_s: float
    fetch_s: float


async def measure(streams: int, ids: int, declared: int, sent: int) -> Measurement:
    """Run the scenario of the module docstring; raises if the member could not fetch."""
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = work / "blob.bin"
        source.write_bytes(bytes(range(256)) * (1 << 16))  # 16 MiB
        provider = NodeProcess(work / "provider")
        member = NodeProcess(work / "member", "--join", provider.ticket)
        try:
            async with httpx.AsyncClient(timeout=None) as http:
                added = (
                    await http.put(
                        f"{provider.api}/blobs",
                        content=source.read_bytes(),
                        headers={**provider.headers, "Content-Type": "application/octet-stream"},
                    )
                ).json()
                before, _ = rss_mb(provider.proc.pid)
                target = PeerAddr.from_ticket(tickets.parse_join(provider.ticket).node)
                started = time.perf_counter()
                async with parked_half_frames(
                    target, ids=ids, streams=streams, declared=declared, sent=sent
                ) as parked:
                    attack_s = time.perf_counter() - started
                    started = time.perf_counter()
                    async with http.stream(
                        "POST",
                        f"{member.api}/blobs/fetch",
                        json={"ticket": added["ticket"]},
                        headers=member.headers,
                    ) as response:
                        last = [line async for line in response.aiter_lines() if line][-1]
                    fetch_s = time.perf_counter() - started
                    current, peak = rss_mb(provider.proc.pid)
                    refused = (
                        await http.get(f"{provider.api}/status", headers=provider.headers)
                    ).json()["refused_connections"]
            if '"blob"' not in last:
                raise RuntimeError(f"the member's fetch failed: {last}")
        finally:
            provider.kill()
            member.kill()
    return Measurement(before, current, peak, parked.sent, refused, attack_s, fetch_s)


async def run(streams: int, ids: int, declared: int, sent: int) -> None:
    m = await measure(streams, ids, declared, sent)
    print(
        f"strangers: {ids} ids, {streams} streams attempted,"
        f" each a {declared}-byte frame header and {sent} bytes"
    )
    print(
        f"streams opened and sent before the node reset them or the connection {m.streams_sent}; "
        f"connections the node refused {m.refused_connections}; attack set up in {m.attack_s:.1f} s"
    )
    print(
        f"provider RSS before {m.rss_before_mb:.1f} MB; during the attack {m.rss_during_mb:.1f} MB"
        f" (+{m.rss_during_mb - m.rss_before_mb:.1f} MB), "
        f"peak {m.rss_peak_mb:.1f} MB (+{m.rss_peak_mb - m.rss_before_mb:.1f} MB)"
    )
    print(f"member fetched 16 MiB from the provider meanwhile in {m.fetch_s:.2f} s")


def main() -> None:
    parser = script.parser(__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument(
        "--frames",
        default="8192:4096,262144:131072",
        help="DECLARED:SENT,... (the join limit is 8192)",
    )
    args = parser.parse_args()
    for frame in args.frames.split(","):
        declared, sent = (int(n) for n in frame.split(":"))
        trio.run(run, args.streams, args.ids, declared, sent)


if __name__ == "__main__":
    main()
