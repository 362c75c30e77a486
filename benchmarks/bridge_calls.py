"""Per-call cost of the trio <-> iroh bridge: two endpoints in one process on loopback.

    python benchmarks/bridge_calls.py [--n 3000] [--mib 256] [--baseline DIR] [--no-floor]
                                      [--only ping rpc stream]

Scenarios (each after a warm-up on the same connection):
  ping    N round trips on one bi stream: write 100 B, read 100 B back (4 calls each)
  rpc     N control RPCs: open_bi + write + finish + read_to_end, served by accept_bi +
          read_to_end + write + finish (8 calls each)
  stream  `--mib` MiB one way in 1 MiB writes, read in 64 KiB and in 1 MiB reads

Each figure is per operation (a round trip, an RPC, a read), with `call` = `cpu` divided by the
async calls it makes: `wall` (perf_counter), `cpu` (process_time: the whole process, the
bindings' Rust threads included) and `py` (thread_time of the Python thread alone). Every
implementation runs in its own child process, one after another in the same run:
  this tree   trio through this tree's `p2pnode.net.bridge`
  baseline    the same through the bridge in `--baseline DIR` (e.g. a `git worktree` of main)
  floor       the bindings' native mode, plain asyncio, with only this tree's send fix (without
              it a send moves ~7 MB/s, DESIGN.md section 2): what the generated code costs alone
Load moves absolute figures; compare the rows of one run (and note `uptime`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import iroh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import script  # noqa: E402

ALPN = b"p2pnode/bench/1"
MESSAGE = b"m" * 100
WRITE_CHUNK = 1 << 20
SCENARIOS = ("ping", "rpc", "stream")
CALLS = {"ping": 4, "rpc": 8, "stream 64K": 1, "stream 1M": 1}
"""Async binding calls per operation (a stream's writes are spread over its reads)."""

Both = Callable[[Awaitable[Any], Awaitable[Any]], Awaitable[None]]
"""Run two coroutines concurrently and return when both finished (trio or asyncio)."""


async def bind() -> iroh.Endpoint:
    return await iroh.Endpoint.bind(
        iroh.EndpointOptions(preset=iroh.preset_minimal(), bind_addr="127.0.0.1:0", alpns=[ALPN])
    )


async def connect(both: Both, server: iroh.Endpoint, client: iroh.Endpoint) -> list[Any]:
    """[server side, client side] of one connection."""
    sides: list[Any] = [None, None]

    async def accept() -> None:
        incoming = await server.accept_next()
        sides[0] = await (await incoming.accept()).connect()

    async def dial() -> None:
        sides[1] = await client.connect(server.addr(), ALPN)

    await both(accept(), dial())
    return sides


class Meter:
    """Wall, process CPU and Python-thread CPU over a region."""

    def __enter__(self) -> Meter:
        self.start = (time.perf_counter(), time.process_time(), time.thread_time())
        return self

    def __exit__(self, *_: object) -> None:
        end = (time.perf_counter(), time.process_time(), time.thread_time())
        self.wall, self.cpu, self.py = (b - a for a, b in zip(self.start, end, strict=True))

    def per(self, ops: int) -> dict[str, float]:
        return {
            "wall": self.wall / ops * 1e6,
            "cpu": self.cpu / ops * 1e6,
            "py": self.py / ops * 1e6,
        }


async def ping(both: Both, server_conn: Any, client_conn: Any, n: int) -> dict[str, float]:
    bi = await client_conn.open_bi()
    send, recv = bi.send(), bi.recv()
    await send.write_all(MESSAGE)
    peer = await server_conn.accept_bi()
    peer_send, peer_recv = peer.send(), peer.recv()
    assert await peer_recv.read_exact(len(MESSAGE)) == MESSAGE
    await peer_send.write_all(MESSAGE)
    await recv.read_exact(len(MESSAGE))

    async def client(rounds: int) -> None:
        for _ in range(rounds):
            await send.write_all(MESSAGE)
            await recv.read_exact(len(MESSAGE))

    async def serve(rounds: int) -> None:
        for _ in range(rounds):
            await peer_recv.read_exact(len(MESSAGE))
            await peer_send.write_all(MESSAGE)

    await both(client(n // 10), serve(n // 10))
    with Meter() as meter:
        await both(client(n), serve(n))
    return meter.per(n)


async def rpc(both: Both, server_conn: Any, client_conn: Any, n: int) -> dict[str, float]:
    async def client(rounds: int) -> None:
        for _ in range(rounds):
            bi = await client_conn.open_bi()
            send = bi.send()
            await send.write_all(MESSAGE)
            await send.finish()
            assert len(await bi.recv().read_to_end(4096)) == len(MESSAGE)

    async def serve(rounds: int) -> None:
        for _ in range(rounds):
            bi = await server_conn.accept_bi()
            await bi.recv().read_to_end(4096)
            send = bi.send()
            await send.write_all(MESSAGE)
            await send.finish()

    await both(client(n // 10), serve(n // 10))
    with Meter() as meter:
        await both(client(n), serve(n))
    return meter.per(n)


async def stream(
    both: Both, server_conn: Any, client_conn: Any, total: int, read_size: int
) -> dict[str, float]:
    payload = os.urandom(WRITE_CHUNK)
    reads = 0

    async def client() -> None:
        send = (await client_conn.open_bi()).send()
        for offset in range(0, total, WRITE_CHUNK):
            await send.write_all(payload[: min(WRITE_CHUNK, total - offset)])
        await send.finish()

    async def serve() -> None:
        nonlocal reads
        recv = (await server_conn.accept_bi()).recv()
        got = 0
        while chunk := await recv.read(read_size):
            got += len(chunk)
            reads += 1
        assert got == total, (got, total)

    with Meter() as meter:
        await both(client(), serve())
    result = meter.per(reads)
    result["mb_s"] = total / meter.wall / 1e6
    return result


async def measure(both: Both, n: int, mib: int, only: list[str]) -> dict[str, dict[str, float]]:
    server, client = await bind(), await bind()
    server_conn, client_conn = await connect(both, server, client)
    results: dict[str, dict[str, float]] = {}
    if "ping" in only:
        results["ping"] = await ping(both, server_conn, client_conn, n)
    if "rpc" in only:
        results["rpc"] = await rpc(both, server_conn, client_conn, n)
    if "stream" in only:
        for label, size in (("stream 64K", 64 << 10), ("stream 1M", 1 << 20)):
            results[label] = await stream(both, server_conn, client_conn, mib << 20, size)
    client_conn.close(0, b"done")
    await client.close()
    await server.close()
    return results


def run_trio(n: int, mib: int, only: list[str]) -> dict[str, dict[str, float]]:
    import trio

    from p2pnode.net import bridge

    bridge.install()

    async def both(a: Awaitable[Any], b: Awaitable[Any]) -> None:
        async def run(c: Awaitable[Any]) -> None:
            await c

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, a)
            nursery.start_soon(run, b)

    return trio.run(measure, both, n, mib, only)


def run_asyncio(n: int, mib: int, only: list[str]) -> dict[str, dict[str, float]]:
    import asyncio

    from p2pnode.net import bridge

    bridge.reinstall_send_fix()  # the send fix only: the loop is asyncio's own

    async def both(a: Awaitable[Any], b: Awaitable[Any]) -> None:
        await asyncio.gather(a, b)

    return asyncio.run(measure(both, n, mib, only))


def child(args: Any) -> None:
    """Measure in this process and print the results as one JSON line."""
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    run = run_trio if args.child == "trio" else run_asyncio
    print(json.dumps(run(args.n, args.mib, args.only)))


def spawn(args: Any, kind: str, src: Path | None) -> dict[str, dict[str, float]]:
    command = [sys.executable, __file__, "--child", kind, "--n", str(args.n)]
    command += ["--mib", str(args.mib), "--only", *args.only]
    if src is not None:
        command += ["--src", str(src)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, dict[str, float]] = json.loads(out.splitlines()[-1])
    return result


def main(args: Any) -> None:
    here = Path(__file__).resolve().parent.parent
    runs = {"this tree": spawn(args, "trio", here)}
    if args.baseline is not None:
        runs["baseline"] = spawn(args, "trio", args.baseline)
    if not args.no_floor:
        runs["floor"] = spawn(args, "asyncio", here)
    print(f"load: {os.getloadavg()[0]:.2f}; n={args.n}, stream {args.mib} MiB; microseconds")
    print(f"{'scenario':<12}{'impl':<11}{'wall/op':>9}{'cpu/op':>9}{'py/op':>9}{'cpu/call':>10}")
    for scenario in runs["this tree"]:
        for name, results in runs.items():
            r = results[scenario]
            extra = f"{r['mb_s']:>9.0f} MB/s" if "mb_s" in r else ""
            cpu_call = r["cpu"] / CALLS[scenario]
            print(
                f"{scenario:<12}{name:<11}{r['wall']:>9.1f}{r['cpu']:>9.1f}{r['py']:>9.1f}"
                f"{cpu_call:>10.1f}{extra}"
            )
        if "baseline" in runs:
            ratio = runs["baseline"][scenario]["cpu"] / runs["this tree"][scenario]["cpu"]
            print(f"{'':<12}baseline/this tree cpu: {ratio:.2f}x")


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--n", type=int, default=3000, help="round trips and RPCs")
    parser.add_argument("--mib", type=int, default=256, help="size of each one-way stream")
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to measure side by side")
    parser.add_argument("--no-floor", action="store_true", help="skip the plain-asyncio run")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--child", choices=("trio", "asyncio"), help=script.argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=script.argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child(parsed)
    else:
        main(parsed)
