"""A peer on the other side of an ALPN bump is named in plain words, with the version its last
heartbeat gave and which node to upgrade; `p2pnode workers` marks nodes of another version.
Real endpoints on loopback, real nodes, the real CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import iroh
import pytest
import trio

import p2pnode
import tickets
from p2pnode.ids import NodeId
from p2pnode.jobs.control import JOBS_ALPN
from p2pnode.membership import JOIN_ALPN
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import Dialer, ProtocolMismatch
from p2pnode.net.errors import NO_COMMON_PROTOCOL, iroh_message, version_mismatch
from tests.conftest import bind_loopback, cli_argv
from tests.nodeproc import run_start
from tests.test_cli_node import standalone_get
from tests.test_workers import eventually, workers

OLD_JOBS_ALPN = b"p2pnode/jobs/0"
VERSION = p2pnode.__version__


async def _accept_failing(endpoint: iroh.Endpoint, errors: list[str]) -> None:
    """Accept every incoming connection as a node's router does; keep what the handshake says."""
    while (incoming := await endpoint.accept_next()) is not None:
        try:
            await (await incoming.accept()).connect()
        except iroh.IrohError as exc:
            errors.append(iroh_message(exc))


async def _older_peer(nursery: trio.Nursery, alpn: bytes) -> tuple[iroh.Endpoint, list[str]]:
    """An endpoint that speaks only `alpn`, as a node of another version would."""
    endpoint = await bind_loopback([alpn])
    errors: list[str] = []
    nursery.start_soon(_accept_failing, endpoint, errors)
    return endpoint, errors


async def test_a_dial_to_a_peer_without_our_alpn_names_its_version(nursery, caplog) -> None:
    older, accepted = await _older_peer(nursery, OLD_JOBS_ALPN)
    client = await bind_loopback()
    addr = PeerAddr.from_endpoint(older.addr(), None)
    versions: dict[NodeId, str] = {}
    dials: list[str | None] = []
    dialer = Dialer(
        client,
        on_dial=lambda _peer, _alpn, error, _began: dials.append(error),
        peer_version=versions.get,
    )
    caplog.set_level(logging.WARNING, logger="p2pnode.net.dialer")
    try:
        with pytest.raises(ProtocolMismatch) as unknown:
            await dialer.dial(addr, JOBS_ALPN)
        assert str(unknown.value) == (
            f"peer {addr.node_id[:10]} does not speak p2pnode/jobs/2: it runs another version "
            f"of p2pnode (this node {VERSION}); upgrade the older one"
        )
        versions[addr.node_id] = "0.0.9"  # its heartbeat said so
        for _ in range(2):
            with pytest.raises(ProtocolMismatch) as known:
                await dialer.dial(addr, JOBS_ALPN)
        assert str(known.value) == (
            f"peer {addr.node_id[:10]} does not speak p2pnode/jobs/2; it runs p2pnode 0.0.9 "
            f"(this node {VERSION}): upgrade it"
        )
    finally:
        await client.close()
    assert dials == [None, None, None]  # it answered: no outage for liveness or redial
    logged = [r.getMessage() for r in caplog.records if r.name == "p2pnode.net.dialer"]
    assert logged == [str(unknown.value)]  # once per peer and protocol, one line
    assert accepted and set(accepted) == {NO_COMMON_PROTOCOL}  # the accepting side, plainly


async def test_join_through_a_node_of_another_version_is_one_plain_error(
    nursery, tmp_path: Path
) -> None:
    older, _ = await _older_peer(nursery, b"p2pnode/join/0")
    ticket = tickets.encode(
        tickets.JoinTicket(
            node=PeerAddr.from_endpoint(older.addr(), None).to_ticket(),
            cluster_id=bytes(16),
            join_secret=bytes(32),
        )
    )
    done = await trio.to_thread.run_sync(lambda: run_start(tmp_path / "new", "--join", ticket))
    peer = older.id().to_bytes().hex()[:10]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not join through {peer}: peer {peer} does not speak "
        f"{JOIN_ALPN.decode()}: it runs another version of p2pnode (this node {VERSION}); "
        "upgrade the older one"
    )


async def test_blob_get_from_a_node_of_another_version_is_one_plain_error(
    nursery, tmp_path: Path
) -> None:
    older, _ = await _older_peer(nursery, b"p2pnode/blobs/0")
    ticket = tickets.encode(
        tickets.BlobTicket(
            provider=PeerAddr.from_endpoint(older.addr(), None).to_ticket(),
            hash=bytes(32),
            size=5,
            root=bytes(32),
        )
    )
    done = await trio.to_thread.run_sync(
        lambda: standalone_get(ticket, tmp_path / "out", tmp_path, tmp_path / "cache")
    )
    peer = older.id().to_bytes().hex()[:10]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not fetch blob {'0' * 12}: {peer}: peer {peer} does not speak "
        f"p2pnode/blobs/1: it runs another version of p2pnode (this node {VERSION}); "
        "upgrade the older one"
    )


async def test_workers_marks_a_node_of_another_version(start_node) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    beat = b.workers._beat
    b.workers._beat = lambda: beat().model_copy(update={"version": "0.0.9"})
    b.workers.send_heartbeat()

    async def a_sees_the_old_b() -> bool:
        return (await workers(a)).get(b.id, {}).get("version") == "0.0.9"

    await eventually(a_sees_the_old_b)
    seen = await workers(a)
    assert seen[b.id]["other_version"] is True and seen[a.id]["other_version"] is False

    listed = await trio.run_process(
        [*cli_argv(a), "workers"], capture_stdout=True, capture_stderr=True, check=False
    )
    lines = {line.split()[0]: line for line in listed.stdout.decode().splitlines()}
    assert " v0.0.9*  " in lines[b.id] and f" v{VERSION}  " in lines[a.id]
    assert listed.stderr.decode().splitlines() == [
        "* 1 of 2 nodes run another version of p2pnode than this one; "
        "see README 'Upgrades and compatibility'"
    ]
    as_json = await trio.run_process(
        [*cli_argv(a), "workers", "--json"], capture_stdout=True, check=True
    )
    assert {w["node_id"]: w["other_version"] for w in json.loads(as_json.stdout)} == {
        a.id: False,
        b.id: True,
    }

    # A protocol b does not speak: a's dialer names b's version from its heartbeat.
    b_addr = a.peer_addr(b.id)
    assert b_addr is not None
    with pytest.raises(ProtocolMismatch) as mismatch:
        await a.dialer.dial(b_addr, b"p2pnode/jobs/99")
    assert str(mismatch.value) == (
        f"peer {b.id[:10]} does not speak p2pnode/jobs/99; it runs p2pnode 0.0.9 "
        f"(this node {VERSION}): upgrade it"
    )


def test_the_advice_follows_which_side_is_older() -> None:
    peer = "ab" * 32
    assert version_mismatch(peer, JOBS_ALPN, "0.3.0", "0.2.10") == (
        "peer ababababab does not speak p2pnode/jobs/2; it runs p2pnode 0.3.0 (this node 0.2.10): "
        "upgrade this node"
    )
    assert version_mismatch(peer, JOBS_ALPN, "0.2.9", "0.2.10").endswith(": upgrade it")
    assert version_mismatch(peer, JOBS_ALPN, "0.3.0rc1", "0.2.0").endswith("(this node 0.2.0)")
