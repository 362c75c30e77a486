"""The node's blob service: the store, the provider side of the protocol, tickets, and fetches."""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import iroh
import trio

import tickets
from p2pnode.blobs.fetch import FetchError, fetch_blob
from p2pnode.blobs.model import FetchProgress, GcResult
from p2pnode.blobs.protocol import BLOBS_ALPN, BlobProvider, Capabilities
from p2pnode.blobs.store import BlobInfo, BlobStore
from p2pnode.ids import BlobHash
from p2pnode.membership import Membership
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import Dialer
from p2pnode.net.endpoint import serve_streams

UPLOAD_GRACE_S = 3600.0
"""How long GC spares an unpinned upload that no job holds yet (`BlobService.expect_holder`)."""


class BlobService:
    """What the other rooms ask of blobs, as verbs (add, keep, read, materialize, collect); the
    store behind them is this room's business.

    The blob protocol's handler too: open to strangers, whose requests the provider checks
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
        self._fetching: defaultdict[BlobHash, trio.Lock] = defaultdict(trio.Lock)
        self._awaiting: dict[BlobHash, float] = {}
        """hash -> trio time of an unpinned upload no job holds yet"""

    async def handle(self, connection: iroh.Connection) -> None:
        await serve_streams(connection, self.provider.handle_stream)

    def expect_holder(self, blob_hash: BlobHash) -> None:
        """An unpinned upload that a job submission is about to hold (the CLI uploads a job's
        files unpinned, so removing the job frees them): GC spares it until `held` is called, or
        for `UPLOAD_GRACE_S`."""
        self._awaiting[blob_hash] = trio.current_time()

    def held(self, blob_hash: BlobHash) -> None:
        self._awaiting.pop(blob_hash, None)

    def awaiting_holder(self) -> set[BlobHash]:
        now = trio.current_time()
        self._awaiting = {h: t for h, t in self._awaiting.items() if now - t < UPLOAD_GRACE_S}
        return set(self._awaiting)

    async def add(self, path: Path, *, pin: bool = True, tag: str | None = None) -> BlobInfo:
        """Blobs added by a person are pinned: GC only collects what the node fetched for jobs.
        A job holds its blobs by a tag instead (``pin=False, tag=...``), released with the job."""
        return await self.store.add_path(path, pin=pin, tag=tag)

    async def add_bytes(self, data: bytes, *, pin: bool = True, tag: str | None = None) -> BlobInfo:
        return await self.store.add_bytes(data, pin=pin, tag=tag)

    async def add_in_place(
        self, path: Path, *, opened: BinaryIO | None = None, pin: bool = True
    ) -> BlobInfo:
        """Hash a file and serve it from where it is, never copied (see BlobStore.add_in_place)."""
        return await self.store.add_in_place(path, opened=opened, pin=pin)

    async def add_file(self, f: BinaryIO, *, pin: bool = True) -> BlobInfo:
        """Copy an open file (one the caller checked) into the store."""
        return await self.store.add_file(f, pin=pin)

    async def add_stream(self, chunks: AsyncIterable[bytes], *, pin: bool = True) -> BlobInfo:
        return await self.store.add_stream(chunks, pin=pin)

    def has(self, blob_hash: BlobHash) -> bool:
        return self.store.has(blob_hash)

    async def info(self, blob_hash: BlobHash) -> BlobInfo:
        return await self.store.info(blob_hash)

    async def list_blobs(self) -> list[BlobInfo]:
        return await self.store.list()

    def read_range(
        self, blob_hash: BlobHash, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in chunks; wrap in contextlib.aclosing (see BlobStore.read_range)."""
        return self.store.read_range(blob_hash, offset, length)

    async def read_bytes(self, blob_hash: BlobHash) -> bytes:
        """A small blob (a manifest, a module) whole, in memory."""
        async with contextlib.aclosing(self.read_range(blob_hash)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def hold(self, blob_hash: BlobHash, tag: str) -> BlobInfo:
        """Keep a stored blob under ``tag`` (a job's hold, see ``jobs.model.job_tag``) and say
        what it is (BlobNotFound if not here)."""
        await self.set_tag(tag, blob_hash)
        return await self.store.info(blob_hash)

    async def set_tag(self, tag: str, blob_hash: BlobHash) -> None:
        """Hold ``blob_hash`` under ``tag``, whether it is here yet or not (tag an output before
        fetching it, so GC never takes it in between)."""
        await self.store.set_tag(tag, blob_hash)
        self.held(blob_hash)

    async def set_tags(self, tags: Mapping[str, BlobHash]) -> None:
        """`set_tag` for many at once (one hop, one transaction: a batch of jobs)."""
        await self.store.set_tags(tags)
        for blob_hash in tags.values():
            self.held(blob_hash)

    async def disk_space(self) -> tuple[int, int]:
        """Free and total bytes of the file system the store is on."""
        usage = await trio.to_thread.run_sync(shutil.disk_usage, self.store.root)
        return usage.free, usage.total

    async def tags(self) -> dict[str, str]:
        """Every tag and the blob it holds."""
        return await self.store.tags()

    async def drop_tag(self, tag: str) -> None:
        await self.store.delete_tag(tag)

    async def keep(self, blob_hash: BlobHash) -> BlobInfo:
        """Pin a stored blob so GC leaves it, and say what it is (BlobNotFound if not here)."""
        await self.store.pin(blob_hash)
        return await self.store.info(blob_hash)

    async def unpin(self, blob_hash: BlobHash) -> bool:
        return await self.store.unpin(blob_hash)

    async def remove(self, blob_hash: BlobHash, *, force: bool = False) -> None:
        await self.store.remove(blob_hash, force=force)

    async def export(self, blob_hash: BlobHash, dest: Path) -> BlobInfo:
        """Copy a stored blob to ``dest``, checking its hash on the way."""
        return await self.store.export(blob_hash, dest)

    async def materialize(
        self,
        blob_hash: BlobHash,
        providers: list[PeerAddr],
        dest: Path,
        *,
        root: BlobHash | None = None,
    ) -> BlobInfo:
        """Make ``dest`` a verified copy of the blob, fetching it from ``providers`` first if
        this node does not hold it. A scratch copy (a job's input): not fsynced, a crash loses
        nothing worth the milliseconds each fsync costs."""
        info = await self.fetch(blob_hash, providers, root=root)
        mkdir = functools.partial(dest.parent.mkdir, parents=True, exist_ok=True)
        await trio.to_thread.run_sync(mkdir)
        return await self.store.export(info.hash, dest, durable=False)

    async def gc(self, protected: set[BlobHash] | frozenset[BlobHash] = frozenset()) -> GcResult:
        """Drop what nothing keeps, except ``protected`` (what live jobs still need)."""
        return await self.store.gc(protected)

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
        blob_hash: BlobHash,
        providers: list[PeerAddr],
        *,
        root: BlobHash | None = None,
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
            BlobHash(ticket.hash_hex),  # 32 bytes the ticket's codec checked
            [PeerAddr.from_ticket(ticket.provider)],
            root=BlobHash(ticket.root_hex),
            size=ticket.size,
            capability=ticket.capability.hex(),
            on_progress=on_progress,
        )
