"""Outgoing connections, one per (peer, protocol), reused while they stay open."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import iroh
import trio

import p2pnode
from p2pnode.ids import NodeId
from p2pnode.net.addr import PeerAddr
from p2pnode.net.errors import iroh_message, no_common_protocol, version_mismatch
from p2pnode.net.framing import FrameError
from p2pnode.net.liveness import Liveness

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0
T = TypeVar("T")


class PeerUnreachable(Exception):
    """No connection could be made to a peer within the timeout."""


class ProtocolMismatch(PeerUnreachable):
    """The peer answered but speaks none of the protocols asked for: it runs a version of p2pnode
    on the other side of an ALPN bump. The message says which, and which node to upgrade."""


class IntroductionRefused(Exception):
    """The peer did not accept our introduction (membership's `JoinError` is one)."""


PEER_ERRORS = (PeerUnreachable, IntroductionRefused, FrameError, iroh.IrohError)
"""What asking a peer anything can fail with: no answer, refused membership, broken framing,
transport."""


def describe(exc: BaseException) -> str:
    """One line for a person, for any of `PEER_ERRORS`."""
    return iroh_message(exc) if isinstance(exc, iroh.IrohError) else str(exc)


class Dialer:
    """Caches connections so protocols can open cheap streams instead of new QUIC handshakes.

    `introduce` runs once per peer per process before the first connection on a members-only
    protocol: it is the membership handshake that makes the peer accept us. Every dial reports
    its outcome to `on_dial(peer, alpn, error line or None, when the dial began)`, and
    `liveness` watches what it caches. A peer that speaks another version of the protocol
    answered (it is no error for `on_dial`); the dial raises `ProtocolMismatch`, logged once per
    peer and protocol, with the version `peer_version(peer)` knows from its heartbeat.
    """

    def __init__(
        self,
        endpoint: iroh.Endpoint,
        introduce: Callable[[PeerAddr], Awaitable[None]] | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        *,
        liveness: Liveness | None = None,
        on_dial: Callable[[NodeId, bytes, str | None, float], None] | None = None,
        peer_version: Callable[[NodeId], str | None] = lambda _peer: None,
    ) -> None:
        self._endpoint = endpoint
        self._timeout = connect_timeout_s
        self._introduce = introduce
        self._liveness = liveness
        self._on_dial = on_dial
        self._peer_version = peer_version
        self._mismatched: set[tuple[NodeId, bytes]] = set()
        """(peer, ALPN) whose mismatch was logged: once per peer and protocol, until it speaks it"""
        self._connections: dict[tuple[NodeId, bytes], iroh.Connection] = {}
        self._introduced: set[NodeId] = set()
        self._locks: defaultdict[NodeId, trio.Lock] = defaultdict(trio.Lock)

    async def connect(
        self, addr: PeerAddr, alpn: bytes, *, introduce: bool = True
    ) -> iroh.Connection:
        key = (addr.node_id, alpn)
        async with self._locks[addr.node_id]:
            cached = self._connections.get(key)
            if cached is not None and cached.close_reason() is None:
                return cached
            if introduce and self._introduce is not None and addr.node_id not in self._introduced:
                await self.introduce(addr)
            connection = await self.dial(addr, alpn)
            self._connections[key] = connection
            if self._liveness is not None:
                self._liveness.watch(connection)
            return connection

    async def request(
        self,
        addr: PeerAddr,
        alpn: bytes,
        exchange: Callable[[iroh.Connection], Awaitable[T]],
        *,
        idempotent: bool = False,
    ) -> T:
        """Run `exchange` on the cached connection; if a reused connection fails it, drop it and run
        `exchange` once more on a fresh one at once (the peer may have restarted since). An
        `idempotent` exchange is also run again when a fresh connection fails it: the peer may
        have applied it before the connection died, and running it twice must change nothing
        (otherwise the caller would wait out whatever the lost reply was to settle)."""
        key = (addr.node_id, alpn)
        reused = key in self._connections and self._connections[key].close_reason() is None
        connection = await self.connect(addr, alpn)
        try:
            return await exchange(connection)
        except (iroh.IrohError, FrameError) as exc:
            if not (reused or idempotent):
                raise
            log.info("connection to %s failed (%s); redialling", addr.node_id[:10], describe(exc))
            if self._connections.get(key) is connection:
                del self._connections[key]
            connection.close(0, b"failed")
        return await exchange(await self.connect(addr, alpn))

    async def introduce(self, addr: PeerAddr) -> None:
        """Run the membership handshake with `addr` and remember that it knows us."""
        assert self._introduce is not None, "this dialer has no membership handshake"
        await self._introduce(addr)
        self._introduced.add(addr.node_id)

    async def dial(self, addr: PeerAddr, alpn: bytes) -> iroh.Connection:
        """A fresh, uncached connection (the join handshake uses one of these)."""
        began, reason = trio.current_time(), f"no answer within {self._timeout:g} s"
        with trio.move_on_after(self._timeout):
            try:
                connection = await self._endpoint.connect(addr.to_endpoint(), alpn)
            except iroh.IrohError as exc:
                if no_common_protocol(exc):
                    self._report(addr.node_id, alpn, None, began)
                    raise self._mismatch(addr.node_id, alpn) from None
                reason = iroh_message(exc)
            else:
                self._mismatched.discard((addr.node_id, alpn))
                self._report(addr.node_id, alpn, None, began)
                return connection
        self._report(addr.node_id, alpn, reason, began)
        raise PeerUnreachable(f"cannot reach node {addr.node_id[:10]}: {reason}")

    def _mismatch(self, node_id: NodeId, alpn: bytes) -> ProtocolMismatch:
        line = version_mismatch(node_id, alpn, self._peer_version(node_id), p2pnode.__version__)
        if (node_id, alpn) not in self._mismatched:
            self._mismatched.add((node_id, alpn))
            log.warning("%s", line)
        return ProtocolMismatch(line)

    def _report(self, node_id: NodeId, alpn: bytes, error: str | None, began: float) -> None:
        if self._on_dial is not None:
            self._on_dial(node_id, alpn, error, began)

    def forget(
        self, node_id: NodeId, *, alpn: bytes | None = None, keep_introduction: bool = False
    ) -> None:
        """Drop cached connections to a peer (only the one for `alpn` if given: one protocol's
        trouble must not cut the others' requests in flight), so the next use re-dials; unless the
        peer still knows us (`keep_introduction`), the next use also re-introduces us."""
        if not keep_introduction:
            self._introduced.discard(node_id)
        for key in [k for k in self._connections if k[0] == node_id and alpn in (None, k[1])]:
            self._connections.pop(key).close(0, b"forgotten")

    def connected_peers(self) -> set[NodeId]:
        return {
            peer for (peer, _), conn in self._connections.items() if conn.close_reason() is None
        }

    def close_all(self) -> None:
        for connection in self._connections.values():
            connection.close(0, b"shutting down")
        self._connections.clear()
