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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import iroh
import trio
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import tickets
from p2pnode.fsutil import disk_full, save_model, write_atomic
from p2pnode.ids import NodeId, NodeIdField
from p2pnode.net.addr import PeerAddr, remote_node_id
from p2pnode.net.dialer import IntroductionRefused
from p2pnode.net.framing import FrameError, recv_model, send_model
from p2pnode.net.peerlog import PeerLog

log = logging.getLogger(__name__)

JOIN_ALPN = b"p2pnode/join/1"
CLUSTER_FILE = "cluster.json"
MEMBERS_FILE = "members.json"
# What a joining peer sends is tiny (a request with its address, then a proof): the host reads
# no more than this per frame. The welcome lists every member, ~250 bytes each: the joiner
# accepts a list of ~1,000.
_MAX_REQUEST_FRAME = 8 * 1024
_MAX_WELCOME_FRAME = 256 * 1024
JOIN_TIMEOUT_S = 10.0  # the whole handshake, on the host: a peer cannot hold it open longer
JOIN_BACKOFF_S = 1.0  # after a peer's first failed join; doubles with each further failure
JOIN_BACKOFF_MAX_S = 300.0
_FAILURES_KEPT = 4096  # peers whose failures are remembered; the oldest are forgotten first
FLUSH_EVERY_S = 1.0  # the most often a member list that only saw news of known members is written


class ClusterIdentity(BaseModel):
    cluster_id: str  # 32 hex chars
    join_secret: str  # 64 hex chars; file mode 0600

    @classmethod
    def new(cls) -> ClusterIdentity:
        return cls(cluster_id=secrets.token_hex(16), join_secret=secrets.token_hex(32))


class Member(BaseModel):
    addr: PeerAddr
    joined_at: float
    last_seen: float


class MemberList(BaseModel):
    cluster_id: str | None = (
        None  # the cluster these members belong to; a list of another cluster is void
    )
    members: dict[NodeIdField, Member] = {}
    removed: list[
        str
    ] = []  # ids removed by `member rm`: refused by the router and the join handshake


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
    raise DamagedStateError(
        f"{path} is damaged ({reason}); restore it from a backup or move it away to start afresh"
    )


class Membership:
    """The cluster this node belongs to and its known members, persisted in the data folder."""

    def __init__(self, data_dir: Path, self_id: NodeId) -> None:
        self._dir = data_dir
        self.self_id = self_id
        self.session = secrets.token_hex(8)  # new on every start; members tell a restart by it
        self._sessions: dict[NodeId, str | None] = {}
        cluster_path = data_dir / CLUSTER_FILE
        if cluster_path.exists():
            self.cluster = _load(cluster_path, ClusterIdentity)
        else:
            self.cluster = ClusterIdentity.new()
            save_model(cluster_path, self.cluster, mode=0o600)
        members_path = data_dir / MEMBERS_FILE
        self._members = _load(members_path, MemberList) if members_path.exists() else MemberList()
        # Who the members are is written at once; when they were last seen, at most once a
        # second (`flush_periodically`): a 10-node start greets members hundreds of times, and
        # each write is an fsync of 2-12 ms. Versions keep a late write from undoing a newer one.
        self._dirty = False
        self._version = 0
        self._written = 0
        self._write_lock = threading.Lock()
        if self._members.cluster_id not in (None, self.cluster.cluster_id):
            self._members = (
                MemberList()
            )  # a switch of cluster was interrupted between its two writes

    @property
    def members(self) -> dict[NodeId, Member]:
        return self._members.members

    def is_member(self, node_id: NodeId) -> bool:
        return node_id in self._members.members

    def is_removed(self, node_id: NodeId) -> bool:
        return node_id in self._members.removed

    def adopt(self, cluster: ClusterIdentity) -> None:
        """Switch to the cluster of a ticket whose handshake just succeeded; members of another
        cluster are forgotten. The member list names its cluster, so a crash between the two writes
        voids it."""
        if cluster == self.cluster:
            return
        self._members = MemberList(cluster_id=cluster.cluster_id)
        self._write(self._snapshot())
        self.cluster = cluster
        save_model(self._dir / CLUSTER_FILE, cluster, mode=0o600)

    def greeted(self, node_id: NodeId, session: str | None) -> bool:
        """Note the session a member showed in a handshake; True when it is not the one we knew
        (it restarted, or this is our first handshake with it in this run)."""
        new = node_id not in self._sessions or self._sessions[node_id] != session
        self._sessions[node_id] = session
        return new

    def remove(self, node_id: NodeId) -> bool:
        """Forget a member and refuse it from now on; False when the id was neither member nor
        removed."""
        if node_id in self._members.removed:
            return True
        if self._members.members.pop(node_id, None) is None:
            return False
        self._members.removed.append(node_id)
        self._save()
        return True

    def admit(self, addr: PeerAddr) -> None:
        """Record a member; a new member or address is written at once, and when that write fails
        (OSError: a full disk) nothing changes, so a join refused for it admits no one."""
        if addr.node_id == self.self_id or addr.node_id in self._members.removed:
            return
        now = time.time()
        known = self._members.members.get(addr.node_id)
        member = Member(
            addr=addr if addr.direct_addresses or addr.relay_url or known is None else known.addr,
            joined_at=known.joined_at if known else now,
            last_seen=now,
        )
        self._members.members[addr.node_id] = member
        if known is not None and known.addr == member.addr:
            self._dirty = True  # only last_seen is news
            return
        try:
            self._save()
        except OSError:
            if known is None:
                del self._members.members[addr.node_id]
            else:
                self._members.members[addr.node_id] = known
            self._dirty = True  # what was pending before still is
            raise

    def seen(self, node_id: NodeId) -> None:
        """A member answered at an address we already had: only `last_seen` is news. (The address a
        member declares itself, in the join handshake, is what `admit` records: iroh may reach a
        node that moved through a stale address, which must not overwrite the one it declared.)"""
        if member := self._members.members.get(node_id):
            member.last_seen = time.time()
            self._dirty = True

    def join_ticket(self, addr: PeerAddr) -> str:
        ticket = tickets.JoinTicket(
            node=addr.to_ticket(),
            cluster_id=bytes.fromhex(self.cluster.cluster_id),
            join_secret=bytes.fromhex(self.cluster.join_secret),
        )
        return tickets.encode(ticket)

    async def flush_periodically(self, every: float = FLUSH_EVERY_S) -> None:
        """Write what only lags (last-seen times) at most every `every` seconds, off the event
        loop's thread; and once more, at once, when cancelled (a clean shutdown)."""
        try:
            while True:
                await trio.sleep(every)
                if self._dirty:
                    try:
                        await trio.to_thread.run_sync(self._write, self._snapshot())
                    except OSError as exc:
                        self._dirty = True  # tried again next time
                        log.warning("could not write %s: %s", MEMBERS_FILE, exc)
        finally:
            try:
                self.flush()
            except OSError as exc:  # shutting down: nothing left to retry it
                log.warning("could not write %s on shutdown: %s", MEMBERS_FILE, exc)

    def flush(self) -> None:
        if self._dirty:
            self._write(self._snapshot())

    def _save(self) -> None:
        self._write(self._snapshot())

    def _snapshot(self) -> tuple[int, bytes]:
        """The member list as it is now, serialised on the caller's (the event loop's) thread."""
        self._members.cluster_id = self.cluster.cluster_id
        self._dirty = False
        self._version += 1
        return self._version, self._members.model_dump_json(indent=2).encode()

    def _write(self, snapshot: tuple[int, bytes]) -> None:
        version, data = snapshot
        with self._write_lock:
            if version > self._written:
                write_atomic(self._dir / MEMBERS_FILE, data)
                self._written = version


def proof(cluster: ClusterIdentity, role: bytes, prover: str, verifier: str, nonce: str) -> str:
    message = b"|".join(
        [
            b"p2pnode-join-v1",
            role,
            cluster.cluster_id.encode(),
            prover.encode(),
            verifier.encode(),
            nonce.encode(),
        ]
    )
    return hmac.new(bytes.fromhex(cluster.join_secret), message, hashlib.sha256).hexdigest()


class JoinRequest(BaseModel):
    type: Literal["request"] = "request"
    cluster_id: str
    nonce: str
    addr: PeerAddr
    session: str | None = None  # `Membership.session` of the peer: a new one means it restarted


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
    session: str | None = None


class JoinRefused(BaseModel):
    type: Literal["refused"] = "refused"
    reason: str
    retry_after: float = 0.0  # seconds before the host will hear this peer again, when it backs off


ServerReply = TypeAdapter(
    Annotated[JoinChallenge | JoinWelcome | JoinRefused, Field(discriminator="type")]
)


class JoinError(IntroductionRefused):
    """The handshake failed: wrong cluster, bad proof, or the node refused us."""


class JoinLimiter:
    """Failed joins per peer id, with exponential back-off: guessing costs the guesser time, and a
    peer in back-off is refused before the host reads a byte of its request."""

    def __init__(self, peer_log: PeerLog, clock: Callable[[], float] = time.monotonic) -> None:
        self.peer_log = peer_log
        self._clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = (
            OrderedDict()
        )  # peer -> (count, retry at)

    def retry_after(self, peer: NodeId) -> float:
        """Seconds `peer` must still wait; 0 when it may try."""
        _, retry_at = self._failures.get(peer, (0, 0.0))
        return max(0.0, retry_at - self._clock())

    def failed(self, peer: NodeId, why: str) -> None:
        count = self._failures.pop(peer, (0, 0.0))[0] + 1
        backoff = min(JOIN_BACKOFF_S * 2 ** (count - 1), JOIN_BACKOFF_MAX_S)
        self._failures[peer] = (count, self._clock() + backoff)
        while len(self._failures) > _FAILURES_KEPT:
            self._failures.popitem(last=False)
        self.peer_log.event(
            "failed joins",
            peer,
            "refused join from %s: %s (next try in %.0f s)",
            peer[:10],
            why,
            backoff,
            level=logging.WARNING,
        )

    def succeeded(self, peer: NodeId) -> None:
        self._failures.pop(peer, None)


async def handle_join(
    membership: Membership,
    limiter: JoinLimiter,
    connection: iroh.Connection,
    bi: iroh.BiStream,
    on_welcome: Callable[[NodeId, bool], None] | None = None,
) -> None:
    """Server side: verify the peer's proof of the secret, then admit it and share the member list.

    The handshake must complete within `JOIN_TIMEOUT_S`; a failure of any kind (wrong cluster or
    secret, garbage, too slow) puts the peer in back-off. `on_welcome(peer, new_session)` hears of
    every member that proved itself, and whether it showed a session we did not know (see
    `Membership.greeted`).
    """
    peer = remote_node_id(connection)
    send, recv = bi.send(), bi.recv()
    wait = (
        0.0 if membership.is_member(peer) else limiter.retry_after(peer)
    )  # members are not held back
    if wait:
        limiter.peer_log.event(
            "joins refused during back-off",
            peer,
            "refused join from %s: in back-off for %.0f s",
            peer[:10],
            wait,
        )
        await send_model(
            send,
            JoinRefused(
                reason=f"too many failed joins: try again in {wait:.0f} s", retry_after=wait
            ),
        )
        await send.finish()
        return
    if membership.is_removed(peer):
        log.info("refused join from %s: removed from this node's members", peer[:10])
        await _refuse(send, "this node removed you from its members")
        return
    try:
        with trio.move_on_after(JOIN_TIMEOUT_S):
            failure = await _verify_joiner(membership, peer, send, recv, on_welcome)
            if failure:
                limiter.failed(peer, failure)
            else:
                limiter.succeeded(peer)
            return
    except FrameError as exc:
        limiter.failed(peer, str(exc))
        raise
    limiter.failed(peer, f"handshake not complete within {JOIN_TIMEOUT_S:g} s")
    raise FrameError(f"join handshake not complete within {JOIN_TIMEOUT_S:g} s")


async def _verify_joiner(
    membership: Membership,
    peer: NodeId,
    send: iroh.SendStream,
    recv: iroh.RecvStream,
    on_welcome: Callable[[NodeId, bool], None] | None,
) -> str | None:
    """The host's half of the handshake; returns why the peer was refused, None when it joined
    or the refusal was the host's own doing (it could not record the member: no back-off)."""
    request = await recv_model(recv, JoinRequest, _MAX_REQUEST_FRAME)
    if request.cluster_id != membership.cluster.cluster_id or request.addr.node_id != peer:
        await _refuse(send, "this node belongs to another cluster")
        return "another cluster"
    challenge = os.urandom(16).hex()
    await send_model(send, JoinChallenge(nonce=challenge))
    answer = await recv_model(recv, JoinProof, _MAX_REQUEST_FRAME)
    expected = proof(membership.cluster, b"member", peer, membership.self_id, challenge)
    if not hmac.compare_digest(answer.proof, expected):
        await _refuse(send, "wrong join secret")
        return "wrong join secret"
    known = [m.addr for m in membership.members.values() if m.addr.node_id != peer]
    joined = not membership.is_member(peer)
    try:
        membership.admit(request.addr)
    except OSError as exc:
        log.warning("refused join from %s: cannot write %s: %s", peer[:10], MEMBERS_FILE, exc)
        await _refuse(
            send,
            "the host's disk is full"
            if disk_full(exc)
            else f"the host cannot record members ({exc.strerror})",
        )
        return None
    if joined:
        log.info("member %s joined", peer[:10])
    new_session = membership.greeted(peer, request.session)
    if on_welcome is not None:
        on_welcome(peer, new_session)
    host_proof = proof(membership.cluster, b"host", membership.self_id, peer, request.nonce)
    await send_model(send, JoinWelcome(proof=host_proof, members=known, session=membership.session))
    await send.finish()
    return None


async def _refuse(send: iroh.SendStream, reason: str) -> None:
    await send_model(send, JoinRefused(reason=reason))
    await send.finish()


async def join(
    membership: Membership,
    connection: iroh.Connection,
    self_addr: PeerAddr,
    cluster: ClusterIdentity | None = None,
) -> JoinWelcome:
    """Client side: prove our membership to the node at the other end; the welcome lists the
    members it knows and its session.

    `cluster` proves knowledge of another cluster's secret (a ticket's) without adopting it: the
    caller switches only once this returns, so a failed join changes nothing.
    """
    cluster = cluster or membership.cluster
    me = membership.self_id
    host = remote_node_id(connection)
    bi = await connection.open_bi()
    send, recv = bi.send(), bi.recv()
    nonce = os.urandom(16).hex()
    await send_model(
        send,
        JoinRequest(
            cluster_id=cluster.cluster_id, nonce=nonce, addr=self_addr, session=membership.session
        ),
    )
    reply = await recv_model(recv, ServerReply, _MAX_WELCOME_FRAME)
    if isinstance(reply, JoinRefused):
        raise JoinError(f"node {host[:10]} refused to admit us: {reply.reason}")
    if not isinstance(reply, JoinChallenge):
        raise JoinError(f"node {host[:10]} broke the join handshake")
    await send_model(send, JoinProof(proof=proof(cluster, b"member", me, host, reply.nonce)))
    await send.finish()
    welcome = await recv_model(recv, ServerReply, _MAX_WELCOME_FRAME)
    if isinstance(welcome, JoinRefused):
        raise JoinError(f"node {host[:10]} refused to admit us: {welcome.reason}")
    if not isinstance(welcome, JoinWelcome) or not hmac.compare_digest(
        welcome.proof, proof(cluster, b"host", host, me, nonce)
    ):
        raise JoinError(f"node {host[:10]} could not prove it knows the cluster secret")
    return welcome
