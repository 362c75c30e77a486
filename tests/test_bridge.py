"""The trio bridge: payloads survive the patched send path, and cancellation leaves nothing
hanging."""

from __future__ import annotations

import os
import random

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


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_writer_copies_every_byte(kind: type) -> None:
    """The memmove writer must produce exactly the bytes the generated loop would."""
    bridge.install()
    rng = random.Random(7)
    for size in [0, 1, 3, 1000, 70_000]:
        payload = rng.randbytes(size)
        lowered = iroh_ffi._UniffiFfiConverterBytes.lower(kind(payload))
        assert iroh_ffi._UniffiFfiConverterBytes.lift(lowered) == payload


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


async def test_random_payloads_round_trip(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    server, client = endpoint_pair
    rng = random.Random(42)
    sizes = SIZES + [rng.randrange(0, 8 << 20) for _ in range(4)]
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
                    await bi.send().write_all(payload[offset : offset + (1 << 20)])
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
