"""Gossip's stream of many frames, on real iroh streams: frames written together are read one by
one (a burst costs one read), frames split over writes are put back together, limits hold; and
the messages in them (`gossip/wire.py`)."""

from __future__ import annotations

import random
import struct

import iroh
import pytest
import trio

from p2pnode.gossip import wire
from p2pnode.gossip.envelope import Envelope
from p2pnode.net import framing
from tests.conftest import connect_pair


async def test_frames_written_together_or_split_arrive_whole_and_in_order(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    server_side, client_side = await connect_pair(*endpoint_pair)
    rng = random.Random(4)
    payloads = [rng.randbytes(rng.choice([0, 1, 3, 100, 70_000, 200_000])) for _ in range(40)]
    wire = b"".join(struct.pack(">I", len(p)) + p for p in payloads[20:])
    cuts = sorted(rng.sample(range(1, len(wire)), 30))

    async def write() -> None:
        send = await client_side.open_uni()
        await framing.write_frames(send, payloads[:20])  # a burst, in one write
        for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
            await send.write_all(wire[start:end])  # headers and bodies split anywhere
        await send.finish()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            frames = framing.FrameReader(await server_side.accept_uni(), max_size=256 * 1024)
            assert [await frames.next() for _ in payloads] == payloads
            assert await frames.next() is None  # a clean end between frames


async def test_a_frame_over_the_limit_is_refused_before_it_is_read(
    endpoint_pair: tuple[iroh.Endpoint, iroh.Endpoint],
) -> None:
    server_side, client_side = await connect_pair(*endpoint_pair)
    send = await client_side.open_uni()
    await framing.write_frames(send, [b"ok", b"x" * 2000])
    recv = await server_side.accept_uni()
    frames = framing.FrameReader(recv, max_size=1000)
    with trio.fail_after(10):
        assert await frames.next() == b"ok"
        with pytest.raises(framing.FrameError, match="frame of 2000 bytes exceeds the limit"):
            await frames.next()


def _every_message() -> list[wire.WireMessage]:
    key = iroh.SecretKey.from_bytes(bytes(range(32)))
    envelope = Envelope.create(key, "ab" * 32, "k", {"n": [1, "é"]}, hops=7)
    ids = [f"{n:032x}" for n in (1, 2, 3)]
    peer = wire.PeerEntry(id="cd" * 32, addr={"node_id": "cd" * 32})
    return [
        wire.Gossip(envelope=envelope),
        wire.Gossip(envelope=envelope.replace(hops=0), catch_up=True),
        wire.IHave(ids=ids),
        wire.Graft(ids=[]),
        wire.Digest(ids=ids),
        wire.Want(ids=ids[:1]),
        wire.Prune(),
        wire.Join(addr={"node_id": "ef" * 32}),
        wire.ForwardJoin(peer=peer, ttl=3),
        wire.Neighbor(addr={}, urgent=True),
        wire.Leave(),
        wire.Shuffle(sample=[peer]),
        wire.ShuffleReply(sample=[]),
    ]


@pytest.mark.parametrize("message", _every_message(), ids=lambda m: type(m).__name__)
def test_every_message_survives_the_codec(message: wire.WireMessage) -> None:
    assert wire.decode(wire.encode(message)) == message


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "empty"),
        (b'{"type":"gossip"}', "unknown message type 0x7b"),  # a gossip/1 node's JSON
        (bytes([wire.GOSSIP, 0]), "too short"),
        (bytes([wire.GOSSIP, 0, 1]) + bytes(100), "malformed envelope"),
        (bytes([wire.IHAVE]) + bytes(17), "ids"),
        (bytes([wire.DIGEST]) + bytes(16 * (wire.MAX_IDS + 1)), "ids"),
        (bytes([wire.PRUNE, 0]), "prune carries nothing"),
        (bytes([wire.CONTROL]) + b'{"type":"join"}', "membership"),
        (bytes([wire.CONTROL]) + b"\xff", "membership"),
    ],
)
def test_frames_that_are_no_message_are_refused(frame: bytes, error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        wire.decode(frame)
