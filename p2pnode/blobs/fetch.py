"""Verified, resumable fetch of one blob from one or more providers.

Blocks are read from the stream by one task and verified and written by another, with a few
blocks of slack between them: the network never waits for the disk, memory stays bounded, and
no unverified block is ever written. A provider that refuses, drops, lies or stalls (nothing
arrives for ``stall_timeout`` seconds) is reported and the next one continues from the blocks
already on disk; the same happens after a crash, because the store keeps partial downloads.

Space is reserved only for a block list that matches the trusted root and expected size, and only
if the disk has room for it: a ticket can't make the fetcher preallocate what it can't hold.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable, Callable

import iroh
import trio

from p2pnode.blobs.blocks import BlockList
from p2pnode.blobs.model import FetchProgress
from p2pnode.blobs.protocol import BlobHeader, BlobReply, BlobRequest, parse_header, reply_limit
from p2pnode.blobs.store import BlobCorrupt, BlobInfo, BlobStore, PartialBlob
from p2pnode.concurrency import collapse_groups
from p2pnode.ids import BlobHash
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import PEER_ERRORS, describe
from p2pnode.net.framing import read_exact, recv_model, reset_quietly, send_model

log = logging.getLogger(__name__)

PIPELINE_BLOCKS = 4
PROGRESS_INTERVAL_S = 0.1
"""Seconds between progress reports (and one at the end): a report per block cost the fetching
node ~15% of its event loop's CPU, sending an NDJSON line to the API client each time."""
STALL_TIMEOUT_S = 30.0
"""Seconds without a header or a whole block (1 MiB) from a provider before trying the next one."""
Dial = Callable[[PeerAddr], Awaitable[iroh.Connection]]


class FetchError(Exception):
    """No provider could deliver the blob; the message lists what each one did."""


class ProviderFailed(Exception):
    """This provider cannot or will not deliver; try the next."""


def block_ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Compress sorted block indices into half-open ranges, to keep resume requests small."""
    ranges: list[tuple[int, int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index:
            ranges[-1] = (ranges[-1][0], index + 1)
        else:
            ranges.append((index, index + 1))
    return ranges


async def fetch_blob(
    store: BlobStore,
    dial: Dial,
    blob_hash: BlobHash,
    providers: list[PeerAddr],
    *,
    root: BlobHash | None = None,
    size: int | None = None,
    capability: str = "",
    on_progress: Callable[[FetchProgress], None] = lambda _p: None,
    stall_timeout: float = STALL_TIMEOUT_S,
) -> BlobInfo:
    """Fetch `blob_hash` into the store, verified, trying `providers` in order until one delivers.

    `root` and `size` (from a ticket or a job record) are checked against the provider's block list.
    """
    blob_hash = blob_hash
    if store.has(blob_hash):
        return await store.info(blob_hash)
    with store.in_use(blob_hash):
        download = _Download(store, blob_hash, root, size, capability, on_progress, stall_timeout)
        try:
            return await download.run(dial, providers)
        finally:
            download.close()


class _Download:
    """One fetch across providers; the partial blob (verified blocks on disk) survives each
    failure."""

    def __init__(
        self,
        store: BlobStore,
        blob_hash: BlobHash,
        root: BlobHash | None,
        size: int | None,
        capability: str,
        on_progress: Callable[[FetchProgress], None],
        stall_timeout: float,
    ) -> None:
        self.store = store
        self.hash = blob_hash
        self.root = root
        self.size = size
        self.capability = capability
        self.on_progress = on_progress
        self.stall_timeout = stall_timeout
        self.partial: PartialBlob | None = None

    async def run(self, dial: Dial, providers: list[PeerAddr]) -> BlobInfo:
        await self._resume()
        failures: list[str] = []
        for provider in providers:
            who = provider.node_id[:10]
            try:
                await self._fetch_from(dial, provider)
                assert self.partial is not None
                partial, self.partial = self.partial, None
                return await partial.commit()
            except ProviderFailed as exc:
                log.warning("provider %s failed for blob %s: %s", who, self.hash[:12], exc)
                failures.append(f"{who}: {exc}")
            except (
                BlobCorrupt
            ):  # the whole-content hash did not match at commit; the partial is gone
                log.warning(
                    "provider %s delivered content that does not hash to blob %s",
                    who,
                    self.hash[:12],
                )
                failures.append(f"{who}: delivered content that does not hash to the blob")
        raise FetchError(
            f"could not fetch blob {self.hash[:12]}: " + ("; ".join(failures) or "no providers")
        )

    def close(self) -> None:
        if self.partial is not None:
            self.partial.close()
            self.partial = None

    async def _resume(self) -> None:
        """Pick up a download an earlier run left, unless its block list is not the one we trust."""
        progress = await self.store.partial_progress(self.hash)
        if progress is None or (self.size is not None and progress.size != self.size):
            return
        self.partial = await self.store.partial(self.hash)
        if self.root is not None and self.partial.block_list.root_hex != self.root:
            self.close()

    async def _fetch_from(self, dial: Dial, provider: PeerAddr) -> None:
        connection: iroh.Connection | None = None
        bi: iroh.BiStream | None = None
        with trio.CancelScope() as stall:
            self._heard_from(stall)
            try:
                connection = await dial(provider)
                bi = await connection.open_bi()
                missing = self.partial.missing_blocks() if self.partial is not None else None
                ranges = None if missing is None else block_ranges(missing)
                await send_model(
                    bi.send(),
                    BlobRequest(hash=self.hash, capability=self.capability, blocks=ranges),
                )
                await bi.send().finish()
                reply = await recv_model(bi.recv(), BlobReply, reply_limit(self.size))
                self._heard_from(stall)
                if not isinstance(reply, BlobHeader):
                    raise ProviderFailed(f"refused: {reply.reason}")
                try:
                    block_list = parse_header(reply, self.hash, self.root, self.size)
                except ValueError as exc:
                    raise ProviderFailed(str(exc)) from None
                if self.partial is None or self.partial.block_list != block_list:
                    self.close()
                    self._check_room(block_list)
                    self.partial = await self.store.partial(self.hash, block_list)
                    missing = None
                indices = list(range(len(block_list))) if missing is None else missing
                await self._receive_blocks(bi.recv(), block_list, indices, provider, stall)
            except BlobCorrupt as exc:
                if connection is not None:
                    connection.close(1, b"corrupt data")
                raise ProviderFailed(f"sent corrupt data, disconnected ({exc})") from None
            except PEER_ERRORS as exc:
                raise ProviderFailed(describe(exc)) from None
        if stall.cancelled_caught:
            if bi is not None:
                await reset_quietly(bi)
            raise ProviderFailed(f"sent nothing for {self.stall_timeout:g} s")

    def _heard_from(self, stall: trio.CancelScope) -> None:
        """The provider is alive: give it another stall timeout."""
        stall.deadline = trio.current_time() + self.stall_timeout

    def _check_room(self, block_list: BlockList) -> None:
        """Refuse before preallocating a blob the disk cannot hold; with a trusted root or size
        every provider would say the same, so that ends the fetch."""
        free = shutil.disk_usage(self.store.root).free
        if block_list.size > free:
            error = FetchError if self.root is not None or self.size is not None else ProviderFailed
            raise error(
                f"blob {self.hash[:12]} is {block_list.size} bytes, more than the {free} bytes "
                f"free at {self.store.root}"
            )

    async def _receive_blocks(
        self,
        recv: iroh.RecvStream,
        block_list: BlockList,
        indices: list[int],
        provider: PeerAddr,
        stall: trio.CancelScope,
    ) -> None:
        partial = self.partial
        assert partial is not None
        send_channel, receive_channel = trio.open_memory_channel[tuple[int, bytes]](PIPELINE_BLOCKS)
        done = partial.progress().bytes_done

        async def read_blocks() -> None:
            with send_channel:
                for index in indices:
                    _, length = block_list.block_range(index)
                    data = await read_exact(recv, length)
                    self._heard_from(stall)
                    try:
                        await send_channel.send((index, data))
                    except trio.BrokenResourceError:
                        return  # the writer stopped: its error (a lying block) is what counts

        reported = done

        def report() -> None:
            nonlocal reported
            reported = done
            self.on_progress(
                FetchProgress(
                    hash=self.hash, size=block_list.size, bytes_done=done, provider=provider.node_id
                )
            )

        async def write_blocks() -> None:
            nonlocal done
            due = trio.current_time()
            with receive_channel:  # closed at once, without a checkpoint: see read_blocks
                async for index, data in receive_channel:
                    await partial.write_block(index, data)
                    self._heard_from(
                        stall
                    )  # a slow disk holding the pipeline up is not the provider's silence
                    done += len(data)
                    if done == block_list.size or trio.current_time() >= due:
                        due = trio.current_time() + PROGRESS_INTERVAL_S
                        report()

        try:
            with collapse_groups():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_blocks)
                    nursery.start_soon(write_blocks)
        finally:
            if done != reported:  # verified blocks count even when this provider failed
                report()
