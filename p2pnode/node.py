"""The node: one endpoint, one router, and every service running in one nursery."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import iroh
import trio
from pydantic import BaseModel

import tickets
from p2pnode.blobs.protocol import BLOBS_ALPN
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import BlobStore, StoreError
from p2pnode.config import Settings
from p2pnode.fsutil import save_model
from p2pnode.identity import load_or_create_secret_key
from p2pnode.membership import JOIN_ALPN, ClusterIdentity, JoinError, Membership, PeerAddr, handle_join, join
from p2pnode.net.dialer import Dialer, PeerUnreachable
from p2pnode.net.endpoint import Router, bind_endpoint, close_endpoint, configured_relay_url, serve_streams
from p2pnode.net.framing import FrameError

log = logging.getLogger(__name__)

NODE_FILE = "node.json"


class NodeInfo(BaseModel):
    """What `p2pnode start` prints and writes to node.json, so scripts and the CLI can find the node."""

    id: str
    ticket: str
    api_url: str
    pid: int


class MemberStatus(BaseModel):
    id: str
    addresses: list[str]
    relay_url: str | None
    connected: bool
    last_seen: float


class NodeStatus(BaseModel):
    id: str
    cluster_id: str
    addresses: list[str]
    relay_url: str | None
    api_url: str
    uptime_s: float
    members: list[MemberStatus]
    refused_connections: int


class StartupError(Exception):
    """The node cannot start or cannot join; the message says why, for a person."""


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_url = ""
        self._started = time.time()

    async def run(
        self, *, join_ticket: tickets.JoinTicket | None = None, task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from p2pnode.api.server import serve_api

        data_dir = self.settings.data_dir
        try:
            key = load_or_create_secret_key(data_dir)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use data folder {data_dir}: {exc}") from None
        self.id = key.public().to_bytes().hex()
        self.membership = Membership(data_dir, self.id)
        try:
            self.endpoint = await bind_endpoint(key, self.settings.bind, self.settings.relay, [JOIN_ALPN])
        except iroh.IrohError as exc:
            raise StartupError(f"cannot bind {self.settings.bind}: {exc.message()}") from None
        self.router = Router(self.endpoint, lambda peer, _alpn: self.membership.is_member(peer))
        self.router.register(JOIN_ALPN, self._serve_join, open_to_all=True)
        self.dialer = Dialer(self.endpoint, self._introduce, self.settings.connect_timeout_s)
        try:
            store = await BlobStore.open(self.settings.blobs_dir)
        except (OSError, StoreError) as exc:
            raise StartupError(f"cannot open the blob store at {self.settings.blobs_dir}: {exc}") from None
        self.blobs = BlobService(store, key, self.membership, self.dialer, self.addr)
        self.router.register(
            BLOBS_ALPN, lambda conn: serve_streams(conn, self.blobs.provider.handle_stream), open_to_all=True
        )
        try:
            async with trio.open_nursery() as nursery:
                self.background = nursery
                nursery.start_soon(self.router.serve)
                self.api_url = await nursery.start(serve_api, self)
                if join_ticket is not None:
                    await self.join(join_ticket)
                info = NodeInfo(id=self.id, ticket=self.join_ticket(), api_url=self.api_url, pid=os.getpid())
                save_model(data_dir / NODE_FILE, info)
                nursery.start_soon(self._greet_members)
                task_status.started(info)
        finally:
            store.close()
            self.dialer.close_all()
            await close_endpoint(self.endpoint)

    # -- identity and membership -------------------------------------------------------------

    def addr(self) -> PeerAddr:
        return PeerAddr.from_endpoint(self.endpoint.addr(), configured_relay_url(self.settings.relay))

    def join_ticket(self) -> str:
        return self.membership.join_ticket(self.addr())

    async def join(self, ticket: tickets.JoinTicket) -> None:
        """Become a member of the ticket's cluster through the node that issued it."""
        self.membership.adopt(
            ClusterIdentity(cluster_id=ticket.cluster_id.hex(), join_secret=ticket.join_secret.hex())
        )
        host = PeerAddr.from_ticket(ticket.node)
        try:
            await self._introduce(host)
        except (PeerUnreachable, JoinError, FrameError, iroh.IrohError) as exc:
            message = exc.message() if isinstance(exc, iroh.IrohError) else str(exc)
            raise StartupError(f"could not join through {host.node_id[:10]}: {message}") from None

    async def _introduce(self, peer: PeerAddr) -> None:
        connection = await self.dialer.dial(peer, JOIN_ALPN)
        try:
            others = await join(self.membership, connection, self.addr())
        finally:
            connection.close(0, b"joined")
        self.membership.admit(peer)
        for other in others:
            if not self.membership.is_member(other.node_id):
                self.membership.admit(other)

    async def _serve_join(self, connection: iroh.Connection) -> None:
        await serve_streams(connection, lambda conn, bi: handle_join(self.membership, conn, bi))

    async def _greet_members(self) -> None:
        """After a restart, re-prove membership to every known member so they see us as back."""
        async with trio.open_nursery() as nursery:
            for member in list(self.membership.members.values()):
                nursery.start_soon(self._greet, member.addr)

    async def _greet(self, peer: PeerAddr) -> None:
        try:
            await self._introduce(peer)
        except (PeerUnreachable, JoinError, FrameError, iroh.IrohError) as exc:
            log.info("member %s not reachable now: %s", peer.node_id[:10], exc)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        addr = self.addr()
        connected = self.dialer.connected_peers() | self.router.connected_peers()
        return NodeStatus(
            id=self.id,
            cluster_id=self.membership.cluster.cluster_id,
            addresses=addr.direct_addresses,
            relay_url=addr.relay_url,
            api_url=self.api_url,
            uptime_s=time.time() - self._started,
            members=[
                MemberStatus(
                    id=node_id,
                    addresses=m.addr.direct_addresses,
                    relay_url=m.addr.relay_url,
                    connected=node_id in connected,
                    last_seen=m.last_seen,
                )
                for node_id, m in sorted(self.membership.members.items())
            ],
            refused_connections=self.router.refused,
        )


def read_node_info(data_dir: Path) -> NodeInfo | None:
    path = data_dir / NODE_FILE
    return NodeInfo.model_validate_json(path.read_bytes()) if path.exists() else None
