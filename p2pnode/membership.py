"""Cluster membership: who may speak to this node, and the join handshake that decides it.

Membership is knowledge of the cluster's join secret, proven by challenge-response: each side
sends a fresh nonce and answers the other's with an HMAC bound to the cluster id and to *both*
authenticated endpoint ids, so a proof can be neither replayed nor relayed to a third node, and
the secret itself never crosses the wire. Because every member holds the secret, a member that
joined through one node can prove itself to any other member; both sides persist the result,
so a restarted member rejoins without its ticket.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import iroh
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import tickets
from p2pnode.fsutil import save_model
from p2pnode.net.framing import recv_model, send_model

log = logging.getLogger(__name__)

JOIN_ALPN = b"p2pnode/join/1"
CLUSTER_FILE = "cluster.json"
MEMBERS_FILE = "members.json"
_MAX_JOIN_FRAME = 256 * 1024


class ClusterIdentity(BaseModel):
    cluster_id: str  # 32 hex chars
    join_secret: str  # 64 hex chars; file mode 0600

    @classmethod
    def new(cls) -> ClusterIdentity:
        return cls(cluster_id=secrets.token_hex(16), join_secret=secrets.token_hex(32))


class PeerAddr(BaseModel):
    """Where a peer can be reached: the JSON twin of `tickets.NodeAddr`."""

    node_id: str
    relay_url: str | None = None
    direct_addresses: list[str] = []

    @classmethod
    def from_ticket(cls, addr: tickets.NodeAddr) -> PeerAddr:
        return cls(node_id=addr.node_id.hex(), relay_url=addr.relay_url, direct_addresses=list(addr.direct_addresses))

    @classmethod
    def from_endpoint(cls, addr: iroh.EndpointAddr, relay_url: str | None) -> PeerAddr:
        return cls(
            node_id=addr.id().to_bytes().hex(),
            relay_url=addr.relay_url() or relay_url,
            # Link-local IPv6 addresses carry a zone id that only means something on this host.
            direct_addresses=[a for a in addr.direct_addresses() if "%" not in a],
        )

    def to_ticket(self) -> tickets.NodeAddr:
        return tickets.NodeAddr(
            node_id=bytes.fromhex(self.node_id), relay_url=self.relay_url, direct_addresses=self.direct_addresses
        )

    def to_endpoint(self) -> iroh.EndpointAddr:
        return iroh.EndpointAddr(
            iroh.EndpointId.from_bytes(bytes.fromhex(self.node_id)), self.relay_url, self.direct_addresses
        )


class Member(BaseModel):
    addr: PeerAddr
    joined_at: float
    last_seen: float


class MemberList(BaseModel):
    members: dict[str, Member] = {}


_Model = TypeVar("_Model", bound=BaseModel)


class DamagedStateError(ValueError):
    """A state file in the data folder cannot be read back; the message names it, for a person."""


def _load(path: Path, model: type[_Model]) -> _Model:
    """Parse a state file, or say which file is damaged; never guess a replacement for it."""
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise DamagedStateError(f"{path} is damaged ({reason}); restore it from a backup or move it away to start afresh")


class Membership:
    """The cluster this node belongs to and its known members, persisted in the data folder."""

    def __init__(self, data_dir: Path, self_id: str) -> None:
        self._dir = data_dir
        self.self_id = self_id
        cluster_path = data_dir / CLUSTER_FILE
        if cluster_path.exists():
            self.cluster = _load(cluster_path, ClusterIdentity)
        else:
            self.cluster = ClusterIdentity.new()
            save_model(cluster_path, self.cluster, mode=0o600)
        members_path = data_dir / MEMBERS_FILE
        self._members = _load(members_path, MemberList) if members_path.exists() else MemberList()

    @property
    def members(self) -> dict[str, Member]:
        return self._members.members

    def is_member(self, node_id: str) -> bool:
        return node_id in self._members.members

    def adopt(self, cluster: ClusterIdentity) -> None:
        """Switch to the cluster of a ticket this node was given; members of another cluster are forgotten."""
        if cluster == self.cluster:
            return
        self.cluster = cluster
        save_model(self._dir / CLUSTER_FILE, cluster, mode=0o600)
        self._members = MemberList()
        self._save()

    def admit(self, addr: PeerAddr) -> None:
        if addr.node_id == self.self_id:
            return
        now = time.time()
        known = self._members.members.get(addr.node_id)
        self._members.members[addr.node_id] = Member(
            addr=addr if addr.direct_addresses or addr.relay_url or known is None else known.addr,
            joined_at=known.joined_at if known else now,
            last_seen=now,
        )
        self._save()

    def join_ticket(self, addr: PeerAddr) -> str:
        ticket = tickets.JoinTicket(
            node=addr.to_ticket(),
            cluster_id=bytes.fromhex(self.cluster.cluster_id),
            join_secret=bytes.fromhex(self.cluster.join_secret),
        )
        return tickets.encode(ticket)

    def _save(self) -> None:
        save_model(self._dir / MEMBERS_FILE, self._members)

    def proof(self, role: bytes, prover: str, verifier: str, nonce: str) -> str:
        message = b"|".join([b"p2pnode-join-v1", role, self.cluster.cluster_id.encode(), prover.encode(), verifier.encode(), nonce.encode()])
        return hmac.new(bytes.fromhex(self.cluster.join_secret), message, hashlib.sha256).hexdigest()


class JoinRequest(BaseModel):
    type: Literal["request"] = "request"
    cluster_id: str
    nonce: str
    addr: PeerAddr


class JoinChallenge(BaseModel):
    type: Literal["challenge"] = "challenge"
    nonce: str


class JoinProof(BaseModel):
    type: Literal["proof"] = "proof"
    proof: str


class JoinWelcome(BaseModel):
    type: Literal["welcome"] = "welcome"
    proof: str
    members: list[PeerAddr]


class JoinRefused(BaseModel):
    type: Literal["refused"] = "refused"
    reason: str


ServerReply = TypeAdapter(Annotated[JoinChallenge | JoinWelcome | JoinRefused, Field(discriminator="type")])


class JoinError(Exception):
    """The handshake failed: wrong cluster, bad proof, or the node refused us."""


async def handle_join(membership: Membership, connection: iroh.Connection, bi: iroh.BiStream) -> None:
    """Server side: verify the peer's proof of the secret, then admit it and share the member list."""
    peer = connection.remote_id().to_bytes().hex()
    send, recv = bi.send(), bi.recv()
    request = await recv_model(recv, JoinRequest, _MAX_JOIN_FRAME)
    if request.cluster_id != membership.cluster.cluster_id or request.addr.node_id != peer:
        await send_model(send, JoinRefused(reason="this node belongs to another cluster"))
        await send.finish()
        return
    challenge = os.urandom(16).hex()
    await send_model(send, JoinChallenge(nonce=challenge))
    answer = await recv_model(recv, JoinProof, _MAX_JOIN_FRAME)
    expected = membership.proof(b"member", peer, membership.self_id, challenge)
    if not hmac.compare_digest(answer.proof, expected):
        log.warning("refused join from %s: wrong join secret", peer[:10])
        await send_model(send, JoinRefused(reason="wrong join secret"))
        await send.finish()
        return
    known = [m.addr for m in membership.members.values() if m.addr.node_id != peer]
    membership.admit(request.addr)
    log.info("member %s joined", peer[:10])
    await send_model(send, JoinWelcome(proof=membership.proof(b"host", membership.self_id, peer, request.nonce), members=known))
    await send.finish()


async def join(membership: Membership, connection: iroh.Connection, self_addr: PeerAddr) -> list[PeerAddr]:
    """Client side: prove our membership to the node at the other end; returns the members it knows."""
    host = connection.remote_id().to_bytes().hex()
    bi = await connection.open_bi()
    send, recv = bi.send(), bi.recv()
    nonce = os.urandom(16).hex()
    await send_model(send, JoinRequest(cluster_id=membership.cluster.cluster_id, nonce=nonce, addr=self_addr))
    reply = await recv_model(recv, ServerReply, _MAX_JOIN_FRAME)
    if isinstance(reply, JoinRefused):
        raise JoinError(f"node {host[:10]} refused to admit us: {reply.reason}")
    if not isinstance(reply, JoinChallenge):
        raise JoinError(f"node {host[:10]} broke the join handshake")
    await send_model(send, JoinProof(proof=membership.proof(b"member", membership.self_id, host, reply.nonce)))
    await send.finish()
    welcome = await recv_model(recv, ServerReply, _MAX_JOIN_FRAME)
    if isinstance(welcome, JoinRefused):
        raise JoinError(f"node {host[:10]} refused to admit us: {welcome.reason}")
    if not isinstance(welcome, JoinWelcome) or not hmac.compare_digest(
        welcome.proof, membership.proof(b"host", host, membership.self_id, nonce)
    ):
        raise JoinError(f"node {host[:10]} could not prove it knows the cluster secret")
    return welcome.members
