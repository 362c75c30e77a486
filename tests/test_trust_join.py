"""Every property of the join handshake, each with a peer that breaks it on the wire.

Identity binding (a joiner's claimed address is its authenticated id), mutual proof (the joiner
checks the host too), and proofs that cannot be reflected, relayed to a third node or replayed.
Attackers are bare iroh endpoints on loopback speaking the protocol by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

import iroh
import pytest
import trio

import tickets
from p2pnode.membership import (
    JOIN_ALPN,
    ClusterIdentity,
    JoinChallenge,
    JoinError,
    JoinProof,
    JoinRefused,
    JoinRequest,
    JoinWelcome,
    Membership,
    ServerReply,
    join,
    proof,
)
from p2pnode.net.addr import PeerAddr
from p2pnode.net.framing import recv_model, send_model
from tests.conftest import accept_connection, bind_loopback

FRAME = 256 * 1024


def endpoint_id(endpoint: iroh.Endpoint) -> str:
    return endpoint.id().to_bytes().hex()


def cluster_of(ticket: str) -> ClusterIdentity:
    parsed = tickets.parse_join(ticket)
    return ClusterIdentity(cluster_id=parsed.cluster_id.hex(), join_secret=parsed.join_secret.hex())


def membership_in(path: Path, self_id: str, cluster: ClusterIdentity) -> Membership:
    membership = Membership(path, self_id)
    membership.adopt(cluster)
    return membership


# -- the proof itself -------------------------------------------------------------------------


def test_proof_binds_role_cluster_prover_verifier_nonce_and_secret(tmp_path: Path) -> None:
    a, b = "aa" * 32, "bb" * 32
    membership = membership_in(tmp_path, a, ClusterIdentity.new())
    reference = proof(membership.cluster, b"member", a, b, "n1")
    assert reference == proof(membership.cluster, b"member", a, b, "n1")
    variants = [
        proof(membership.cluster, b"host", a, b, "n1"),
        proof(membership.cluster, b"member", b, a, "n1"),
        proof(membership.cluster, b"member", a, "cc" * 32, "n1"),
        proof(membership.cluster, b"member", "cc" * 32, b, "n1"),
        proof(membership.cluster, b"member", a, b, "n2"),
    ]
    other_id = membership.cluster.model_copy(update={"cluster_id": "00" * 16})
    other_secret = membership.cluster.model_copy(update={"join_secret": "00" * 32})
    for cluster in (other_id, other_secret):
        membership.cluster = cluster
        variants.append(proof(membership.cluster, b"member", a, b, "n1"))
    assert reference not in variants and len(set(variants)) == len(variants)


# -- identity binding --------------------------------------------------------------------------


async def test_joiner_cannot_claim_another_id(start_node, tmp_path: Path) -> None:
    """An impostor holding a valid ticket asks to be recorded under a member's id with its own
    address."""
    host = await start_node()
    victim = await start_node(join=host.join_ticket())
    victim_addr = host.membership.members[victim.id].addr
    impostor = await bind_loopback([JOIN_ALPN])
    try:
        membership = membership_in(
            tmp_path / "impostor", endpoint_id(impostor), cluster_of(host.join_ticket())
        )
        own = PeerAddr.from_endpoint(impostor.addr(), None)
        for claimed in (victim.id, "cc" * 32):
            lie = own.model_copy(update={"node_id": claimed})
            connection = await impostor.connect(host.addr().to_endpoint(), JOIN_ALPN)
            with pytest.raises(JoinError, match="refused"), trio.fail_after(10):
                await join(membership, connection, lie)
    finally:
        await impostor.close()
    assert not host.membership.is_member("cc" * 32)
    assert not host.membership.is_member(endpoint_id(impostor))
    assert host.membership.members[victim.id].addr == victim_addr


# -- mutual proof: the joiner checks the host --------------------------------------------------

Forge = Callable[[Membership, str, str, str, str], str]
"""(host's membership, host id, joiner id, joiner's nonce, joiner's proof) -> the welcome's
proof."""

FORGERIES: dict[str, Forge] = {
    "wrong-role": lambda m, host, joiner, nonce, _p: proof(
        m.cluster, b"member", host, joiner, nonce
    ),
    "prover-and-verifier-swapped": lambda m, host, joiner, nonce, _p: proof(
        m.cluster, b"host", joiner, host, nonce
    ),
    "for-another-joiner": lambda m, host, _j, nonce, _p: proof(
        m.cluster, b"host", host, "cc" * 32, nonce
    ),
    "stale-nonce": lambda m, host, joiner, _n, _p: proof(
        m.cluster, b"host", host, joiner, os.urandom(16).hex()
    ),
    "reflected": lambda _m, _h, _j, _n, joiner_proof: joiner_proof,
    "without-the-secret": lambda m, host, joiner, nonce, _p: proof(
        _stranger(m).cluster, b"host", host, joiner, nonce
    ),
    "empty": lambda _m, _h, _j, _n, _p: "",
}


def _stranger(m: Membership) -> Membership:
    m.cluster = m.cluster.model_copy(update={"join_secret": os.urandom(32).hex()})
    return m


async def fake_host(endpoint: iroh.Endpoint, membership: Membership, forge: Forge) -> None:
    """A host that knows the cluster (or not) and answers a joiner's proof with a forged welcome.

    Its challenge is the joiner's own nonce, the choice that makes a reflected proof most tempting.
    """
    connection = await accept_connection(endpoint)
    bi = await connection.accept_bi()
    send, recv = bi.send(), bi.recv()
    request = await recv_model(recv, JoinRequest, FRAME)
    await send_model(send, JoinChallenge(nonce=request.nonce))
    answer = await recv_model(recv, JoinProof, FRAME)
    forged = forge(
        membership, membership.self_id, request.addr.node_id, request.nonce, answer.proof
    )
    await send_model(send, JoinWelcome(proof=forged, members=[]))
    await send.finish()
    with trio.move_on_after(10):
        await connection.closed()


@pytest.mark.parametrize("forgery", ["honest", *FORGERIES])
async def test_joiner_refuses_a_host_that_cannot_prove_the_secret(
    tmp_path: Path, forgery: str
) -> None:
    host_ep, joiner_ep = await bind_loopback([JOIN_ALPN]), await bind_loopback([JOIN_ALPN])
    cluster = ClusterIdentity.new()
    joiner = membership_in(tmp_path / "joiner", endpoint_id(joiner_ep), cluster)
    host = membership_in(tmp_path / "host", endpoint_id(host_ep), cluster)

    def honest(m: Membership, host_id: str, joiner_id: str, nonce: str, _p: str) -> str:
        return proof(m.cluster, b"host", host_id, joiner_id, nonce)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_host, host_ep, host, FORGERIES.get(forgery, honest))
            connection = await joiner_ep.connect(host_ep.addr(), JOIN_ALPN)
            with trio.fail_after(10):
                if forgery == "honest":
                    assert (
                        await join(
                            joiner, connection, PeerAddr.from_endpoint(joiner_ep.addr(), None)
                        )
                    ).members == []
                else:
                    with pytest.raises(
                        JoinError, match="could not prove it knows the cluster secret"
                    ):
                        await join(
                            joiner, connection, PeerAddr.from_endpoint(joiner_ep.addr(), None)
                        )
            connection.close(0, b"done")
    finally:
        await joiner_ep.close()
        await host_ep.close()


# -- no relay: a member's proof is useless to anyone else ------------------------------------


async def test_proof_relayed_from_a_member_does_not_admit_the_relay(start_node) -> None:
    """A stranger asks the host for a challenge, gets a real member to answer it, and forwards the
    answer."""
    host = await start_node()
    member = await start_node(join=host.join_ticket())
    relay = await bind_loopback([JOIN_ALPN])
    relay_id = endpoint_id(relay)
    cluster_id = host.membership.cluster.cluster_id
    try:
        to_host = await relay.connect(host.addr().to_endpoint(), JOIN_ALPN)
        upstream = await to_host.open_bi()
        up_send, up_recv = upstream.send(), upstream.recv()
        await send_model(
            up_send,
            JoinRequest(
                cluster_id=cluster_id,
                nonce=os.urandom(16).hex(),
                addr=PeerAddr.from_endpoint(relay.addr(), None),
            ),
        )
        challenge = await recv_model(up_recv, ServerReply, FRAME)
        assert isinstance(challenge, JoinChallenge)

        async def lure_member() -> None:
            connection = await member.dialer.dial(
                PeerAddr.from_endpoint(relay.addr(), None), JOIN_ALPN
            )
            with pytest.raises(JoinError):
                await join(member.membership, connection, member.addr())

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lure_member)
                from_member = await accept_connection(relay)
                downstream = await from_member.accept_bi()
                down_send, down_recv = downstream.send(), downstream.recv()
                request = await recv_model(down_recv, JoinRequest, FRAME)
                assert request.addr.node_id == member.id
                await send_model(down_send, JoinChallenge(nonce=challenge.nonce))
                relayed = await recv_model(down_recv, JoinProof, FRAME)
                await send_model(up_send, relayed)
                verdict = await recv_model(up_recv, ServerReply, FRAME)
                await send_model(down_send, JoinRefused(reason="that was a relay"))
                await down_send.finish()
        assert isinstance(verdict, JoinRefused) and verdict.reason == "wrong join secret"
    finally:
        await relay.close()
    assert not host.membership.is_member(relay_id)


async def test_host_proves_nothing_before_the_joiner_has(start_node) -> None:
    """A stranger that asks with the right cluster id gets a challenge, never a proof it could
    reuse."""
    host = await start_node()
    stranger = await bind_loopback([JOIN_ALPN])
    try:
        connection = await stranger.connect(host.addr().to_endpoint(), JOIN_ALPN)
        bi = await connection.open_bi()
        send, recv = bi.send(), bi.recv()
        addr = PeerAddr.from_endpoint(stranger.addr(), None)
        await send_model(
            send,
            JoinRequest(cluster_id=host.membership.cluster.cluster_id, nonce="00" * 16, addr=addr),
        )
        with trio.fail_after(10):
            assert isinstance(await recv_model(recv, ServerReply, FRAME), JoinChallenge)
            await send_model(send, JoinProof(proof="00" * 32))
            reply = await recv_model(recv, ServerReply, FRAME)
        assert isinstance(reply, JoinRefused)
    finally:
        await stranger.close()
    assert not host.membership.is_member(endpoint_id(stranger))


def test_admit_records_members_under_their_id_and_persists(tmp_path: Path) -> None:
    """A bare re-admission (a peer seen without addresses) must not erase how to reach it."""
    membership = Membership(tmp_path, "aa" * 32)
    full = PeerAddr(node_id="bb" * 32, direct_addresses=["127.0.0.1:1"])
    membership.admit(full)
    membership.admit(PeerAddr(node_id="bb" * 32))
    assert membership.members["bb" * 32].addr == full
    relayed = PeerAddr(node_id="bb" * 32, relay_url="https://relay.example/")
    membership.admit(relayed)
    assert membership.members["bb" * 32].addr == relayed
    membership.admit(PeerAddr(node_id="aa" * 32, direct_addresses=["127.0.0.1:2"]))
    assert not membership.is_member("aa" * 32)
    assert Membership(tmp_path, "aa" * 32).members == membership.members


def test_proof_is_the_documented_hmac_known_answer(tmp_path: Path) -> None:
    """Every node must compute the same proof: HMAC-SHA256 under the join secret of the |-joined
    fields."""
    cluster = ClusterIdentity(cluster_id="c1" * 16, join_secret="5e" * 32)
    membership = membership_in(tmp_path, "aa" * 32, cluster)
    message = b"|".join(
        [b"p2pnode-join-v1", b"member", cluster.cluster_id.encode(), b"aa" * 32, b"bb" * 32, b"n1"]
    )
    expected = hmac.new(bytes.fromhex(cluster.join_secret), message, hashlib.sha256).hexdigest()
    assert proof(membership.cluster, b"member", "aa" * 32, "bb" * 32, "n1") == expected


async def test_welcome_lists_the_other_members_not_the_joiner(start_node, tmp_path: Path) -> None:
    host = await start_node()
    member = await start_node(join=host.join_ticket())
    joiner = await bind_loopback([JOIN_ALPN])
    try:
        membership = membership_in(
            tmp_path / "joiner", endpoint_id(joiner), cluster_of(host.join_ticket())
        )
        connection = await joiner.connect(host.addr().to_endpoint(), JOIN_ALPN)
        with trio.fail_after(10):
            others = (
                await join(membership, connection, PeerAddr.from_endpoint(joiner.addr(), None))
            ).members
    finally:
        await joiner.close()
    assert [p.node_id for p in others] == [member.id]
    assert host.membership.is_member(endpoint_id(joiner))
