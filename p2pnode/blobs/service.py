"""The node's blob service: the store, the provider side of the protocol, tickets, and fetches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import iroh
import trio

import tickets
from p2pnode.blobs.fetch import FetchError, fetch_blob
from p2pnode.blobs.model import FetchProgress
from p2pnode.blobs.protocol import BLOBS_ALPN, BlobProvider, Capabilities
from p2pnode.blobs.store import BlobInfo, BlobStore
from p2pnode.membership import Membership
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import Dialer
from p2pnode.net.endpoint import serve_streams

UPLOAD_GRACE_S = 3600.0
"""How long GC spares an unpinned upload that no job holds yet (`BlobService.expect_holder`)."""


class BlobService:
    """The blob protocol's handler too: open to strangers, whose requests the provider checks
    against the blob ticket's capability."""

    alpn = BLOBS_ALPN
    open_to_strangers = True

    def __init__(
        self,
        store: BlobStore,
        secret_key: iroh.SecretKey,
        membership: Membership,
        dialer: Dialer,
        self_addr: Callable[[], PeerAddr],
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.capabilities = Capabilities(secret_key)
        self.provider = BlobProvider(store, self.capabilities, membership.is_member)
        self._membership = membership
        self._dialer = dialer
        self._self_addr = self_addr
        self._fetching: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._awaiting: dict[str, float] = {}
        """hash -> trio time of an unpinned upload no job holds yet"""

    async def handle(self, connection: iroh.Connection) -> None:
        await serve_streams(connection, self.provider.handle_stream)

    def expect_holder(self, blob_hash: str) -> None:
        """An unpinned upload that a job submission is about to hold (the CLI uploads a job's
        files unpinned, so removing the job frees them): GC spares it until `held` is called, or
        for `UPLOAD_GRACE_S`."""
        self._awaiting[blob_hash] = trio.current_time()

    def held(self, blob_hash: str) -> None:
        self._awaiting.pop(blob_hash, None)

    def awaiting_holder(self) -> set[str]:
        now = trio.current_time()
        self._awaiting = {h: t for h, t in self._awaiting.items() if now - t < UPLOAD_GRACE_S}
        return set(self._awaiting)

    async def add(self, path: Path, *, pin: bool = True) -> BlobInfo:
        """Blobs added by a person are pinned: GC only collects what the node fetched for jobs."""
        return await self.store.add_path(path, pin=pin)

    def ticket(self, info: BlobInfo) -> str:
        return tickets.encode(
            tickets.BlobTicket(
                provider=self._self_addr().to_ticket(),
                hash=bytes.fromhex(info.hash),
                size=info.size,
                root=bytes.fromhex(info.root),
                capability=self.capabilities.issue(info.hash),
            )
        )

    async def _dial(self, addr: PeerAddr) -> iroh.Connection:
        # Members introduce themselves so the provider serves them without a ticket.
        return await self._dialer.connect(
            addr, BLOBS_ALPN, introduce=self._membership.is_member(addr.node_id)
        )

    async def fetch(
        self,
        blob_hash: str,
        providers: list[PeerAddr],
        *,
        root: str | None = None,
        size: int | None = None,
        capability: str = "",
        on_progress: Callable[[FetchProgress], None] = lambda _p: None,
    ) -> BlobInfo:
        # Jobs sharing a module fetch it at once: the first fetches, the others then find it stored.
        lock = self._fetching[blob_hash]
        done = 0  # bytes_done counts on from a resumed download's verified blocks

        def counted(progress: FetchProgress) -> None:
            nonlocal done
            self.metrics.fetched_bytes.inc(max(0, progress.bytes_done - done))
            done = progress.bytes_done
            on_progress(progress)

        try:
            async with lock:
                if self.store.has(blob_hash):
                    return await self.store.info(blob_hash)
                if resumed := await self.store.partial_progress(blob_hash):
                    done = resumed.bytes_done
                info = await fetch_blob(
                    self.store,
                    self._dial,
                    blob_hash,
                    providers,
                    root=root,
                    size=size,
                    capability=capability,
                    on_progress=counted,
                )
        except FetchError:
            self.metrics.fetches.labels("failed").inc()
            raise
        else:
            self.metrics.fetches.labels("fetched").inc()
            return info
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetching.pop(blob_hash, None)

    async def fetch_ticket(
        self,
        ticket: tickets.BlobTicket,
        on_progress: Callable[[FetchProgress], None] = lambda _p: None,
    ) -> BlobInfo:
        return await self.fetch(
            ticket.hash_hex,
            [PeerAddr.from_ticket(ticket.provider)],
            root=ticket.root_hex,
            size=ticket.size,
            capability=ticket.capability.hex(),
            on_progress=on_progress,
        )
