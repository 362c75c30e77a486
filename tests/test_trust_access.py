"""Who gets past the router and the blob provider: members by authenticated id, ticket holders
for exactly one blob of exactly one provider, nobody else."""

from __future__ import annotations

import os
from pathlib import Path

import iroh
import pytest
import trio

import tickets
from p2pnode.blobs.fetch import FetchError, fetch_blob
from p2pnode.blobs.protocol import BLOBS_ALPN, Capabilities
from p2pnode.blobs.store import BlobStore
from p2pnode.jobs.control import JOBS_ALPN
from p2pnode.membership import ClusterIdentity
from p2pnode.net.addr import PeerAddr
from tests.conftest import bind_loopback


async def wait_connected(node, peer: str, connected: bool = True) -> None:
    with trio.fail_after(10):
        while (peer in node.router.connected_peers()) != connected:
            await trio.sleep(0.02)


async def test_router_admits_exactly_the_current_members(start_node) -> None:
    node = await start_node()
    peer = await bind_loopback([JOBS_ALPN])
    peer_id = peer.id().to_bytes().hex()
    try:
        refused = await peer.connect(node.addr().to_endpoint(), JOBS_ALPN)
        with trio.fail_after(10):
            assert "not a cluster member" in await refused.closed()
        node.membership.admit(PeerAddr(node_id=peer_id))
        accepted = await peer.connect(node.addr().to_endpoint(), JOBS_ALPN)
        await wait_connected(node, peer_id)
        accepted.close(0, b"done")
        await wait_connected(node, peer_id, connected=False)
        # Switching clusters forgets every member of the old one.
        node.membership.adopt(ClusterIdentity.new())
        again = await peer.connect(node.addr().to_endpoint(), JOBS_ALPN)
        with trio.fail_after(10):
            assert "not a cluster member" in await again.closed()
    finally:
        await peer.close()
    assert node.status().refused_connections == 2


def test_capabilities_are_per_blob_and_per_provider_key() -> None:
    one, other = iroh.SecretKey.generate(), iroh.SecretKey.generate()
    mine, theirs = Capabilities(one), Capabilities(other)
    blob, blob2 = "ab" * 32, "cd" * 32
    capability = mine.issue(blob)
    assert mine.check(blob, capability.hex())
    assert Capabilities(iroh.SecretKey.from_bytes(one.to_bytes())).check(
        blob, capability.hex()
    )  # survives a restart
    assert not mine.check(blob2, capability.hex())
    assert not theirs.check(blob, capability.hex())
    for bad in ["", "zz", capability.hex()[:-2], capability.hex() + "00"]:
        assert not mine.check(blob, bad)


async def test_ticket_opens_one_blob_at_one_provider(start_node, tmp_path: Path) -> None:
    """Two unrelated nodes hold the same blob; a ticket from one is refused by the other and for
    other blobs."""
    issuer, other = await start_node(), await start_node()
    (tmp_path / "shared.bin").write_bytes(os.urandom(70_000))
    (tmp_path / "private.bin").write_bytes(os.urandom(50_000))
    shared = await issuer.blobs.add(tmp_path / "shared.bin")
    private = await issuer.blobs.add(tmp_path / "private.bin")
    assert (await other.blobs.add(tmp_path / "shared.bin")).hash == shared.hash
    ticket = tickets.parse_blob(issuer.blobs.ticket(shared))
    capability = ticket.capability.hex()

    stranger = await bind_loopback([BLOBS_ALPN])
    store = await BlobStore.open(tmp_path / "stranger-store")

    async def dial(addr: PeerAddr) -> iroh.Connection:
        return await stranger.connect(addr.to_endpoint(), BLOBS_ALPN)

    try:
        with pytest.raises(FetchError, match="not authorised"):
            await fetch_blob(
                store, dial, shared.hash, [other.addr()], root=shared.root, capability=capability
            )
        with pytest.raises(FetchError, match="not authorised"):
            await fetch_blob(
                store, dial, private.hash, [issuer.addr()], root=private.root, capability=capability
            )
        with pytest.raises(FetchError, match="not authorised"):
            await fetch_blob(
                store, dial, shared.hash, [issuer.addr()], root=shared.root, capability="not hex"
            )
        assert not store.has(shared.hash) and not store.has(private.hash)
        fetched = await fetch_blob(
            store, dial, shared.hash, [issuer.addr()], root=shared.root, capability=capability
        )
        assert fetched.hash == shared.hash
    finally:
        store.close()
        await stranger.close()
    assert other.blobs.provider.refused == 1 and issuer.blobs.provider.refused == 2


async def test_block_list_must_match_the_trusted_root_before_any_block_is_taken(
    start_node, tmp_path: Path
) -> None:
    """A provider that swaps in another blob, consistently (its block list, its bytes), is refused
    at the header."""
    liar = await start_node()
    fetcher = await start_node(join=liar.join_ticket())
    (tmp_path / "wanted.bin").write_bytes(os.urandom(2 * (1 << 20) + 3))
    (tmp_path / "swapped.bin").write_bytes(os.urandom(2 * (1 << 20) + 3))
    wanted = await liar.blobs.add(tmp_path / "wanted.bin")
    swapped = await liar.blobs.add(tmp_path / "swapped.bin")
    store = liar.blobs.store
    real_block_list, real_serve_blocks = store.block_list, store.serve_blocks
    store.block_list = lambda _h: real_block_list(swapped.hash)
    store.serve_blocks = lambda _h, *args: real_serve_blocks(swapped.hash, *args)

    with pytest.raises(FetchError, match="verification root"):
        await fetcher.blobs.fetch(wanted.hash, [liar.addr()], root=wanted.root)
    progress = await fetcher.blobs.store.partial_progress(wanted.hash)
    assert progress is None or progress.blocks_done == 0
