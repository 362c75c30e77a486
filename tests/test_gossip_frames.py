"""Gossip's stream of many frames, on real iroh streams: frames written together are read one by
one (a burst costs one read), frames split over writes are put back together, limits hold."""

from __future__ import annotations

import random
import struct

import iroh
import pytest
import trio

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
