"""The blob protocol between real nodes: verified fetch, lying providers, authorisation, several
providers."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import iroh
import pytest
import trio

import tickets
from p2pnode.blobs.blocks import BLOCK_SIZE
from p2pnode.blobs.fetch import PROGRESS_INTERVAL_S, FetchError, fetch_blob
from p2pnode.blobs.protocol import (
    BLOBS_ALPN,
    MAX_HEADER_FRAME,
    MAX_RANGES,
    BlobHeader,
    BlobRefused,
    BlobReply,
    BlobRequest,
)
from p2pnode.blobs.store import BlobCorrupt, BlobStore
from p2pnode.net.addr import PeerAddr
from p2pnode.net.framing import recv_model, send_model, write_frame
from tests.conftest import bind_loopback
from tests.test_blob_inplace import flip_byte_keeping_stat


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_member_fetches_verified_blob(start_node, tmp_path: Path) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    data = write_random(tmp_path / "input.bin", 3 * (1 << 20) + 12345)
    info = await a.blobs.add(tmp_path / "input.bin")
    assert info.hash == blake3.blake3(data).hexdigest()

    seen: list[int] = []
    fetched = await b.blobs.fetch(
        info.hash, [a.addr()], root=info.root, on_progress=lambda p: seen.append(p.bytes_done)
    )
    assert fetched.hash == info.hash
    await b.blobs.store.export(info.hash, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert seen == sorted(seen) and seen[-1] == len(data)


async def test_progress_comes_every_tenth_of_a_second_and_at_the_end(
    start_node, tmp_path: Path
) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    write_random(tmp_path / "input.bin", 32 * (1 << 20) + 5)
    info = await a.blobs.add(tmp_path / "input.bin")
    seen: list[tuple[float, int]] = []
    await b.blobs.fetch(
        info.hash,
        [a.addr()],
        root=info.root,
        on_progress=lambda p: seen.append((trio.current_time(), p.bytes_done)),
    )
    assert [done for _, done in seen] == sorted({done for _, done in seen})
    assert seen[-1][1] == info.size
    gaps = [later - earlier for (earlier, _), (later, _) in zip(seen[:-2], seen[1:-1], strict=True)]
    # Timed where the fetcher decides, a moment before the callback reads the clock: 1 ms slack.
    assert all(gap >= PROGRESS_INTERVAL_S - 1e-3 for gap in gaps), gaps


async def test_ticket_holder_fetches_and_stranger_is_refused(start_node, tmp_path: Path) -> None:
    a = await start_node()
    data = write_random(tmp_path / "input.bin", 100_000)
    info = await a.blobs.add(tmp_path / "input.bin")
    ticket = tickets.parse_blob(a.blobs.ticket(info))

    stranger = await bind_loopback([BLOBS_ALPN])
    store = await BlobStore.open(tmp_path / "stranger-store")
    try:

        async def dial(addr: PeerAddr) -> iroh.Connection:
            return await stranger.connect(addr.to_endpoint(), BLOBS_ALPN)

        with pytest.raises(FetchError, match="not authorised"):
            await fetch_blob(store, dial, info.hash, [a.addr()], root=info.root)
        with pytest.raises(
            FetchError, match="not authorised"
        ):  # a capability for another blob is useless
            await fetch_blob(
                store,
                dial,
                info.hash,
                [a.addr()],
                root=info.root,
                capability=a.blobs.capabilities.issue("00" * 32).hex(),
            )
        assert not store.has(info.hash)
        fetched = await fetch_blob(
            store,
            dial,
            info.hash,
            [PeerAddr.from_ticket(ticket.provider)],
            root=ticket.root_hex,
            capability=ticket.capability.hex(),
        )
        await store.export(fetched.hash, tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == data
    finally:
        store.close()
        await stranger.close()
    assert a.blobs.provider.refused == 2


async def test_lying_provider_is_caught_and_next_provider_delivers(
    start_node, tmp_path: Path
) -> None:
    honest = await start_node()
    liar = await start_node(join=honest.join_ticket())
    fetcher = await start_node(join=honest.join_ticket())
    data = write_random(tmp_path / "input.bin", 2 * (1 << 20) + 7)
    info = await honest.blobs.add(tmp_path / "input.bin")
    await liar.blobs.add(tmp_path / "input.bin")

    real_serve_blocks = liar.blobs.store.serve_blocks

    target = (1 << 20) + 5  # a byte in the second block

    async def flip_one_byte(blob_hash: str, offset: int, length: int):
        position = offset
        async with contextlib.aclosing(real_serve_blocks(blob_hash, offset, length)) as blocks:
            async for block in blocks:
                if position <= target < position + len(block):
                    block[target - position] ^= 1
                position += len(block)
                yield block

    liar.blobs.store.serve_blocks = flip_one_byte
    with pytest.raises(FetchError, match="corrupt"):
        await fetcher.blobs.fetch(info.hash, [liar.addr()], root=info.root)
    assert not fetcher.blobs.store.has(info.hash)
    assert info.hash not in {b.hash for b in await fetcher.blobs.store.list()}

    # The first block from the liar verified and stays; the honest provider supplies the rest.
    progress = await fetcher.blobs.store.partial_progress(info.hash)
    assert progress is not None and progress.blocks_done == 1
    fetched = await fetcher.blobs.fetch(info.hash, [liar.addr(), honest.addr()], root=info.root)
    await fetcher.blobs.store.export(fetched.hash, tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data


async def test_unreachable_provider_then_good_one(start_node, tmp_path: Path) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket(), connect_timeout_s=0.5)
    write_random(tmp_path / "input.bin", 5000)
    info = await a.blobs.add(tmp_path / "input.bin")
    gone = await bind_loopback([BLOBS_ALPN])
    gone_addr = PeerAddr.from_endpoint(gone.addr(), None)
    await gone.close()
    fetched = await b.blobs.fetch(info.hash, [gone_addr, a.addr()], root=info.root)
    assert fetched.hash == info.hash


async def test_garbage_request_closes_a_strangers_connection_and_node_carries_on(
    start_node, tmp_path: Path
) -> None:
    a = await start_node()
    write_random(tmp_path / "input.bin", 5000)
    info = await a.blobs.add(tmp_path / "input.bin")
    peer = await bind_loopback([BLOBS_ALPN])
    try:
        for junk in [b"\xff\xff\xff\xff" + b"x" * 10, b"\x00\x00\x00\x05{nope", b"\x00\x00"]:
            connection = await peer.connect(a.addr().to_endpoint(), BLOBS_ALPN)
            bi = await connection.open_bi()
            await bi.send().write_all(junk)
            await bi.send().finish()
            with pytest.raises(iroh.IrohError):
                await bi.recv().read_exact(4)
            with trio.fail_after(10):
                assert "broken framing" in await connection.closed()
        # A new connection with a well-formed request still gets a proper answer.
        connection = await peer.connect(a.addr().to_endpoint(), BLOBS_ALPN)
        bi = await connection.open_bi()
        await send_model(bi.send(), BlobRequest(hash=info.hash))
        await bi.send().finish()
        reply = await recv_model(bi.recv(), BlobReply)
        assert isinstance(reply, BlobRefused) and "not authorised" in reply.reason
    finally:
        await peer.close()


@pytest.mark.parametrize(
    "blocks",
    [
        [[0, 1]]
        * 1000,  # the same range a thousand times: a thousand copies of a block for one request
        [[0, 2], [1, 3]],  # overlapping
        [[2, 3], [0, 1]],  # out of order (disguises repeats)
        [[1, 1]],  # empty
        [[-1, 1]],
        [[2 * i, 2 * i + 1] for i in range(MAX_RANGES + 1)],  # disjoint, but too many
    ],
)
async def test_request_with_repeated_overlapping_or_too_many_ranges_is_refused(
    start_node, tmp_path: Path, blocks: list[list[int]]
) -> None:
    a = await start_node()
    write_random(tmp_path / "input.bin", 3 * (1 << 20) + 1)
    info = await a.blobs.add(tmp_path / "input.bin")
    capability = a.blobs.capabilities.issue(info.hash).hex()
    peer = await bind_loopback([BLOBS_ALPN])
    try:
        connection = await peer.connect(a.addr().to_endpoint(), BLOBS_ALPN)
        bi = await connection.open_bi()
        await write_frame(
            bi.send(),
            json.dumps({"hash": info.hash, "capability": capability, "blocks": blocks}).encode(),
        )
        await bi.send().finish()
        with pytest.raises(iroh.IrohError):
            await bi.recv().read_exact(4)
        assert a.blobs.provider.served_bytes == 0
        # Disjoint ranges in order are served, each block once (on a new connection: a stranger
        # that broke the framing lost the old one).
        connection = await peer.connect(a.addr().to_endpoint(), BLOBS_ALPN)
        bi = await connection.open_bi()
        await send_model(
            bi.send(), BlobRequest(hash=info.hash, capability=capability, blocks=[(0, 1), (2, 3)])
        )
        await bi.send().finish()
        assert isinstance(await recv_model(bi.recv(), BlobReply, MAX_HEADER_FRAME), BlobHeader)
        assert len(await bi.recv().read_to_end(4 << 20)) == 2 << 20
        assert a.blobs.provider.served_bytes == 2 << 20
    finally:
        await peer.close()


async def _served(store: BlobStore, blob_hash: str, offset: int, length: int) -> bytes:
    async with contextlib.aclosing(store.serve_blocks(blob_hash, offset, length)) as blocks:
        return b"".join([bytes(block) async for block in blocks])


def _evict(path: Path) -> None:
    """Drop a file's (clean) pages from the page cache, as memory pressure would."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _reads_without_waiting(path: Path) -> bool:
    """Whether this file system answers RWF_NOWAIT reads (e.g. ext4, xfs, btrfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        return os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT) > 0
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)


async def test_provider_reads_cached_blocks_in_place_and_the_rest_in_a_thread(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob in the page cache is served without a worker-thread trip per block; evicted, the
    same bytes come from the disk through worker threads."""
    data = os.urandom(3 * BLOCK_SIZE + 12345)
    info = await store.add_bytes(data)
    path = store.root / "data" / info.hash
    if not _reads_without_waiting(path):
        pytest.skip("the file system refuses RWF_NOWAIT reads")
    hops: list[object] = []
    real_run_sync = trio.to_thread.run_sync

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn)
        return await real_run_sync(fn, *args)

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    path.read_bytes()
    assert await _served(store, info.hash, 0, len(data)) == data
    assert await _served(store, info.hash, BLOCK_SIZE, 2 * BLOCK_SIZE) == data[BLOCK_SIZE:-12345]
    assert hops == []
    _evict(path)
    assert await _served(store, info.hash, BLOCK_SIZE, len(data) - BLOCK_SIZE) == data[BLOCK_SIZE:]
    assert hops
    with pytest.raises(ValueError):
        await _served(store, info.hash, 1, BLOCK_SIZE)
    with pytest.raises(ValueError):
        await _served(store, info.hash, 0, len(data) + 1)


async def test_provider_never_serves_a_changed_block_of_a_file_added_in_place(
    store: BlobStore, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big.bin", 3 * BLOCK_SIZE + 5)
    info = await store.add_in_place(tmp_path / "big.bin")
    assert await _served(store, info.hash, 0, len(data)) == data
    flip_byte_keeping_stat(tmp_path / "big.bin", 2 * BLOCK_SIZE + 7)
    served = bytearray()
    with pytest.raises(BlobCorrupt, match="changed"):
        async with contextlib.aclosing(store.serve_blocks(info.hash, 0, len(data))) as blocks:
            async for block in blocks:
                served += block
    assert served == data[: 2 * BLOCK_SIZE]  # the good blocks before it, nothing of the bad one
    assert not store.has(info.hash)
