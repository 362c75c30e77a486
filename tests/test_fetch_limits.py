"""Fetches that cannot be fooled: sizes checked against the root, no preallocation past what the
disk holds, and a provider that goes silent is left for the next one. Real endpoints throughout:
the misbehaving providers are iroh endpoints serving the blob ALPN by hand."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import iroh
import pytest
import trio

import tickets
from p2pnode.blobs.blocks import BLOCK_SIZE, BlockList, hash_file
from p2pnode.blobs.fetch import FetchError, fetch_blob
from p2pnode.blobs.protocol import BLOBS_ALPN, BlobHeader, BlobRequest
from p2pnode.blobs.store import BlobStore
from p2pnode.net.addr import PeerAddr
from p2pnode.net.framing import recv_model, send_model
from tests.conftest import accept_connection, bind_loopback

Behaviour = Callable[[iroh.SendStream, BlobRequest], Awaitable[None]]


async def serve(endpoint: iroh.Endpoint, behave: Behaviour) -> None:
    """Answer every blob request on `endpoint` with `behave`, holding the stream open afterwards."""
    async with trio.open_nursery() as nursery:
        while True:
            connection = await accept_connection(endpoint)

            async def streams(connection: iroh.Connection = connection) -> None:
                while True:
                    bi = await connection.accept_bi()
                    await behave(bi.send(), await recv_model(bi.recv(), BlobRequest))

            nursery.start_soon(streams)


@pytest.fixture
async def fake_provider(
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[[Behaviour], Awaitable[PeerAddr]]]:
    endpoints: list[iroh.Endpoint] = []

    async def start(behave: Behaviour) -> PeerAddr:
        endpoint = await bind_loopback([BLOBS_ALPN])
        endpoints.append(endpoint)
        nursery.start_soon(serve, endpoint, behave)
        return PeerAddr.from_endpoint(endpoint.addr(), None)

    yield start
    nursery.cancel_scope.cancel()
    for endpoint in endpoints:
        await endpoint.close()


@pytest.fixture
async def stranger(
    tmp_path: Path,
) -> AsyncIterator[tuple[BlobStore, Callable[[PeerAddr], Awaitable[iroh.Connection]]]]:
    """A fetcher outside any cluster: a store and a dial of its own."""
    endpoint = await bind_loopback([BLOBS_ALPN])
    store = await BlobStore.open(tmp_path / "fetcher-store")

    async def dial(addr: PeerAddr) -> iroh.Connection:
        return await endpoint.connect(addr.to_endpoint(), BLOBS_ALPN)

    yield store, dial
    store.close()
    await endpoint.close()


def header_of(block_list: BlockList) -> BlobHeader:
    return BlobHeader(size=block_list.size, block_list=block_list.to_bytes().hex())


def stalls_after(block_list: BlockList, data: bytes = b"") -> Behaviour:
    """Sends the header (and `data`), then nothing, with the stream left open."""

    async def behave(send: iroh.SendStream, _request: BlobRequest) -> None:
        await send_model(send, header_of(block_list))
        if data:
            await send.write_all(data)
        await trio.sleep_forever()

    return behave


async def test_stalled_provider_is_left_for_the_next(
    start_node, fake_provider, stranger, tmp_path: Path, caplog
) -> None:
    store, dial = stranger
    honest = await start_node()
    content = os.urandom(3 * BLOCK_SIZE + 99)
    (tmp_path / "blob").write_bytes(content)
    info = await honest.blobs.add(tmp_path / "blob")
    ticket = tickets.parse_blob(honest.blobs.ticket(info))
    _, block_list = hash_file(tmp_path / "blob")
    silent = await fake_provider(stalls_after(block_list))
    one_block = await fake_provider(stalls_after(block_list, content[:BLOCK_SIZE]))
    fetch = dict(
        root=info.root, size=info.size, capability=ticket.capability.hex(), stall_timeout=0.5
    )
    caplog.set_level(logging.WARNING)

    with trio.fail_after(30), pytest.raises(FetchError, match=r"sent nothing for 0.5 s"):
        await fetch_blob(store, dial, info.hash, [silent], **fetch)
    # One verified block from the second, which then stalls too; the honest provider finishes.
    with trio.fail_after(30):
        fetched = await fetch_blob(
            store,
            dial,
            info.hash,
            [silent, one_block, PeerAddr.from_ticket(ticket.provider)],
            **fetch,
        )
    assert fetched.hash == info.hash
    await store.export(info.hash, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == content
    stalls = [r.getMessage() for r in caplog.records if "sent nothing" in r.getMessage()]
    assert len(stalls) == 3 and all("\n" not in message for message in stalls)
    assert (
        honest.blobs.provider.served_bytes == len(content) - BLOCK_SIZE
    )  # resumed after the first block


async def test_ticket_size_must_match_its_root(start_node, tmp_path: Path) -> None:
    provider = await start_node()
    fetcher = await start_node()
    (tmp_path / "blob").write_bytes(os.urandom(2 * BLOCK_SIZE))
    info = await provider.blobs.add(tmp_path / "blob")
    ticket = tickets.parse_blob(provider.blobs.ticket(info))
    lying = ticket.model_copy(update={"size": 10})
    with pytest.raises(
        FetchError, match=f"should be 10 bytes but its block list commits to {2 * BLOCK_SIZE}"
    ):
        await fetcher.blobs.fetch_ticket(lying)
    assert await fetcher.blobs.store.partial_progress(info.hash) is None  # nothing reserved
    assert (await fetcher.blobs.fetch_ticket(ticket)).hash == info.hash


async def test_blob_bigger_than_free_disk_is_refused_before_preallocating(
    fake_provider, stranger
) -> None:
    store, dial = stranger
    free = shutil.disk_usage(store.root).free
    size = (
        free + 1024 * BLOCK_SIZE
    )  # more than the disk holds, so preallocating would fail or fill it
    if size // BLOCK_SIZE * 32 * 2 > 15 << 20:
        pytest.skip("the disk is too large for a block list that fits a header frame")
    hashes = tuple(os.urandom(32) for _ in range(-(-size // BLOCK_SIZE)))
    huge = BlockList(size=size, hashes=hashes)
    provider = await fake_provider(stalls_after(huge))
    blob_hash = "ab" * 32
    with pytest.raises(FetchError, match=rf"is {size} bytes, more than the \d+ bytes free at "):
        await fetch_blob(store, dial, blob_hash, [provider], root=huge.root_hex)
    assert await store.partial_progress(blob_hash) is None
    assert os.listdir(store.root / "partial") == []


async def test_header_larger_than_the_size_needs_is_not_read(fake_provider, stranger) -> None:
    store, dial = stranger
    big = BlockList(size=2000 * BLOCK_SIZE, hashes=tuple(os.urandom(32) for _ in range(2000)))
    provider = await fake_provider(stalls_after(big))
    # A ticket for a 10-byte blob needs a one-hash header; 128 KB of block list is not even read.
    with (
        trio.fail_after(30),
        pytest.raises(FetchError, match=r"frame of \d+ bytes exceeds the limit of 4176"),
    ):
        await fetch_blob(
            store, dial, "ab" * 32, [provider], root=big.root_hex, size=10, stall_timeout=5
        )
