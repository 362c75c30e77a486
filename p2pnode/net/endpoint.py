"""One iroh endpoint per node, and the ALPN router that hands each connection to its protocol.

Authorisation lives here, once, instead of in every protocol: the QUIC handshake authenticates
`remote_id()`, so the router asks `authorize(peer, alpn)` before a handler ever sees the
connection. Only ALPNs registered on the router are offered in the TLS handshake, so a peer
asking for any other protocol is refused by QUIC itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import iroh
import trio

from p2pnode.concurrency import collapse_groups
from p2pnode.net import bridge
from p2pnode.net.errors import iroh_message
from p2pnode.net.framing import ERR_REFUSED, ERR_SHUTDOWN, FrameError, reset_quietly

log = logging.getLogger(__name__)

Handler = Callable[[iroh.Connection], Awaitable[None]]
Authorizer = Callable[[str, bytes], bool]


def relay_mode(setting: str) -> iroh.RelayMode:
    """`--relay default|disabled|URL` as the bindings' relay mode."""
    if setting == "disabled":
        return iroh.RelayMode.disabled()
    if setting == "default":
        return iroh.RelayMode.default_mode()
    return iroh.RelayMode.custom_from_urls([setting])


async def bind_endpoint(
    secret_key: iroh.SecretKey, bind_addr: str, relay: str, alpns: list[bytes], preferred_port: int | None = None
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
            preset=preset, bind_addr=addr, secret_key=secret_key.to_bytes(), alpns=alpns, relay_mode=relay_mode(relay)
        )
        return await iroh.Endpoint.bind(options)

    host, _, port = bind_addr.rpartition(":")
    if port == "0" and preferred_port:
        try:
            return await bind(f"{host}:{preferred_port}")
        except iroh.IrohError as exc:
            log.warning(
                "UDP port %d of the last run is not available (%s); bound a fresh port, so tickets printed before no longer reach this node",
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


@dataclass
class Route:
    handler: Handler
    open_to_all: bool  # the join handshake and the ticket-checked blob protocol


class Router:
    """Accepts incoming connections and runs each ALPN's handler in the router's nursery."""

    def __init__(self, endpoint: iroh.Endpoint, authorize: Authorizer) -> None:
        self._endpoint = endpoint
        self._authorize = authorize
        self._routes: dict[bytes, Route] = {}
        self._live: dict[str, int] = {}
        self.refused = 0

    def register(self, alpn: bytes, handler: Handler, *, open_to_all: bool = False) -> None:
        self._routes[alpn] = Route(handler, open_to_all)
        self._endpoint.set_alpns(list(self._routes))

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                incoming = await self._endpoint.accept_next()
                if incoming is None:
                    return  # endpoint closed
                nursery.start_soon(self._handle, incoming)

    async def _handle(self, incoming: iroh.Incoming) -> None:
        try:
            connection = await (await incoming.accept()).connect()
        except iroh.IrohError as exc:
            log.info("incoming connection failed during handshake: %s", iroh_message(exc))
            return
        alpn = connection.alpn()
        peer = connection.remote_id().to_bytes().hex()
        route = self._routes.get(alpn)
        if route is None or not (route.open_to_all or self._authorize(peer, alpn)):
            self.refused += 1
            log.info("refused %s on %s: not a cluster member", peer[:10], alpn.decode(errors="replace"))
            connection.close(ERR_REFUSED, b"not a cluster member: join with a ticket first")
            return
        self._live[peer] = self._live.get(peer, 0) + 1
        try:
            await route.handler(connection)
        except iroh.IrohError as exc:
            log.info("connection from %s on %s ended: %s", peer[:10], alpn.decode(errors="replace"), iroh_message(exc))
        except Exception:  # a bug in one protocol handler must not take the node down
            log.exception("protocol handler failed on a connection from %s", peer[:10])
        finally:
            self._live[peer] -= 1
            if not self._live[peer]:
                del self._live[peer]
            connection.close(ERR_SHUTDOWN, b"done")

    def connected_peers(self) -> set[str]:
        return set(self._live)


StreamHandler = Callable[[iroh.Connection, iroh.BiStream], Awaitable[None]]


async def serve_streams(connection: iroh.Connection, handle_stream: StreamHandler) -> None:
    """Run `handle_stream` for every bi stream the peer opens, until the connection closes.

    A peer that breaks the framing gets that stream reset and one log line; the connection
    and the node carry on.
    """
    async with trio.open_nursery() as nursery:
        while True:
            try:
                bi = await connection.accept_bi()
            except iroh.IrohError:
                return
            nursery.start_soon(_guarded_stream, connection, bi, handle_stream)


async def _guarded_stream(connection: iroh.Connection, bi: iroh.BiStream, handle_stream: StreamHandler) -> None:
    try:
        with collapse_groups():
            await handle_stream(connection, bi)
    except FrameError as exc:
        peer = connection.remote_id().fmt_short()
        log.warning("reset stream from %s on %s: %s", peer, connection.alpn().decode(errors="replace"), exc)
        await reset_quietly(bi)
    except iroh.IrohError as exc:
        log.info("stream from %s ended: %s", connection.remote_id().fmt_short(), iroh_message(exc))
    except Exception:  # a bug in one protocol handler must not take the node down
        log.exception("protocol handler failed on a stream from %s", connection.remote_id().fmt_short())
        await reset_quietly(bi)


CLOSE_GRACE_S = 1.0


async def close_endpoint(endpoint: iroh.Endpoint) -> None:
    """Close gracefully, but not for long: after an abandoned dial, iroh's close waits ~3 s
    for the half-open connection to time out, which nobody leaving should have to sit through."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE_S):
        await endpoint.close()
