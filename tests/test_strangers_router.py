"""Strangers on the open protocols are bounded: connections, streams, frame time, failed joins,
log lines."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import iroh
import pytest
import trio

from p2pnode import membership
from p2pnode.membership import JOIN_ALPN, JoinError, Membership, join
from p2pnode.net import endpoint, framing
from p2pnode.net.addr import PeerAddr
from p2pnode.net.peerlog import PeerLog
from tests.conftest import bind_loopback, connect_pair

HALF_FRAME = struct.pack(">I", 1000) + b"{" * 500  # declares 1000 bytes, sends 500, then nothing


async def wait_closed(connection: iroh.Connection) -> str:
    with trio.fail_after(10):
        return await connection.closed()


async def stream_is_reset(bi: iroh.BiStream) -> bool:
    """True once the node reset the stream (its read ends in an error), False if it stays open."""
    with trio.move_on_after(2):
        try:
            await bi.recv().read(1)
        except iroh.IrohError:
            return True
    return False


async def test_stranger_connections_are_capped_per_peer_and_in_total(
    start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await start_node()
    member = await start_node(join=node.join_ticket())
    target = node.addr().to_endpoint()
    one, other = await bind_loopback([JOIN_ALPN]), await bind_loopback([JOIN_ALPN])
    try:
        held = [
            await one.connect(target, JOIN_ALPN)
            for _ in range(endpoint.STRANGER_CONNECTIONS_PER_PEER)
        ]
        extra = await one.connect(target, JOIN_ALPN)
        assert "too many connections from you" in await wait_closed(extra)
        monkeypatch.setattr(endpoint, "STRANGER_CONNECTIONS", len(held))
        assert "busy: try again later" in await wait_closed(await other.connect(target, JOIN_ALPN))
        # A member is no stranger: the caps do not apply to it.
        await member.dialer.introduce(node.addr())
        # Held connections still work, and a closed one frees its place.
        held[0].close(0, b"bye")
        with trio.fail_after(10):
            while node.router.connected_peers() != {one.id().to_bytes().hex()} | {member.id}:
                await trio.sleep(0.02)
            while True:
                again = await other.connect(target, JOIN_ALPN)
                with trio.move_on_after(0.5):
                    await again.closed()
                    continue
                break
    finally:
        await one.close()
        await other.close()
    assert node.status().refused_connections == 2


async def test_stranger_parks_few_streams_and_not_for_long(
    start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership, "JOIN_TIMEOUT_S", 1.0)
    node = await start_node()
    stranger = await bind_loopback([JOIN_ALPN])
    try:
        target = node.addr().to_endpoint()

        async def park(connection: iroh.Connection, count: int) -> list[iroh.BiStream]:
            # The caller keeps the streams (and their send halves) alive: a dropped send stream is
            # finished, which the node would rightly count as a failed join, not a parked one.
            streams, sends = [], []
            for _ in range(count):
                bi = await connection.open_bi()
                sends.append(bi.send())
                await sends[-1].write_all(HALF_FRAME)
                streams.append(bi)
            parked_sends.extend(sends)
            return streams

        parked_sends: list[iroh.SendStream] = []

        # Parked streams end when the handshake times out.
        for bi in await park(await stranger.connect(target, JOIN_ALPN), endpoint.STRANGER_STREAMS):
            with trio.fail_after(10):
                while not await stream_is_reset(bi):
                    pass
        # A stranger opening more streams than the cap loses its connection, and what it sent.
        # (Another one: the first is in back-off now, and is answered before it can park anything;
        # and no timeout may free a place while it opens its streams.)
        monkeypatch.setattr(membership, "JOIN_TIMEOUT_S", 60.0)
        other = await bind_loopback([JOIN_ALPN])
        connection = await other.connect(target, JOIN_ALPN)
        parked = await park(connection, endpoint.STRANGER_STREAMS + 1)  # noqa: F841 (kept open)
        assert "too many streams at once" in await wait_closed(connection)
        await other.close()
    finally:
        await stranger.close()


async def test_stranger_uni_streams_are_stopped(start_node) -> None:
    """The open protocols use no uni streams: a stranger's are stopped, not left buffering."""
    node = await start_node()
    stranger = await bind_loopback([JOIN_ALPN])
    try:
        connection = await stranger.connect(node.addr().to_endpoint(), JOIN_ALPN)
        uni = await connection.open_uni()
        await uni.write_all(HALF_FRAME)
        with trio.fail_after(10):
            assert await uni.stopped() == framing.ERR_SHUTDOWN
    finally:
        await stranger.close()


async def test_join_handshake_times_out(start_node, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stranger that sends a whole request and then never proves anything is cut off."""
    monkeypatch.setattr(membership, "JOIN_TIMEOUT_S", 1.0)
    node = await start_node()
    stranger = await bind_loopback([JOIN_ALPN])
    try:
        connection = await stranger.connect(node.addr().to_endpoint(), JOIN_ALPN)
        bi = await connection.open_bi()
        me = PeerAddr.from_endpoint(stranger.addr(), None)
        request = membership.JoinRequest(
            cluster_id=node.membership.cluster.cluster_id, nonce="00", addr=me
        )
        await framing.send_model(bi.send(), request)
        challenge = await framing.recv_model(bi.recv(), membership.ServerReply)
        assert isinstance(challenge, membership.JoinChallenge)
        with trio.fail_after(10):
            while not await stream_is_reset(bi):
                pass
        assert node.join_limiter.retry_after(stranger.id().to_bytes().hex()) > 0
    finally:
        await stranger.close()


async def test_failed_joins_back_off_per_peer(
    start_node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = await start_node()
    guesser = await bind_loopback([JOIN_ALPN])
    try:
        forged = Membership(tmp_path / "guesser", guesser.id().to_bytes().hex())
        forged.cluster = forged.cluster.model_copy(
            update={"cluster_id": node.membership.cluster.cluster_id}
        )
        me = PeerAddr.from_endpoint(guesser.addr(), None)
        with pytest.raises(JoinError, match="wrong join secret"):
            await join(forged, await guesser.connect(node.addr().to_endpoint(), JOIN_ALPN), me)
        with caplog.at_level(logging.INFO, logger="p2pnode"):
            for _ in range(20):
                with pytest.raises(JoinError, match=r"too many failed joins: try again in \d+ s"):
                    await join(
                        forged, await guesser.connect(node.addr().to_endpoint(), JOIN_ALPN), me
                    )
        # Twenty refusals, one log line: the rest wait for the interval's summary.
        assert len([r for r in caplog.records if "in back-off" in r.getMessage()]) == 1
    finally:
        await guesser.close()
    # Back-off is per peer: a member joining meanwhile is not held back, nor is a member that
    # failed once (a handshake too slow under load) and proves itself again.
    member = await start_node(join=node.join_ticket())
    node.join_limiter.failed(member.id, "too slow")
    await member.dialer.introduce(node.addr())


async def test_half_sent_frame_times_out(endpoint_pair) -> None:
    server, client = endpoint_pair
    server_side, client_side = await connect_pair(server, client)
    for expected, read in [
        ("frame not complete 0.5 s after it started", framing.read_frame),
        # Idle between frames is no offence on a stream of many; a frame that started must finish.
        (
            "frame not complete 0.5 s after it started",
            lambda recv, timeout: framing.FrameReader(recv, timeout=timeout).next(),
        ),
    ]:
        bi = await client_side.open_bi()
        await bi.send().write_all(HALF_FRAME)
        accepted = await server_side.accept_bi()
        with trio.fail_after(5), pytest.raises(framing.FrameError, match=expected):
            await read(accepted.recv(), timeout=0.5)
    # An answer that never starts is late too.
    bi = await client_side.open_bi()
    await bi.send().write_all(b"")
    with trio.fail_after(5), pytest.raises(framing.FrameError, match="no frame within 0.5 s"):
        await framing.read_frame(bi.recv(), timeout=0.5)


def test_peer_log_aggregates_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    peer_log = PeerLog(logging.getLogger("p2pnode.test"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="p2pnode.test"):
        for i in range(1000):
            peer_log.event("refused", f"peer{i % 7}", "refused %s", f"peer{i % 7}")
            now[0] += 0.005
        peer_log.event("other", "x", "something else")
        assert [r.getMessage() for r in caplog.records] == ["refused peer0", "something else"]
        now[0] = 10.0
        peer_log.flush()
        assert caplog.records[-1].getMessage() == "refused: 999 more from 7 peers in the last 10 s"
        peer_log.flush()  # nothing more happened: nothing more to say
        now[0] = 20.0
        peer_log.flush()
        peer_log.event("refused", "peer0", "refused %s", "peer0")
    assert [r.getMessage() for r in caplog.records][-1] == "refused peer0"
    assert len(caplog.records) == 4
