"""The node: one endpoint, one router, and every service running in one nursery."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

import iroh
import trio
from pydantic import ValidationError

import tickets
from p2pnode.blobs.protocol import BLOBS_ALPN
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import BlobStore, GcResult, StoreError
from p2pnode.config import Settings
from p2pnode.executors.flawless import FlawlessClient, FlawlessExecutor
from p2pnode.executors.wasm import WasiExecutor
from p2pnode.gossip.service import GOSSIP_ALPN, GossipEvent, GossipService, Received
from p2pnode.jobs.announcements import JobAnnounced, JobFinished
from p2pnode.jobs.control import JOBS_ALPN, ControlClient
from p2pnode.jobs.service import JobService
from p2pnode.jobs.store import JobStore
from p2pnode.api.schemas import MemberStatus, NodeInfo, NodeStatus
from p2pnode.jobs.worker import Worker
from p2pnode.fsutil import save_model
from p2pnode.identity import load_or_create_secret_key
from p2pnode.membership import JOIN_ALPN, ClusterIdentity, DamagedStateError, Membership, PeerAddr, handle_join, join
from p2pnode.net.dialer import PEER_ERRORS, Dialer, describe
from p2pnode.net.endpoint import Router, bind_endpoint, close_endpoint, configured_relay_url, serve_streams

log = logging.getLogger(__name__)

NODE_FILE = "node.json"
FLAWLESS_PROBE_S = 30.0
GC_INTERVAL_S = 600.0


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

        settings = self.settings
        key = self._identity()
        try:
            self.membership = Membership(settings.data_dir, self.id)
        except DamagedStateError as exc:
            raise StartupError(str(exc)) from None
        async with contextlib.AsyncExitStack() as cleanup:  # whatever started is stopped, even on a failed start
            try:
                self.endpoint = await bind_endpoint(key, settings.bind, settings.relay, [JOIN_ALPN])
            except iroh.IrohError as exc:
                raise StartupError(f"cannot bind {settings.bind}: {exc.message()}") from None
            cleanup.push_async_callback(close_endpoint, self.endpoint)
            self.router = Router(self.endpoint, lambda peer, _alpn: self.membership.is_member(peer))
            self.dialer = Dialer(self.endpoint, self._introduce, settings.connect_timeout_s)
            cleanup.callback(self.dialer.close_all)
            try:
                store = await BlobStore.open(settings.blobs_dir)
            except (OSError, StoreError) as exc:
                raise StartupError(f"cannot open the blob store at {settings.blobs_dir}: {exc}") from None
            cleanup.callback(store.close)
            self.blobs = BlobService(store, key, self.membership, self.dialer, self.addr)
            self.gossip = GossipService(key, self.membership, self.dialer, self.addr)
            self.jobs = self._jobs_service(settings)
            cleanup.callback(self.jobs.store.close)
            self.router.register(JOIN_ALPN, self._serve_join, open_to_all=True)
            self.router.register(BLOBS_ALPN, lambda c: serve_streams(c, self.blobs.provider.handle_stream), open_to_all=True)
            self.router.register(GOSSIP_ALPN, self.gossip.handle_connection)
            self.router.register(JOBS_ALPN, lambda c: serve_streams(c, self.jobs.control.handle_stream))
            async with trio.open_nursery() as nursery:
                self.background = nursery
                nursery.start_soon(self.router.serve)
                self.api_url = await nursery.start(serve_api, self)
                if join_ticket is not None:
                    await self.join(join_ticket)
                await nursery.start(self.gossip.run)
                nursery.start_soon(self._follow_gossip, self.gossip.subscribe())
                await nursery.start(self.jobs.run)
                nursery.start_soon(self._watch_flawless)
                nursery.start_soon(self._collect_garbage_periodically)
                info = NodeInfo(id=self.id, ticket=self.join_ticket(), api_url=self.api_url, pid=os.getpid())
                save_model(settings.data_dir / NODE_FILE, info)
                nursery.start_soon(self._greet_members)
                task_status.started(info)

    def _identity(self) -> iroh.SecretKey:
        try:
            key = load_or_create_secret_key(self.settings.data_dir)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use data folder {self.settings.data_dir}: {exc}") from None
        self.id = key.public().to_bytes().hex()
        return key

    def _jobs_service(self, settings: Settings) -> JobService:
        path = settings.data_dir / "jobs.sqlite"
        try:
            store = JobStore(path)
        except sqlite3.Error as exc:
            raise StartupError(f"cannot open the job database {path}: {exc}") from None
        self.flawless = FlawlessExecutor(FlawlessClient(settings.flawless_url, settings.flawless_token))
        control = ControlClient(self.dialer.connect)
        worker = Worker(
            self.id, {"wasi": WasiExecutor()}, self.blobs, control, self.peer_addr, settings.data_dir / "work", settings.max_jobs
        )
        service = JobService(self.id, store, self.blobs, self.gossip, worker, self.addr, self.peer_addr, settings.lease_s)
        control.answer_locally(self.id, service.control)
        return service

    async def _watch_flawless(self) -> None:
        """Offer the `flawless` executor exactly while a local Flawless answers."""
        executors = self.jobs.worker.executors
        while True:
            if await self.flawless.available():
                if "flawless" not in executors:
                    log.info("Flawless answering at %s: taking flawless jobs", self.settings.flawless_url)
                executors["flawless"] = self.flawless
            elif executors.pop("flawless", None) is not None:
                log.warning("Flawless at %s stopped answering: no longer taking flawless jobs", self.settings.flawless_url)
            await trio.sleep(FLAWLESS_PROBE_S)

    async def _follow_gossip(self, events: trio.MemoryReceiveChannel[GossipEvent]) -> None:
        async for event in events:
            if not isinstance(event, Received):
                continue
            try:
                if event.kind == JobAnnounced.KIND:
                    self.jobs.on_announced(JobAnnounced.model_validate(event.payload))
                elif event.kind == JobFinished.KIND:
                    self.jobs.on_finished(JobFinished.model_validate(event.payload))
            except ValidationError as exc:
                log.warning("ignored a malformed %s announcement: %s", event.kind, exc.errors()[0]["msg"])

    async def collect_garbage(self) -> GcResult:
        """Drop unpinned, untagged blobs nobody uses, keeping everything a live job still needs."""
        return await self.blobs.store.gc(protected=self.jobs.protected_blobs())

    async def _collect_garbage_periodically(self) -> None:
        while True:
            await trio.sleep(GC_INTERVAL_S)
            result = await self.collect_garbage()
            if result.removed or result.removed_partials:
                log.info("blob GC freed %d bytes (%d blobs)", result.freed_bytes, len(result.removed))

    def peer_addr(self, node_id: str) -> PeerAddr | None:
        if node_id == self.id:
            return self.addr()
        member = self.membership.members.get(node_id)
        return member.addr if member else None

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
            await self.dialer.introduce(host)
        except PEER_ERRORS as exc:
            raise StartupError(f"could not join through {host.node_id[:10]}: {describe(exc)}") from None

    async def _introduce(self, peer: PeerAddr) -> None:
        """Prove our membership to `peer` (or join through it); learn the members it knows."""
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
            await self.dialer.introduce(peer)
        except PEER_ERRORS as exc:
            log.info("member %s not reachable now: %s", peer.node_id[:10], describe(exc))

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
            gossip=self.gossip.stats(),
            jobs=self.jobs.worker.status(),
        )


def read_node_info(data_dir: Path) -> NodeInfo | None:
    path = data_dir / NODE_FILE
    return NodeInfo.model_validate_json(path.read_bytes()) if path.exists() else None
