"""Redial bookkeeping (sans-IO, injected clock) and the one clean line made of iroh's errors."""

from __future__ import annotations

import socket
from itertools import pairwise

import iroh
import pytest

from p2pnode.net import bridge
from p2pnode.net.errors import closed_on_purpose, iroh_message
from p2pnode.net.liveness import Redial
from tests.conftest import bind_loopback, connect_pair


def test_back_off_doubles_up_to_the_cap_and_the_loss_is_reported_once() -> None:
    redial = Redial(first_s=1.0, cap_s=8.0)
    assert redial.failed("p", now=0.0) is True
    retries = []
    now = 0.0
    for _ in range(6):
        while not redial.due(now):
            now += 0.5
        assert redial.due(now) == []  # in flight: not due twice
        retries.append(now)
        assert redial.failed("p", now) is False
    gaps = [b - a for a, b in pairwise(retries)]
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert redial.is_down("p")
    assert redial.reached("p", now) is True
    assert redial.reached("p", now) is False
    assert not redial.is_down("p")


def test_a_dial_begun_before_the_peer_came_back_does_not_mark_it_lost() -> None:
    redial = Redial()
    redial.reached("p", now=10.0)
    assert redial.failed("p", now=12.0, tried_at=9.0) is False
    assert not redial.is_down("p")
    assert redial.failed("p", now=12.0, tried_at=11.0) is True


async def test_closed_connection_error_is_one_line_without_rust_paths() -> None:
    server, client = await bind_loopback(), await bind_loopback()
    try:
        server_side, client_side = await connect_pair(server, client)
        stream = await client_side.open_uni()
        await stream.write_all(b"x")
        incoming = await server_side.accept_uni()
        await incoming.read(1)
        client_side.close(3, b"done")
        with pytest.raises(iroh.IrohError) as caught:
            await incoming.read(1)
        assert closed_on_purpose(caught.value)
        assert iroh_message(caught.value) == "connection lost: closed by the peer (3: done)"
    finally:
        await client.close()
        await server.close()


async def test_bind_error_is_one_line_without_rust_paths() -> None:
    bridge.install()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        options = iroh.EndpointOptions(
            preset=iroh.preset_minimal(), bind_addr=f"127.0.0.1:{taken.getsockname()[1]}"
        )
        with pytest.raises(iroh.IrohError) as caught:
            await iroh.Endpoint.bind(options)
    assert (
        "\n" in caught.value.message() and ".rs:" in caught.value.message()
    )  # what the bindings give
    assert (
        iroh_message(caught.value) == "Failed to bind sockets: Address already in use (os error 98)"
    )
