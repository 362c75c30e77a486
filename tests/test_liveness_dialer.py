"""The dialer on real loopback endpoints: a reused connection that fails a request is replaced at
once; so is a fresh one, for an idempotent request only (the jobs control protocol's)."""

from __future__ import annotations

import iroh
import pytest
import trio
from pydantic import BaseModel

from p2pnode.jobs import model
from p2pnode.jobs.control import JOBS_ALPN, ControlClient, control_message
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import Dialer
from p2pnode.net.framing import FrameError, recv_model, reset_quietly, send_model
from tests.conftest import TEST_ALPN, accept_connection, bind_loopback


class Echo(BaseModel):
    n: int


async def serve(endpoint: iroh.Endpoint, accepted: list[iroh.Connection]) -> None:
    """Echo every request, except that the first connection's second stream is reset (it
    "breaks")."""
    async with trio.open_nursery() as nursery:
        while True:
            connection = await accept_connection(endpoint)
            accepted.append(connection)
            nursery.start_soon(serve_connection, connection, len(accepted) == 1)


async def serve_connection(connection: iroh.Connection, breaks: bool) -> None:
    for streams in range(1, 100):
        try:
            bi = await connection.accept_bi()
        except iroh.IrohError:
            return
        request = await recv_model(bi.recv(), Echo)
        if breaks and streams == 2:
            await reset_quietly(bi)
            continue
        await send_model(bi.send(), request)
        await bi.send().finish()


async def ask(connection: iroh.Connection, n: int) -> Echo:
    bi = await connection.open_bi()
    await send_model(bi.send(), Echo(n=n))
    await bi.send().finish()
    return await recv_model(bi.recv(), Echo)


async def test_reused_connection_that_fails_a_request_is_redialled_at_once(
    nursery: trio.Nursery,
) -> None:
    server, client = await bind_loopback(), await bind_loopback()
    accepted: list[iroh.Connection] = []
    nursery.start_soon(serve, server, accepted)
    dialer = Dialer(client)
    addr = PeerAddr.from_endpoint(server.addr(), None)
    with trio.fail_after(10):
        assert await dialer.request(addr, TEST_ALPN, lambda c: ask(c, 1)) == Echo(n=1)
        assert await dialer.request(addr, TEST_ALPN, lambda c: ask(c, 2)) == Echo(n=2)
        assert await dialer.request(addr, TEST_ALPN, lambda c: ask(c, 3)) == Echo(n=3)
    assert len(accepted) == 2  # the broken connection was replaced once, and the new one reused
    dialer.close_all()
    nursery.cancel_scope.cancel()


async def test_forgetting_one_protocols_connection_leaves_the_others_open(
    nursery: trio.Nursery,
) -> None:
    other_alpn = b"p2pnode/test-other/1"
    server = await bind_loopback([TEST_ALPN, other_alpn])
    client = await bind_loopback()
    accepted: list[iroh.Connection] = []
    nursery.start_soon(serve, server, accepted)
    dialer = Dialer(client)
    addr = PeerAddr.from_endpoint(server.addr(), None)
    with trio.fail_after(10):
        kept = await dialer.connect(addr, TEST_ALPN)
        dropped = await dialer.connect(addr, other_alpn)
        dialer.forget(addr.node_id, alpn=other_alpn)
        assert dropped.close_reason() is not None
        assert kept.close_reason() is None
        assert await dialer.request(addr, TEST_ALPN, lambda c: ask(c, 1)) == Echo(n=1)
        assert len(accepted) == 2  # the kept connection served it: no redial
        dialer.forget(addr.node_id)
        assert kept.close_reason() is not None
    dialer.close_all()
    nursery.cancel_scope.cancel()


async def serve_killing_first(endpoint: iroh.Endpoint, accepted: list[iroh.Connection]) -> None:
    """Kill the first connection once its first request has arrived (the peer may have applied
    it; the reply is lost); on later connections answer a control `Renew` or an `Echo`."""
    async with trio.open_nursery() as nursery:
        while True:
            connection = await accept_connection(endpoint)
            accepted.append(connection)
            nursery.start_soon(answer_or_kill, connection, len(accepted) == 1)


async def answer_or_kill(connection: iroh.Connection, kill: bool) -> None:
    try:
        bi = await connection.accept_bi()
    except iroh.IrohError:
        return
    if connection.alpn() == JOBS_ALPN:
        request = await recv_model(bi.recv(), control_message)
        assert isinstance(request, model.Renew)
        reply: BaseModel = model.RenewOk(expires_in=20.0)
    else:
        reply = await recv_model(bi.recv(), Echo)
    if kill:
        connection.close(1, b"killed mid-request")
        return
    await send_model(bi.send(), reply)
    await bi.send().finish()


async def test_a_fresh_connection_killed_mid_request_is_redialled_for_a_control_request(
    nursery: trio.Nursery,
) -> None:
    server, client = await bind_loopback([JOBS_ALPN]), await bind_loopback()
    accepted: list[iroh.Connection] = []
    nursery.start_soon(serve_killing_first, server, accepted)
    dialer = Dialer(client)
    control = ControlClient(dialer.request)
    origin = PeerAddr.from_endpoint(server.addr(), None)
    renew = model.Renew(job_id="job_01M8CRH8D5H83H6EVKWEVXEHTJ", lease_token="ab" * 16)
    with trio.fail_after(10):
        assert await control.ask(origin, renew) == model.RenewOk(expires_in=20.0)
    assert len(accepted) == 2  # the first dial's connection died under it; asked again at once
    dialer.close_all()
    nursery.cancel_scope.cancel()


async def test_a_fresh_connection_killed_mid_request_fails_a_non_idempotent_request(
    nursery: trio.Nursery,
) -> None:
    server, client = await bind_loopback(), await bind_loopback()
    accepted: list[iroh.Connection] = []
    nursery.start_soon(serve_killing_first, server, accepted)
    dialer = Dialer(client)
    addr = PeerAddr.from_endpoint(server.addr(), None)
    with trio.fail_after(10), pytest.raises((iroh.IrohError, FrameError)):
        await dialer.request(addr, TEST_ALPN, lambda c: ask(c, 1))
    assert len(accepted) == 1  # not sent twice
    dialer.close_all()
    nursery.cancel_scope.cancel()
