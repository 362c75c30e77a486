"""The trio bridge: payloads survive the patched send path, and cancellation leaves nothing
hanging."""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import iroh
import pytest
import trio
import trio.testing
from iroh import iroh_ffi

from p2pnode.net import bridge
from tests.conftest import TEST_ALPN, accept_connection, connect_pair

SIZES = [
    0,
    1,
    2,
    7,
    255,
    4096,
    65535,
    65536,
    65537,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    3_000_001,
    8 << 20,
]


def _mmapped(data: bytes) -> mmap.mmap:
    mapped = mmap.mmap(-1, max(1, len(data)))
    mapped[: len(data)] = data
    return mapped


def _every_other(data: bytes) -> memoryview:
    spread = bytearray(2 * len(data))
    spread[::2] = data
    return memoryview(spread)[::2]


BUFFER_KINDS: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview of bytes": memoryview,
    "memoryview of bytearray": lambda data: memoryview(bytearray(data)),
    "read-only slice at an offset": lambda data: memoryview(b"head" + data + b"tail")[4:-4],
    "slice of a reused bytearray": lambda data: memoryview(bytearray(data) + bytes(99))[
        : len(data)
    ],
    "mmap": lambda data: memoryview(_mmapped(data))[: len(data)],
    "array of 4-byte items": lambda data: array.array("I", data[: len(data) // 4 * 4]),
    "non-contiguous view": lambda data: _every_other(data),
}


@pytest.mark.parametrize("kind", BUFFER_KINDS)
def test_buffer_writer_copies_every_byte(kind: str) -> None:
    """The memmove writer must produce exactly the bytes the generated loop would, from any
    buffer a caller may hand a byte string argument."""
    bridge.install()
    rng = random.Random(7)
    for size in [0, 1, 3, 4, 1000, 4096, 70_000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1]:
        value = BUFFER_KINDS[kind](rng.randbytes(size))
        expected = memoryview(value).tobytes()
        lowered = iroh_ffi._UniffiFfiConverterBytes.lower(value)
        assert iroh_ffi._UniffiFfiConverterBytes.lift(lowered) == expected, (kind, size)


def test_lowering_a_buffer_makes_no_python_copy() -> None:
    """A block read into a reused buffer goes to Rust in one copy: no intermediate `bytes`."""
    bridge.install()
    block = bytearray(random.Random(9).randbytes(1 << 20))
    for value in (block, memoryview(block)[: 1 << 19]):
        tracemalloc.start()
        try:
            lowered = iroh_ffi._UniffiFfiConverterBytes.lower(value)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert iroh_ffi._UniffiFfiConverterBytes.lift(lowered) == bytes(value)
        assert peak < 64 * 1024, f"lowering {len(value)} bytes allocated {peak} bytes in Python"


_BUFFER_CYCLES = """
import resource, sys
from p2pnode.net import bridge
bridge.install()
def call():  # what a 1 MiB write or read allocates: RustBuffer, Vec, bytes; then frees
    held = [b"x" * (1 << 20) for _ in range(3)]
    held.clear()
call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(32):
    call()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (32 * 3))
"""


def test_payload_sized_buffers_are_reused_not_faulted_in() -> None:
    """After `install`, the codecs' per-call 1 MiB buffers come back from malloc's free memory
    instead of fresh zero-filled pages (glibc's adaptive thresholds alone: 163 page faults per
    MiB in this pattern). A fresh process, since the setting is process-wide."""
    if getattr(ctypes.CDLL(None), "mallopt", None) is None:
        pytest.skip("not glibc")
    result = subprocess.run(
        [sys.executable, "-c", _BUFFER_CYCLES],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    faults_per_mib = float(result.stdout)
    assert faults_per_mib < 8, f"{faults_per_mib:.0f} page faults per MiB"


def test_builder_writes_every_byte() -> None:
    """Converters that build buffers piece by piece (here a list of byte strings) go through
    the memmove builder write, after a length written by the generated code."""
    bridge.install()
    rng = random.Random(8)
    payloads = [rng.randbytes(size) for size in [0, 1, 3, 1000, 70_000]]
    lowered = iroh_ffi._UniffiFfiConverterSequenceBytes.lower(payloads)
    assert iroh_ffi._UniffiFfiConverterSequenceBytes.lift(lowered) == payloads


async def echo_server(endpoint: iroh.Endpoint) -> None:
    connection = await accept_connection(endpoint)
    while True:
        try:
            bi = await connection.accept_bi()
        except iroh.IrohError:
            return
        recv, send = bi.recv(), bi.send()
        while chunk := await recv.read(256 * 1024):
            await send.write_all(chunk)
        await send.finish()


async def read_all(recv: iroh.RecvStream, into: bytearray) -> None:
    while chunk := await recv.read(1 << 20):
        into.extend(chunk)


@pytest.mark.parametrize("reused_buffer", [False, True])
async def test_random_payloads_round_trip(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint], reused_buffer: bool
) -> None:
    """Payloads arrive intact, also when each chunk is a view of one buffer that is refilled as
    soon as its write returns (how the blob provider sends)."""
    server, client = endpoint_pair
    rng = random.Random(42)
    sizes = SIZES + [rng.randrange(0, 8 << 20) for _ in range(4)]
    buffer = bytearray(1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_server, server)
        connection = await client.connect(server.addr(), TEST_ALPN)
        for size in sizes:
            payload = rng.randbytes(size)
            bi = await connection.open_bi()
            received = bytearray()

            async with trio.open_nursery() as streams:
                streams.start_soon(read_all, bi.recv(), received)
                for offset in range(0, size, 1 << 20):
                    chunk = payload[offset : offset + (1 << 20)]
                    if reused_buffer:
                        buffer[: len(chunk)] = chunk
                        await bi.send().write_all(memoryview(buffer)[: len(chunk)])
                    else:
                        await bi.send().write_all(chunk)
                await bi.send().finish()
            assert bytes(received) == payload, f"payload of {size} bytes came back different"
        connection.close(0, b"done")
        nursery.cancel_scope.cancel()


async def test_cancelled_accept_leaves_endpoint_usable(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    server, client = endpoint_pair
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept_next)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    # A later accept still works: the cancelled Rust future was dropped, not left holding the queue.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.connect, server.addr(), TEST_ALPN)
        connection = await accept_connection(server)
        assert connection.remote_id().to_bytes() == client.id().to_bytes()


async def test_cancelled_read_then_data_still_flows(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    server, client = endpoint_pair
    server_conn, client_conn = await connect_pair(server, client)
    client_bi = await client_conn.open_bi()
    await client_bi.send().write_all(
        b"x"
    )  # a stream becomes visible to the peer with its first data
    recv = (await server_conn.accept_bi()).recv()
    assert await recv.read_exact(1) == b"x"
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(recv.read, 1024)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    payload = os.urandom(100_000)
    await client_bi.send().write_all(payload)
    await client_bi.send().finish()
    assert await recv.read_exact(len(payload)) == payload
    with trio.fail_after(5):  # shutdown must not hang on the dropped Rust future
        await client.close()


def test_bridge_refuses_unknown_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge.importlib.metadata, "version", lambda name: "1.3.0")
    with pytest.raises(bridge.BridgeError, match="supports iroh 1.2"):
        bridge._check_bindings()
