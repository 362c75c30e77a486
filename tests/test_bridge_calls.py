"""The bridge's call path: ready results complete without a wakeup yet stay trio checkpoints,
Rust threads' continuations are drained in batches, and cancelled calls leave nothing behind."""

from __future__ import annotations

import iroh
import pytest
import trio
import trio.testing

from p2pnode.net import bridge
from tests.conftest import connect_pair


async def open_stream(
    server: iroh.Endpoint, client: iroh.Endpoint
) -> tuple[iroh.SendStream, iroh.RecvStream]:
    """A bi stream the server side has accepted: (client's send, server's recv)."""
    server_conn, client_conn = await connect_pair(server, client)
    bi = await client_conn.open_bi()
    await bi.send().write_all(b"!")  # a stream becomes visible to the peer with its first data
    recv = (await server_conn.accept_bi()).recv()
    assert await recv.read_exact(1) == b"!"
    return bi.send(), recv


class Counting:
    """Counts what goes through the inbox: continuations from outside the poll, and drains."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.posts = self.drains = 0
        post, drain = bridge._Inbox.post, bridge._Inbox._drain

        def counted_post(inbox: bridge._Inbox, poll: bridge._Poll, code: int) -> None:
            self.posts += 1
            post(inbox, poll, code)

        def counted_drain(inbox: bridge._Inbox) -> None:
            self.drains += 1
            drain(inbox)

        monkeypatch.setattr(bridge._Inbox, "post", counted_post)
        monkeypatch.setattr(bridge._Inbox, "_drain", counted_drain)


async def test_ready_call_completes_without_wakeup(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes with window to spare and reads of data already here are answered inside the poll:
    no continuation crosses threads, no task parks."""
    send, recv = await open_stream(*endpoint_pair)
    await send.write_all(b"y" * 1000)  # one packet: once its first 100 bytes are read, all are
    with trio.fail_after(5):
        assert await recv.read_exact(100) == b"y" * 100
    counting = Counting(monkeypatch)
    for _ in range(100):
        await send.write_all(b"z" * 100)
    for _ in range(9):
        assert await recv.read_exact(100) == b"y" * 100
    assert counting.posts == 0


async def test_ready_call_is_still_a_schedule_point(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    send, _recv = await open_stream(*endpoint_pair)
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        # Trio runs a batch of runnable tasks in random order: `other` runs in the batch after
        # our first yield, before or after us, and surely before the batch after our second.
        await send.write_all(b"ready at once")
        await send.write_all(b"and again")
        assert ran.is_set(), "ready calls must still let other tasks run"


async def test_call_failing_at_once_is_still_a_schedule_point(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    """A call whose error is there inside the poll (a write after finish) yields too, as
    trio's own socket operations do when they raise: a loop of failing calls starves nobody."""
    send, _recv = await open_stream(*endpoint_pair)
    await send.finish()
    ran = trio.Event()

    async def other() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(2):  # as above: two schedule points let `other` run
            with pytest.raises(iroh.IrohError):
                await send.write_all(b"after finish")
        assert ran.is_set(), "failing calls must still let other tasks run"


async def test_cancelled_caller_starts_no_rust_call(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    """A call made in a cancelled scope raises before the Rust call runs: nothing is sent."""
    send, recv = await open_stream(*endpoint_pair)
    with trio.CancelScope() as scope:
        scope.cancel()
        await send.write_all(b"lost")
    assert scope.cancelled_caught
    await send.write_all(b"kept")
    await send.finish()
    with trio.fail_after(5):
        assert await recv.read_to_end(1024) == b"kept"


async def test_thousands_of_concurrent_calls_across_two_endpoints(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 streams x 20 round trips at once: every byte arrives in order, every waiting task is
    woken, and continuations that arrive together share a drain."""
    server, client = endpoint_pair
    server_conn, client_conn = await connect_pair(server, client)
    streams, rounds = 100, 20
    counting = Counting(monkeypatch)

    async def serve_one(bi: iroh.BiStream) -> None:
        recv, send = bi.recv(), bi.send()
        while message := await recv.read(64):
            await send.write_all(message.upper())
        await send.finish()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(serve_one, await server_conn.accept_bi())

    async def client_one(i: int) -> None:
        bi = await client_conn.open_bi()
        send, recv = bi.send(), bi.recv()
        for r in range(rounds):
            message = f"s{i:03}r{r:02}".encode()
            await send.write_all(message)
            assert await recv.read_exact(len(message)) == message.upper()
        await send.finish()
        assert await recv.read_to_end(16) == b""

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            for i in range(streams):
                nursery.start_soon(client_one, i)
    assert counting.posts > streams * rounds
    assert counting.drains < counting.posts
    assert not bridge._polls


async def test_cancelled_parked_calls_leave_nothing_registered(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    """Cancelling 50 parked reads frees their Rust futures, which answer their continuations:
    no poll stays registered, the streams still work, and shutdown does not hang."""
    server, client = endpoint_pair
    server_conn, client_conn = await connect_pair(server, client)
    sends, recvs = [], []
    for _ in range(50):
        bi = await client_conn.open_bi()
        await bi.send().write_all(b"!")
        sends.append(bi.send())
        recv = (await server_conn.accept_bi()).recv()
        assert await recv.read_exact(1) == b"!"
        recvs.append(recv)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            for recv in recvs:
                nursery.start_soon(recv.read, 100)
            await trio.testing.wait_all_tasks_blocked()
            assert len(bridge._polls) >= 50
            scope.cancel()
    assert not bridge._polls
    await sends[7].write_all(b"after")
    assert await recvs[7].read_exact(5) == b"after"
    with trio.fail_after(5):
        await client.close()


async def test_errors_still_come_through_the_lean_call_status(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    """A Rust error in an async call and in a sync call arrives as the bindings' exception."""
    send, recv = await open_stream(*endpoint_pair)
    await send.write_all(b"abc")
    await send.finish()
    with pytest.raises(iroh.IrohError):
        await recv.read_exact(10)
    with pytest.raises(iroh.IrohError):
        iroh.EndpointTicket.from_string("not a ticket")
