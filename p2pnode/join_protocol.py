"""The join handshake as a protocol on the router: the one protocol every stranger may speak,
since presenting a join ticket is how a stranger becomes a member."""

from __future__ import annotations

from collections.abc import Callable

import iroh

from p2pnode.ids import NodeId
from p2pnode.membership import JOIN_ALPN, JoinLimiter, Membership, handle_join
from p2pnode.net.endpoint import serve_streams


class JoinProtocol:
    alpn = JOIN_ALPN
    open_to_strangers = True

    def __init__(
        self,
        membership: Membership,
        limiter: JoinLimiter,
        on_welcome: Callable[[NodeId, bool], None],
    ) -> None:
        self._membership = membership
        self._limiter = limiter
        self._on_welcome = on_welcome

    async def handle(self, connection: iroh.Connection) -> None:
        await serve_streams(connection, self._handle_stream)

    async def _handle_stream(self, connection: iroh.Connection, bi: iroh.BiStream) -> None:
        await handle_join(self._membership, self._limiter, connection, bi, self._on_welcome)
