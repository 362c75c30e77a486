"""One iroh endpoint per node, and the ALPN router that hands each connection to its protocol.

Authorisation lives here, once, instead of in every protocol: the QUIC handshake authenticates
`remote_id()`, so the router asks `authorize(peer, alpn)` before a handler ever sees the
connection. Only ALPNs registered on the router are offered in the TLS handshake, so a peer
asking for any other protocol is refused by QUIC itself.

Strangers (peers that are not members) reach only the open protocols, and only within caps:
a few connections per peer id and a total for all strangers (ids cost nothing to make), a few
concurrent streams per connection, no uni streams. Every frame they send is small and must
arrive on time (see `framing`), so what strangers can make the node hold is bounded by
caps x frame limits, and members are never counted against those caps.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import iroh
import trio

from p2pnode.concurrency import collapse_groups
from p2pnode.ids import NodeId
from p2pnode.net import bridge
from p2pnode.net.addr import remote_node_id
from p2pnode.net.errors import iroh_message
from p2pnode.net.framing import (
    ERR_PROTOCOL,
    ERR_REFUSED,
    ERR_SHUTDOWN,
    FrameError,
    reset_quietly,
    stop_quietly,
)
from p2pnode.net.peerlog import PeerLog

log = logging.getLogger(__name__)

STRANGER_CONNECTIONS_PER_PEER = 4  # a join, and a few blob fetches of a ticket holder at once
STRANGER_CONNECTIONS = 16  # all strangers together: what a flood of fresh ids can hold
STRANGER_STREAMS = (
    4  # concurrent bi streams per stranger connection (the open protocols use 1 per request)
)

Authorizer = Callable[[NodeId, bytes], bool]


class ProtocolHandler(Protocol):
    """One protocol on the router, like iroh's `ProtocolHandler`: its ALPN, who may connect, and
    how it serves a connection. Each service implements it; the node only lists them.

    `handle` runs in the router's nursery for as long as the connection lives; an `IrohError` it
    raises ends that connection with one log line, anything else is a bug, logged, never fatal.
    There is no separate shutdown: `handle` returns when its connection closes (closing the
    endpoint closes them all) and is cancelled with the router's nursery.
    """

    @property
    def alpn(self) -> bytes: ...

    @property
    def open_to_strangers(self) -> bool:
        """Whether non-members reach `handle` (within the stranger caps), not only members."""
        ...

    async def handle(self, connection: iroh.Connection) -> None: ...


def relay_mode(setting: str) -> iroh.RelayMode:
    """`--relay default|disabled|URL` as the bindings' relay mode."""
    if setting == "disabled":
        return iroh.RelayMode.disabled()
    if setting == "default":
        return iroh.RelayMode.default_mode()
    return iroh.RelayMode.custom_from_urls([setting])


async def bind_endpoint(
    secret_key: iroh.SecretKey,
    bind_addr: str,
    relay: str,
    alpns: list[bytes],
    preferred_port: int | None = None,
) -> iroh.Endpoint:
    """Bind the node's endpoint. With relays disabled nothing is contacted (tests, offline LANs).

    An address with port 0 ("any port") first tries `preferred_port`, the port of the previous run,
    so that tickets printed before a restart keep working; when another program holds it, any free
    port will do (one log line). An explicit port is used as given.
    """
    bridge.install()
    preset = iroh.preset_minimal() if relay == "disabled" else iroh.preset_n0()

    async def bind(addr: str) -> iroh.Endpoint:
        options = iroh.EndpointOptions(
            preset=preset,
            bind_addr=addr,
            secret_key=secret_key.to_bytes(),
            alpns=alpns,
            relay_mode=relay_mode(relay),
        )
        return await iroh.Endpoint.bind(options)

    host, _, port = bind_addr.rpartition(":")
    if port == "0" and preferred_port:
        try:
            return await bind(f"{host}:{preferred_port}")
        except iroh.IrohError as exc:
            log.warning(
                "UDP port %d of the last run is not available (%s); bound a fresh port, "
                "so tickets printed before no longer reach this node",
                preferred_port,
                iroh_message(exc),
            )
    return await bind(bind_addr)


def bound_port(endpoint: iroh.Endpoint) -> int:
    """The endpoint's first (IPv4 unless bound to IPv6 only) UDP port: the one its tickets carry."""
    return int(endpoint.bound_sockets()[0].rpartition(":")[2])


def configured_relay_url(relay: str) -> str | None:
    """The relay URL to advertise in tickets before the endpoint has picked a home relay."""
    if relay == "disabled":
        return None
    urls = relay_mode(relay).relay_map().urls()
    return sorted(urls)[0] if urls else None


@dataclass(frozen=True)
class _Admission:
    """What the router decided about a connection, read by `serve_streams` running inside it."""

    streams: int | None  # concurrent streams allowed; None: as many as QUIC grants (members)
    peer_log: PeerLog | None


# Set by the router in each connection's task, so the stream loop a handler runs knows its caps.
_OUTSIDE_ROUTER = _Admission(None, None)  # frozen, so one default serves every context
_admission: ContextVar[_Admission] = ContextVar("admission", default=_OUTSIDE_ROUTER)


class Router:
    """Accepts incoming connections and runs each ALPN's handler in the router's nursery.

    `peer_log` aggregates what peers cause; the router runs it, and protocols may share it.
    """

    def __init__(
        self,
        endpoint: iroh.Endpoint,
        authorize: Authorizer,
        handlers: Sequence[ProtocolHandler],
        peer_log: PeerLog,
    ) -> None:
        self._endpoint = endpoint
        self._authorize = authorize
        self._routes = {handler.alpn: handler for handler in handlers}
        self._live: dict[NodeId, int] = {}
        self._strangers: dict[NodeId, int] = {}
        self.refused = 0
        self.peer_log = peer_log
        endpoint.set_alpns(list(self._routes))

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.peer_log.run)
            async with trio.open_nursery() as connections:
                while (
                    incoming := await self._endpoint.accept_next()
                ) is not None:  # None: endpoint closed
                    connections.start_soon(self._handle, incoming)
            nursery.cancel_scope.cancel()

    async def _handle(self, incoming: iroh.Incoming) -> None:
        try:
            connection = await (await incoming.accept()).connect()
        except iroh.IrohError as exc:
            self.peer_log.event(
                "incoming connections failed during the handshake",
                "?",
                "incoming connection failed during handshake: %s",
                iroh_message(exc),
            )
            return
        alpn = connection.alpn()
        peer = remote_node_id(connection)
        route = self._routes.get(alpn)
        member = route is not None and self._authorize(peer, alpn)
        if route is None or not (member or route.open_to_strangers):
            self._refuse(
                connection,
                peer,
                "not a cluster member",
                b"not a cluster member: join with a ticket first",
            )
            return
        if not member and not self._admit_stranger(connection, peer):
            return
        self._live[peer] = self._live.get(peer, 0) + 1
        _admission.set(_Admission(None if member else STRANGER_STREAMS, self.peer_log))
        try:
            if member:
                await route.handle(connection)
            else:
                await _without_uni_streams(connection, route)
        except iroh.IrohError as exc:
            log.info(
                "connection from %s on %s ended: %s",
                peer[:10],
                alpn.decode(errors="replace"),
                iroh_message(exc),
            )
        except Exception:  # a bug in one protocol handler must not take the node down
            log.exception("protocol handler failed on a connection from %s", peer[:10])
        finally:
            _forget(self._live, peer)
            if not member:
                _forget(self._strangers, peer)
            connection.close(ERR_SHUTDOWN, b"done")

    def _admit_stranger(self, connection: iroh.Connection, peer: NodeId) -> bool:
        """Count a stranger's connection against the caps, or refuse it; admitted, few streams.

        QUIC granted 100 streams of each kind at the handshake (the bindings do not let us configure
        less) and cannot take them back: lowering the limit withholds new ones, and `serve_streams`
        closes a connection whose first burst opens more than the cap.
        """
        if self._strangers.get(peer, 0) >= STRANGER_CONNECTIONS_PER_PEER:
            self._refuse(
                connection,
                peer,
                "too many connections from one stranger",
                b"busy: too many connections from you",
            )
            return False
        if sum(self._strangers.values()) >= STRANGER_CONNECTIONS:
            self._refuse(
                connection, peer, "too many connections from strangers", b"busy: try again later"
            )
            return False
        self._strangers[peer] = self._strangers.get(peer, 0) + 1
        connection.set_max_concurrent_bi_streams(STRANGER_STREAMS)
        connection.set_max_concurrent_uni_streams(0)
        return True

    def _refuse(self, connection: iroh.Connection, peer: NodeId, why: str, reason: bytes) -> None:
        self.refused += 1
        alpn = connection.alpn().decode(errors="replace")
        self.peer_log.event(
            f"refused connections ({why})", peer, "refused %s on %s: %s", peer[:10], alpn, why
        )
        connection.close(ERR_REFUSED, reason)

    def connected_peers(self) -> set[NodeId]:
        return set(self._live)


def _forget(counts: dict[NodeId, int], peer: NodeId) -> None:
    counts[peer] -= 1
    if not counts[peer]:
        del counts[peer]


async def _without_uni_streams(connection: iroh.Connection, handler: ProtocolHandler) -> None:
    """Run a stranger's connection, stopping every uni stream it opens: the open protocols use
    none, and an unread stream would keep what QUIC buffered for it."""

    async def stop_uni_streams() -> None:
        while True:
            try:
                await stop_quietly(await connection.accept_uni())
            except iroh.IrohError:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_uni_streams)
        await handler.handle(connection)
        nursery.cancel_scope.cancel()


StreamHandler = Callable[[iroh.Connection, iroh.BiStream], Awaitable[None]]


async def serve_streams(connection: iroh.Connection, handle_stream: StreamHandler) -> None:
    """Run `handle_stream` for every bi stream the peer opens, until the connection closes.

    At most the connection's stream cap run at once (see `Router`): a peer opening more loses
    the connection, and with it whatever QUIC buffered for its streams. A peer that breaks the
    framing gets that stream reset and a log line (aggregated); the connection and the node
    carry on.
    """
    admission = _admission.get()
    running = 0

    async def guarded(bi: iroh.BiStream) -> None:
        nonlocal running
        try:
            await _guarded_stream(
                connection,
                bi,
                handle_stream,
                admission.peer_log,
                stranger=admission.streams is not None,
            )
        finally:
            running -= 1

    async with trio.open_nursery() as nursery:
        while True:
            try:
                bi = await connection.accept_bi()
            except iroh.IrohError:
                return
            if admission.streams is not None and running >= admission.streams:
                _note(
                    admission.peer_log,
                    connection,
                    "connections closed for too many streams",
                    "closed connection from %s on %s: more than %d streams at once",
                    admission.streams,
                )
                connection.close(ERR_REFUSED, b"too many streams at once")
                return
            running += 1
            nursery.start_soon(guarded, bi)


def _note(
    peer_log: PeerLog | None,
    connection: iroh.Connection,
    kind: str,
    message: str,
    *args: object,
    level: int = logging.INFO,
) -> None:
    """Log what a peer did (`message` gets the peer and the ALPN first), aggregated when a
    router runs."""
    peer = connection.remote_id().fmt_short()
    args = (peer, connection.alpn().decode(errors="replace"), *args)
    if peer_log is None:
        log.log(level, message, *args)
    else:
        peer_log.event(kind, peer, message, *args, level=level)


async def _guarded_stream(
    connection: iroh.Connection,
    bi: iroh.BiStream,
    handle_stream: StreamHandler,
    peer_log: PeerLog | None,
    *,
    stranger: bool = False,
) -> None:
    """Run one stream's handler; broken framing resets the stream, and a stranger's whole
    connection: nothing a stranger sends needs a second chance, and closing drops at once what
    QUIC buffered for its other streams (measured: 2,000 256 KiB half frames from 100 ids cost
    +23-55 MB with resets alone, +12-14 MB with the close)."""
    try:
        with collapse_groups():
            await handle_stream(connection, bi)
    except FrameError as exc:
        _note(
            peer_log,
            connection,
            "streams reset for broken framing",
            "reset stream from %s on %s: %s",
            exc,
            level=logging.WARNING,
        )
        await reset_quietly(bi)
        if stranger:
            connection.close(ERR_PROTOCOL, b"broken framing")
    except iroh.IrohError as exc:
        _note(
            peer_log,
            connection,
            "streams ended by an error",
            "stream from %s on %s ended: %s",
            iroh_message(exc),
        )
    except Exception:  # a bug in one protocol handler must not take the node down
        log.exception(
            "protocol handler failed on a stream from %s", connection.remote_id().fmt_short()
        )
        await reset_quietly(bi)


CLOSE_GRACE_S = 1.0


async def close_endpoint(endpoint: iroh.Endpoint) -> None:
    """Close gracefully, but not for long: after an abandoned dial, iroh's close waits ~3 s
    for the half-open connection to time out, which nobody leaving should have to sit through."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S):
        await endpoint.close()
