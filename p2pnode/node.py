"""The node: one endpoint, one router, and every service running in one nursery."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import iroh
import trio
from pydantic import BaseModel, Field, ValidationError

import tickets
from p2pnode.apitoken import TokenError, load_or_create_token
from p2pnode.blobs.service import BlobService
from p2pnode.blobs.store import BlobStore, GcResult, StoreError
from p2pnode.config import Settings
from p2pnode.executors.base import MIB
from p2pnode.executors.flawless import FlawlessClient, FlawlessExecutor
from p2pnode.executors.registry import ExecutorRegistry
from p2pnode.executors.wasm import WasiExecutor
from p2pnode.fsutil import FolderInUse, lock_folder, make_private, save_model
from p2pnode.gossip.service import GossipService
from p2pnode.identity import load_or_create_secret_key
from p2pnode.ids import NodeId
from p2pnode.jobs.control import ControlClient
from p2pnode.jobs.service import JobService
from p2pnode.jobs.store import JobStore
from p2pnode.jobs.worker import Worker
from p2pnode.jobs.workers import Workers, heartbeat_of
from p2pnode.join_protocol import JoinProtocol
from p2pnode.membership import (
    JOIN_ALPN,
    ClusterIdentity,
    DamagedStateError,
    JoinError,
    JoinLimiter,
    Membership,
    join,
)
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr, node_id_of, remote_node_id
from p2pnode.net.dialer import PEER_ERRORS, Dialer, PeerUnreachable, describe
from p2pnode.net.endpoint import (
    ProtocolHandler,
    Router,
    bind_endpoint,
    bound_port,
    close_endpoint,
    configured_relay_url,
)
from p2pnode.net.errors import iroh_message
from p2pnode.net.liveness import REDIAL_CAP_S, Liveness, Redial
from p2pnode.net.peerlog import PeerLog
from p2pnode.status import DiskStatus, MemberStatus, NodeInfo, NodeStatus

log = logging.getLogger(__name__)

NODE_FILE = "node.json"
PORT_FILE = "endpoint.json"
DRAIN_FILE = "draining"
"""Present while the node is drained (`p2pnode drain`): a restart keeps claiming nothing."""
GC_INTERVAL_S = 600.0
RETENTION_INTERVAL_S = 300.0
REDIAL_TICK_S = 1.0


class BoundPort(BaseModel):
    """The UDP port the endpoint had, reused on the next start (DATA/endpoint.json)."""

    port: int = Field(ge=1, le=65535)


class StartupError(Exception):
    """The node cannot start or cannot join; the message says why, for a person."""


class ServeApi(Protocol):
    """Serves the node's local API and reports its URL (`p2pnode.api.app.serve_node_api`).

    The API lives a layer above the node, so the node is handed it rather than importing it."""

    async def __call__(self, node: Node, *, task_status: trio.TaskStatus[str]) -> None: ...


class Node:
    def __init__(
        self, settings: Settings, serve_api: ServeApi, *, clock: Callable[[], float] = time.time
    ) -> None:
        """`clock`: the job store's (job times, leases, retention); tests pass one they move."""
        self.settings = settings
        self._clock = clock
        self._serve_api = serve_api
        self.api_url = ""
        self._started = time.time()
        self.liveness = Liveness(self._went_silent)
        self.redial = Redial()
        self.metrics = Metrics()

    async def run(
        self,
        *,
        join_ticket: tickets.JoinTicket | None = None,
        task_status: trio.TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        settings = self.settings
        key = self._identity()
        if join_ticket is not None and join_ticket.node.node_id.hex() == self.id:
            raise StartupError(
                f"this join ticket was printed by this node ({self.id[:10]}) itself; "
                "to join a cluster, pass a ticket of another node"
            )
        try:
            lock = lock_folder(settings.data_dir)
        except FolderInUse as exc:
            raise StartupError(
                f"{exc}; stop it first, or start this one with another --data"
            ) from None
        except OSError as exc:
            raise StartupError(f"cannot use data folder {settings.data_dir}: {exc}") from None
        try:
            await self._run(key, join_ticket, task_status)
        finally:
            os.close(lock)

    async def _run(
        self,
        key: iroh.SecretKey,
        join_ticket: tickets.JoinTicket | None,
        task_status: trio.TaskStatus[NodeInfo],
    ) -> None:
        settings = self.settings
        try:
            self.membership = Membership(settings.data_dir, self.id)
        except DamagedStateError as exc:
            raise StartupError(str(exc)) from None
        async with (
            contextlib.AsyncExitStack() as cleanup
        ):  # whatever started is stopped, even on a failed start
            self.endpoint = await self._bind(key)
            cleanup.push_async_callback(close_endpoint, self.endpoint)
            peer_log = PeerLog(log)
            self.join_limiter = JoinLimiter(peer_log)
            self.dialer = Dialer(
                self.endpoint,
                self._introduce,
                settings.connect_timeout_s,
                liveness=self.liveness,
                on_dial=self._dialled,
                peer_version=lambda peer: self.workers.version_of(peer),
            )
            cleanup.callback(self.dialer.close_all)
            try:
                store = await BlobStore.open(settings.blobs_dir)
            except (OSError, StoreError) as exc:
                raise StartupError(
                    f"cannot open the blob store at {settings.blobs_dir}: {exc}"
                ) from None
            cleanup.callback(store.close)
            self.blobs = BlobService(
                store, key, self.membership, self.dialer, self.addr, self.metrics
            )
            self.gossip = GossipService(key, self.membership, self.dialer, self.addr)
            self.workers = Workers(
                self.id,
                self.gossip,
                lambda: heartbeat_of(
                    self.id, self.jobs.worker, self.executors.offered, self._started
                ),
            )
            self.jobs = self._jobs_service(settings)
            cleanup.callback(self.jobs.store.close)
            self.router = Router(
                self.endpoint,
                lambda peer, _alpn: self.membership.is_member(peer),
                [
                    JoinProtocol(self.membership, self.join_limiter, self._welcomed),
                    *(
                        _Watched(protocol, self.liveness, self._heard_from)
                        for protocol in (self.blobs, self.gossip, self.jobs)
                    ),
                ],
                peer_log,
            )
            async with trio.open_nursery() as nursery:
                self.background = nursery
                nursery.start_soon(self.membership.flush_periodically)
                nursery.start_soon(self.router.serve)
                nursery.start_soon(self.liveness.run)
                self.api_url = await nursery.start(self._serve_api, self)
                if join_ticket is not None:
                    await self.join(join_ticket)
                await nursery.start(self.gossip.run)
                await nursery.start(self.executors.run)
                await nursery.start(self.jobs.run)
                await nursery.start(self.workers.run)
                nursery.start_soon(self._collect_garbage_periodically)
                if settings.job_retention_days > 0:
                    nursery.start_soon(self._enforce_retention_periodically)
                info = NodeInfo(id=self.id, api_url=self.api_url, pid=os.getpid())
                save_model(settings.data_dir / NODE_FILE, info)
                nursery.start_soon(self._keep_members)
                task_status.started(info)

    def _identity(self) -> iroh.SecretKey:
        data_dir = self.settings.data_dir
        try:
            make_private(data_dir)  # it holds the node key, the cluster secret, the API token
            key = load_or_create_secret_key(data_dir)
            self.api_token = load_or_create_token(data_dir)
        except (OSError, ValueError, TokenError) as exc:
            raise StartupError(f"cannot use data folder {data_dir}: {exc}") from None
        self.id = node_id_of(key.public())
        return key

    async def _bind(self, key: iroh.SecretKey) -> iroh.Endpoint:
        """Bind, preferring the UDP port of the last run, so tickets printed before keep working."""
        path = self.settings.data_dir / PORT_FILE
        last = _last_port(path)
        try:
            endpoint = await bind_endpoint(
                key, self.settings.bind, self.settings.relay, [JOIN_ALPN], preferred_port=last
            )
        except iroh.IrohError as exc:
            raise StartupError(f"cannot bind {self.settings.bind}: {iroh_message(exc)}") from None
        port = bound_port(endpoint)
        if port != last:
            try:
                save_model(path, BoundPort(port=port))
            except OSError as exc:
                log.warning(
                    "cannot remember the UDP port in %s (%s): the next start picks a fresh one",
                    path,
                    exc.strerror,
                )
        return endpoint

    def _jobs_service(self, settings: Settings) -> JobService:
        path = settings.data_dir / "jobs.sqlite"
        try:
            store = JobStore(path, self._clock)
        except sqlite3.Error as exc:
            raise StartupError(f"cannot open the job database {path}: {exc}") from None
        self.flawless = FlawlessExecutor(
            FlawlessClient(settings.flawless_url, settings.flawless_token),
            maxima=settings.job_maxima,
        )
        wasi = WasiExecutor(
            maxima=settings.job_maxima,
            cache_dir=settings.data_dir / "compiled",
            cache_bytes=settings.compile_cache_mib * MIB,
            max_compile_s=settings.max_compile_s,
        )
        self.executors = ExecutorRegistry([wasi, self.flawless])
        control = ControlClient(self.dialer.request)
        worker = Worker(
            self.id,
            self.executors.offered,
            self.blobs,
            control,
            self.peer_addr,
            settings.data_dir / "work",
            settings.max_jobs,
            settings.labels,
            settings.data_dir / DRAIN_FILE,
            self.metrics,
        )
        service = JobService(
            self.id,
            store,
            self.blobs,
            self.gossip,
            worker,
            control,
            self.addr,
            self.peer_addr,
            settings.lease_s,
            self.workers.admit,
            self.workers.first_claimer,
            collect_bytes=settings.job_maxima.output_bytes,
        )
        control.answer_locally(self.id, service.control)
        return service

    async def collect_garbage(self) -> GcResult:
        """Drop unpinned, untagged blobs nobody uses, keeping everything a live job still needs."""
        protected = self.jobs.protected_blobs() | self.blobs.awaiting_holder()
        return await self.blobs.gc(protected=protected)

    async def _collect_garbage_periodically(self) -> None:
        while True:
            await trio.sleep(GC_INTERVAL_S)
            try:
                result = await self.collect_garbage()
            except (StoreError, OSError) as exc:  # a failing disk: not a reason to stop the node
                log.warning("blob GC failed: %s; trying again in %g min", exc, GC_INTERVAL_S / 60)
                continue
            if result.removed or result.removed_partials:
                log.info(
                    "blob GC freed %d bytes (%d blobs)", result.freed_bytes, len(result.removed)
                )

    async def _enforce_retention_periodically(self) -> None:
        retention_s = self.settings.job_retention_days * 86400
        while True:
            try:
                removed = await self.jobs.remove_finished(retention_s)
            except (StoreError, sqlite3.Error) as exc:
                log.warning("retention: could not remove old jobs: %s", exc)
                removed = []
            if removed:
                log.info(
                    "retention: removed %d jobs finished over %g days ago",
                    len(removed),
                    self.settings.job_retention_days,
                )
            await trio.sleep(RETENTION_INTERVAL_S)

    def peer_addr(self, node_id: NodeId) -> PeerAddr | None:
        if node_id == self.id:
            return self.addr()
        member = self.membership.members.get(node_id)
        return member.addr if member else None

    # -- identity and membership -------------------------------------------------------------

    def addr(self) -> PeerAddr:
        return PeerAddr.from_endpoint(
            self.endpoint.addr(), configured_relay_url(self.settings.relay)
        )

    def join_ticket(self) -> str:
        return self.membership.join_ticket(self.addr())

    async def join(self, ticket: tickets.JoinTicket) -> None:
        """Become a member of the ticket's cluster through the node that issued it.

        Nothing changes before the handshake succeeds: an unreachable or refusing node leaves
        this node's cluster and members exactly as they were."""
        cluster = ClusterIdentity(
            cluster_id=ticket.cluster_id.hex(), join_secret=ticket.join_secret.hex()
        )
        host = PeerAddr.from_ticket(ticket.node)
        try:
            await self._introduce(host, cluster)
        except PEER_ERRORS as exc:
            raise StartupError(
                f"could not join through {host.node_id[:10]}: {describe(exc)}"
            ) from None

    async def _introduce(self, peer: PeerAddr, cluster: ClusterIdentity | None = None) -> None:
        """Prove our membership to `peer` (or join `cluster` through it); learn its members."""
        if self.membership.is_removed(peer.node_id):
            raise JoinError(f"node {peer.node_id[:10]} was removed from this node's members")
        connection = await self.dialer.dial(peer, JOIN_ALPN)
        try:
            welcome = await join(self.membership, connection, self.addr(), cluster)
        finally:
            connection.close(0, b"joined")
        if cluster is not None:
            self.membership.adopt(cluster)
        if self.membership.is_member(peer.node_id):
            self.membership.seen(peer.node_id)
        else:
            self.membership.admit(peer)
        if self.membership.greeted(peer.node_id, welcome.session):
            self._drop_connections(peer.node_id)
        for other in welcome.members:
            if not self.membership.is_member(other.node_id):
                self.membership.admit(other)

    def _welcomed(self, peer: NodeId, new_session: bool) -> None:
        self._heard_from(peer)
        if new_session:
            self._drop_connections(peer)

    def _drop_connections(self, peer: NodeId) -> None:
        """The peer restarted: cached connections lead to its previous run, and would time out."""
        self.dialer.forget(peer, keep_introduction=True)

    def remove_member(self, node_id: NodeId) -> bool:
        """Forget a member and refuse it from now on; its open connections are closed."""
        if not self.membership.remove(node_id):
            return False
        self.redial.forget(node_id)
        self.dialer.forget(node_id)
        self.liveness.close_peer(node_id, b"removed from the cluster")
        log.info("member %s removed: refused from now on", node_id[:10])
        return True

    # -- liveness and redial -----------------------------------------------------------------

    def _heard_from(self, peer: NodeId) -> None:
        if self.membership.is_member(peer) and self.redial.reached(peer, trio.current_time()):
            log.info("member %s is back", peer[:10])

    def _unreachable(self, peer: NodeId, reason: str, tried_at: float | None = None) -> None:
        if self.membership.is_member(peer) and self.redial.failed(
            peer, trio.current_time(), tried_at
        ):
            log.warning(
                "member %s lost: %s; redialling with back-off (at most every %g min)",
                peer[:10],
                reason,
                REDIAL_CAP_S / 60,
            )

    def _dialled(self, peer: NodeId, alpn: bytes, error: str | None, began: float) -> None:
        if error is not None:
            self._unreachable(peer, error, began)
        elif (
            alpn != JOIN_ALPN
        ):  # a join dial counts once the handshake succeeds (a refusal is no return)
            self._heard_from(peer)

    def _went_silent(self, peer: NodeId) -> None:
        self.dialer.forget(peer)
        self._unreachable(peer, "stopped answering")

    async def _keep_members(self) -> None:
        """Greet every member after a start, so they see us back; then redial the ones down."""
        async with trio.open_nursery() as nursery:
            for member in list(self.membership.members.values()):
                nursery.start_soon(self._greet, member.addr)
            while True:
                await trio.sleep(REDIAL_TICK_S)
                for peer in self.redial.due(trio.current_time()):
                    if (addr := self.peer_addr(peer)) is not None:
                        nursery.start_soon(self._greet, addr)
                    else:
                        self.redial.forget(peer)

    async def _greet(self, peer: PeerAddr) -> None:
        """A membership handshake: proves the peer is there and tells it where we are now.
        Failures are reported once per outage by `_unreachable`, not here."""
        try:
            await self.dialer.introduce(peer)
        except PeerUnreachable:
            pass
        except PEER_ERRORS as exc:
            self._unreachable(peer.node_id, describe(exc))
        else:
            self._heard_from(peer.node_id)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        addr = self.addr()
        return NodeStatus(
            id=self.id,
            cluster_id=self.membership.cluster.cluster_id,
            addresses=addr.direct_addresses,
            relay_url=addr.relay_url,
            api_url=self.api_url,
            uptime_s=time.time() - self._started,
            members=self.members(),
            refused_connections=self.router.refused,
            gossip=self.gossip.stats(),
            jobs=self.jobs.worker.status(),
        )

    async def disk(self) -> DiskStatus:
        blobs = await self.blobs.list_blobs()
        free, total = await self.blobs.disk_space()
        return DiskStatus(
            store_bytes=sum(b.size for b in blobs),
            store_blobs=len(blobs),
            free_bytes=free,
            total_bytes=total,
        )

    def members(self) -> list[MemberStatus]:
        connected = self.dialer.connected_peers() | self.router.connected_peers()
        return [
            MemberStatus(
                id=node_id,
                addresses=m.addr.direct_addresses,
                relay_url=m.addr.relay_url,
                connected=node_id in connected,
                last_seen=m.last_seen,
                state="connected"
                if node_id in connected
                else "down"
                if self.redial.is_down(node_id)
                else "idle",
            )
            for node_id, m in sorted(self.membership.members.items())
        ]


class _Watched:
    """A protocol whose connections liveness watches while they run: a peer that connects to us
    is heard from, and one that falls silent mid-connection is noticed."""

    def __init__(
        self, protocol: ProtocolHandler, liveness: Liveness, heard_from: Callable[[NodeId], None]
    ) -> None:
        self._protocol = protocol
        self._liveness = liveness
        self._heard_from = heard_from
        self.alpn = protocol.alpn
        self.open_to_strangers = protocol.open_to_strangers

    async def handle(self, connection: iroh.Connection) -> None:
        self._liveness.watch(connection)
        self._heard_from(remote_node_id(connection))
        try:
            await self._protocol.handle(connection)
        finally:
            self._liveness.unwatch(connection)


def _last_port(path: Path) -> int | None:
    """The port of the last run; a damaged file only costs that preference, never the start."""
    try:
        return BoundPort.model_validate_json(path.read_bytes()).port
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.warning("ignoring %s (%s): binding a fresh port", path, type(exc).__name__)
        return None
