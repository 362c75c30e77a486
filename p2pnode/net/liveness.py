"""Knowing within seconds that a peer is gone, and redialling it without flooding the log.

The iroh 1.2 bindings expose no keep-alive interval and no idle timeout: `EndpointOptions`
takes a preset, bind address, key, ALPNs and relay mode only. iroh itself sends a keep-alive
every 5 s and closes a silent connection only after its idle timeout, so a cut peer looked
connected for tens of seconds and work sent on its connection waited as long. `Liveness` checks
every watched connection each second: when nothing arrived since the last check it sends an
empty datagram, which the peer's QUIC stack acknowledges without its application; a connection
silent for `SILENT_LIMIT_S` is closed, which fails every stream on it at once.

`Redial` is the sans-IO bookkeeping of members that are down: exponential back-off between
redials, capped, and one transition (lost, back) per outage for the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import iroh
import trio

from p2pnode.ids import NodeId
from p2pnode.net.addr import remote_node_id

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0
SILENT_LIMIT_S = 4.0  # a few unanswered probes; iroh's own keep-alive alone comes every 5 s
ERR_SILENT = 4  # application close code: the peer stopped answering


@dataclass
class _Watched:
    connection: iroh.Connection
    peer: NodeId
    received: int
    heard_at: float


class Liveness:
    """Probes every watched connection; closes the silent ones and reports their peer lost."""

    def __init__(self, on_silent: Callable[[NodeId], None]) -> None:
        self._on_silent = on_silent
        self._watched: dict[int, _Watched] = {}

    def watch(self, connection: iroh.Connection) -> None:
        peer = remote_node_id(connection)
        received = connection.stats().udp_rx_datagrams
        self._watched[connection.stable_id()] = _Watched(
            connection, peer, received, trio.current_time()
        )

    def unwatch(self, connection: iroh.Connection) -> None:
        self._watched.pop(connection.stable_id(), None)

    def close_peer(self, peer: NodeId, reason: bytes) -> None:
        """Close every watched connection with `peer` (a removed member), incoming ones included."""
        for key, watched in list(self._watched.items()):
            if watched.peer == peer:
                del self._watched[key]
                watched.connection.close(ERR_SILENT, reason)

    async def run(self) -> None:
        while True:
            await trio.sleep(CHECK_EVERY_S)
            self.check(trio.current_time())

    def check(self, now: float) -> None:
        silent: set[NodeId] = set()
        for key, watched in list(self._watched.items()):
            connection = watched.connection
            if connection.close_reason() is not None:
                del self._watched[key]
                continue
            received = connection.stats().udp_rx_datagrams
            if received != watched.received:
                watched.received, watched.heard_at = received, now
            elif now - watched.heard_at >= SILENT_LIMIT_S:
                del self._watched[key]
                connection.close(ERR_SILENT, b"no answer")
                silent.add(watched.peer)
            else:
                try:
                    connection.send_datagram(b"")
                except iroh.IrohError:
                    pass  # no datagram support or closing: iroh's keep-alive still counts
        for peer in silent:
            self._on_silent(peer)


REDIAL_FIRST_S = 1.0
REDIAL_CAP_S = 600.0


@dataclass
class _Down:
    since: float
    retry_at: float
    delay: float


class Redial:
    """Members that are down and when to try them next (injected clock, no I/O)."""

    def __init__(self, first_s: float = REDIAL_FIRST_S, cap_s: float = REDIAL_CAP_S) -> None:
        self._first = first_s
        self._cap = cap_s
        self._down: dict[NodeId, _Down] = {}
        self._reached_at: dict[NodeId, float] = {}

    def failed(self, peer: NodeId, now: float, tried_at: float | None = None) -> bool:
        """A dial begun at `tried_at` failed, or the peer went silent; True when it was not down yet
        (log its loss). A dial begun before we last heard from the peer says nothing new."""
        if tried_at is not None and tried_at < self._reached_at.get(peer, float("-inf")):
            return False
        down = self._down.get(peer)
        if down is None:
            self._down[peer] = _Down(since=now, retry_at=now + self._first, delay=self._first)
            return True
        down.delay = min(down.delay * 2, self._cap)
        down.retry_at = now + down.delay
        return False

    def reached(self, peer: NodeId, now: float) -> bool:
        """We heard from the peer; True when it was down (log its return)."""
        self._reached_at[peer] = now
        return self._down.pop(peer, None) is not None

    def forget(self, peer: NodeId) -> None:
        self._down.pop(peer, None)
        self._reached_at.pop(peer, None)

    def is_down(self, peer: NodeId) -> bool:
        return peer in self._down

    def due(self, now: float) -> list[NodeId]:
        """Members to redial now; each is not due again until its redial has failed or succeeded."""
        due = [peer for peer, down in self._down.items() if down.retry_at <= now]
        for peer in due:
            self._down[peer].retry_at = float("inf")
        return due
