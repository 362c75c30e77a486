"""The router in front of every protocol: strangers refused, unknown ALPNs refused, bad frames
contained."""

from __future__ import annotations

import iroh
import pytest
import trio

from p2pnode.gossip.service import GOSSIP_ALPN
from p2pnode.gossip.wire import ForwardJoin, PeerEntry, encode
from p2pnode.jobs.control import JOBS_ALPN
from p2pnode.membership import JOIN_ALPN
from p2pnode.net.framing import write_frame
from tests.conftest import bind_loopback


@pytest.mark.parametrize("alpn", [GOSSIP_ALPN, JOBS_ALPN])
async def test_stranger_is_refused_on_members_only_protocols(start_node, alpn: bytes) -> None:
    node = await start_node()
    stranger = await bind_loopback([alpn])
    try:
        connection = await stranger.connect(node.addr().to_endpoint(), alpn)
        with trio.fail_after(10):
            reason = await connection.closed()
        assert "not a cluster member" in reason
    finally:
        await stranger.close()
    assert node.status().refused_connections == 1


async def test_unknown_alpn_is_refused_by_the_handshake(start_node) -> None:
    node = await start_node()
    stranger = await bind_loopback([b"someone-else/1"])
    try:
        with pytest.raises(iroh.IrohError) as refused, trio.fail_after(10):
            await stranger.connect(node.addr().to_endpoint(), b"someone-else/1")
        assert "known protocol" in refused.value.message()
    finally:
        await stranger.close()


async def test_member_sending_garbage_gossip_is_contained(start_node) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    connection = await b.dialer.connect(a.addr(), GOSSIP_ALPN)
    for junk in [b"\xff\xff\xff\xff", b"\x00\x00\x00\x03abc", b'\x00\x00\x00\x10{"type":"x"}']:
        stream = await connection.open_uni()
        await stream.write_all(junk)
        await stream.finish()
    with trio.fail_after(10):
        while a.gossip.stats().dropped.get("bad_frame", 0) < 3:
            await trio.sleep(0.05)
    # A well-framed forwarded join whose address does not parse: the dial it leads to fails,
    # quietly.
    newcomer = "ee" * 32
    received = a.gossip.stats().received
    stream = await connection.open_uni()
    bad = ForwardJoin(
        peer=PeerEntry(id=newcomer, addr={"node_id": "not an id", "direct_addresses": 7}), ttl=0
    )
    await write_frame(stream, encode(bad))
    await stream.finish()
    with trio.fail_after(10):
        while a.gossip.stats().received == received or newcomer in a.gossip.engine.active:
            await trio.sleep(0.05)
    # The node carries on: the join protocol still answers and b is still a member.
    assert a.membership.is_member(b.id)
    await b.dialer.dial(a.addr(), JOIN_ALPN)
