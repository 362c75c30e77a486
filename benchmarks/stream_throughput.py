"""Loopback stream throughput through the trio bridge, with the send fix and without it, in one run.

    python benchmarks/stream_throughput.py [--mib 256] [--unpatched-mib 32]

The unpatched send path copies one byte per Python loop iteration (~7 MB/s), so by default it
moves a smaller payload; MB/s is comparable across sizes, and both runs share process and machine.
"""

from __future__ import annotations

import argparse
import os
import time

import iroh
import trio

from p2pnode.net import bridge

ALPN = b"p2pnode/bench/1"
CHUNK = 1 << 20


async def bind() -> iroh.Endpoint:
    return await iroh.Endpoint.bind(
        iroh.EndpointOptions(preset=iroh.preset_minimal(), bind_addr="127.0.0.1:0", alpns=[ALPN])
    )


async def measure(total: int) -> float:
    """Send `total` bytes client -> server on one stream; MB/s from first write to last read."""
    server, client = await bind(), await bind()
    payload = os.urandom(CHUNK)
    done = trio.Event()
    elapsed = 0.0

    async def receive() -> None:
        nonlocal elapsed
        incoming = await server.accept_next()
        connection = await (await incoming.accept()).connect()
        recv = (await connection.accept_bi()).recv()
        got = 0
        while chunk := await recv.read(CHUNK):
            got += len(chunk)
        elapsed = time.perf_counter() - started
        assert got == total, (got, total)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        connection = await client.connect(server.addr(), ALPN)
        bi = await connection.open_bi()
        started = time.perf_counter()
        for offset in range(0, total, CHUNK):
            await bi.send().write_all(payload[: min(CHUNK, total - offset)])
        await bi.send().finish()
        await done.wait()
        connection.close(0, b"done")
    await client.close()
    await server.close()
    return total / elapsed / 1e6


async def main(mib: int, unpatched_mib: int) -> None:
    bridge.install()
    patched = await measure(mib << 20)
    bridge.uninstall_send_fix()
    try:
        unpatched = await measure(unpatched_mib << 20)
    finally:
        bridge.reinstall_send_fix()
    print(f"{'send path':<24}{'MiB':>6}{'MB/s':>10}")
    print(f"{'bridge + memmove fix':<24}{mib:>6}{patched:>10.1f}")
    print(f"{'unpatched bindings':<24}{unpatched_mib:>6}{unpatched:>10.1f}")
    print(f"ratio fixed/unpatched: {patched / unpatched:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--unpatched-mib", type=int, default=32)
    args = parser.parse_args()
    trio.run(main, args.mib, args.unpatched_mib)
