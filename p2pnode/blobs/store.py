"""Content-addressed blob store on disk (the IROH_BLOBS_PATH folder).

A blob is named by the lowercase hex BLAKE3 hash of its content, the same name iroh-blobs
gives it. Layout under the root folder::

    data/<hex>       content; its presence is the commit point of a blob
    external/<hex>   or, for a blob added in place, where its content lives (path, size, mtime,
                     inode): the commit point of such a blob, whose bytes stay in the user's file
    blocks/<hex>     BlockList bytes (block hashes + size), always written before either
    tmp/             temp files on the same filesystem, so renames are atomic
    partial/         resumable downloads (partial.py)
    meta.sqlite      tags (name -> hash) and pins: the roots that GC keeps (refs.py)
    lock             flock: one process per store, because in-use counts live in memory

Every blob enters data/ by an atomic rename of a fully written, fsynced and hashed temp file,
so a crash leaves either the whole blob or nothing. Opening the store deletes crash leftovers
and re-verifies any data file whose block list is missing or does not fit it; full content is
re-checked by `verify` and on every `export`, and per block by any fetcher.

A blob added in place (`add_in_place`) is never copied. Its file can change behind the store's
back, so every read of it is verified block by block against the recorded block list, and a
file whose size, mtime or inode moved, or whose block fails, is forgotten: the blob is missing,
never served wrong (as iroh-blobs' reference import does).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import functools
import io
import mmap
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import BinaryIO, TypeVar

import blake3
import trio
from pydantic import ValidationError

from p2pnode.concurrency import collapse_groups
from p2pnode.fsutil import FileReplaced, NotRegularFile, make_private, open_real
from p2pnode.ids import BlobHash, is_blob_hash

from .blocks import (
    BLOCK_SIZE,
    READ_CHUNK,
    BlobHasher,
    BlockList,
    Buffer,
    hash_file,
)
from .diskio import (
    create,
    fsync_dir,
    start_writeback,
    tmp_path,
    unlink,
    write_all,
    write_atomic,
)
from .errors import BlobCorrupt, BlobInUse, BlobNotFound, StoreError, os_errors
from .model import BlobInfo, FileIdentity, GcResult, PartialProgress
from .partial import PartialBlob, PartialFiles, progress
from .refs import RefTable

_STREAM_BATCH = 4 * BLOCK_SIZE  # an upload's small chunks, gathered for the hashing threads
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)  # Linux: a read that fails rather than wait

_T = TypeVar("_T")

__all__ = [
    "BlobCorrupt",
    "BlobInUse",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "GcResult",
    "PartialBlob",
    "PartialProgress",
    "StoreError",
]


class ExternalFile(FileIdentity):
    """Where a blob added in place lives, and what the file looked like when it was hashed."""

    path: str

    @classmethod
    def at(cls, path: Path, st: os.stat_result) -> ExternalFile:
        return cls(path=str(path), **dict(FileIdentity.of(st)))


class _Content:
    """An open blob.

    The store's own files (data/) are read as they are, never re-hashed when served: only the
    store writes them (a temp file, hashed as it is written, fsynced and renamed in; nothing
    writes into data/ afterwards), so what could change one is a failing disk or someone with
    the node's own file permissions, and such damage cannot spread: a fetcher verifies every
    block against the block list before it counts (a bad block makes it drop this provider),
    and export and `verify` re-hash the whole blob. A check on serving would cost the provider
    ~0.27 ms of CPU per MiB for what its fetchers check anyway.

    A file added in place is the user's, which may change at any time: it is verified block by
    block on every read, so a changed byte is never served."""

    def __init__(self, h: BlobHash, fd: int, size: int, blocks: BlockList | None) -> None:
        self.hash = h
        self.fd = fd
        self.size = size
        self._blocks = blocks

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length); BlobCorrupt if they are not what the hash says."""
        if self._blocks is None:
            data = os.pread(self.fd, length, offset)
            if len(data) != length:
                raise self._corrupt()
            return data
        if not length:
            return b""
        start = offset // BLOCK_SIZE * BLOCK_SIZE
        end = min(self.size, -(-(offset + length) // BLOCK_SIZE) * BLOCK_SIZE)
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise self._corrupt()
        self._verify(start, memoryview(data))
        if offset == start and length == len(data):
            return data
        return data[offset - start : offset - start + length]

    def read_into(self, offset: int, into: memoryview) -> None:
        """Fill ``into`` with the bytes at ``offset`` (blocking). For a blob added in place,
        ``offset`` starts a block and ``into`` ends at a block's end or the blob's, and every
        block is verified; BlobCorrupt if the bytes are not what the hash says."""
        done = 0
        while done < into.nbytes:
            n = os.preadv(self.fd, [into[done:]], offset + done)
            if not n:
                raise self._corrupt()
            done += n
        self._verify(offset, into)

    def read_cached(self, offset: int, into: memoryview) -> int:
        """How many of the bytes at ``offset`` this call put in ``into`` straight from the page
        cache (``RWF_NOWAIT``: it never waits for the disk, so it may run on the event loop).
        None for a blob added in place, whose blocks are verified in a worker thread."""
        if self._blocks is not None or not _RWF_NOWAIT:
            return 0
        try:
            return os.preadv(self.fd, [into], offset, _RWF_NOWAIT)
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP: not this file system
            return 0

    def _verify(self, start: int, data: memoryview) -> None:
        """For a blob added in place: ``data``, read at the start of a block, holds whole blocks
        (the blob's last may be short), each as recorded."""
        if self._blocks is None:
            return
        first = start // BLOCK_SIZE
        for at in range(0, data.nbytes, BLOCK_SIZE):
            if not self._blocks.verify_block(first + at // BLOCK_SIZE, data[at : at + BLOCK_SIZE]):
                raise self._corrupt()

    def _corrupt(self) -> BlobCorrupt:
        if self._blocks is None:
            return BlobCorrupt(f"blob {self.hash} is shorter on disk than recorded")
        return BlobCorrupt(
            f"the file of blob {self.hash} (added in place) changed; the blob is missing"
        )


_DEPTH = 3
"""Chunks in flight in an add: one being brought in, and up to two that the steps work on."""


class _Chunk:
    """One chunk on its way through an add's steps (the two hashes, a write): its bytes stay
    valid until the last step is done with it, then ``release`` frees them (unmaps them, or
    hands the buffer back). Steps finish chunks on the trio thread: the count needs no lock."""

    def __init__(self, view: memoryview, release: Callable[[], object] = lambda: None) -> None:
        self.view = view
        self._release = release
        self.users = 0

    def done(self) -> None:
        self.users -= 1
        if not self.users:
            self.view.release()
            self._release()


async def _fan_out(
    chunks: AsyncGenerator[_Chunk, None], *steps: Callable[[memoryview], object]
) -> None:
    """Run every step over every chunk, in content order, each step in a worker thread of its
    own (blake3, write and sendfile release the GIL), so the steps run beside each other and
    beside the bringing in of the next chunk, each at its own pace: no barrier per chunk, and a
    step that falls behind holds back only the bringing in (at most `_DEPTH` chunks in flight)."""

    async def run(
        step: Callable[[memoryview], object], todo: trio.MemoryReceiveChannel[_Chunk]
    ) -> None:
        async with todo:
            async for chunk in todo:
                try:
                    await trio.to_thread.run_sync(step, chunk.view)
                finally:
                    chunk.done()

    async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
        queues: list[trio.MemorySendChannel[_Chunk]] = []
        for step in steps:
            send, todo = trio.open_memory_channel[_Chunk](_DEPTH - 2)
            queues.append(await stack.enter_async_context(send))
            nursery.start_soon(run, step, todo)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                chunk.users = len(queues)
                for send in queues:
                    await send.send(chunk)


async def _hash_chunks(chunks: AsyncIterator[Buffer], fd: int, doing: str) -> BlobHasher:
    """Write what ``chunks`` yields to ``fd``, hash it (both hashes) and fsync ``fd``. The
    write and the hashes are steps of `_fan_out`; each written chunk's writeback starts at
    once (`start_writeback`)."""
    hasher = BlobHasher()
    written = 0

    def write(view: memoryview) -> None:
        nonlocal written
        write_all(fd, view)
        start_writeback(fd, written, view.nbytes)
        written += view.nbytes

    async def received() -> AsyncGenerator[_Chunk, None]:
        async for chunk in chunks:
            yield _Chunk(memoryview(chunk).cast("B"))

    with os_errors(doing), collapse_groups():
        await _fan_out(received(), hasher.update_whole, hasher.update_blocks, write)
        await trio.to_thread.run_sync(os.fsync, fd)
    return hasher


async def _hash_file(src: int, start: int, dst: int | None, doing: str) -> BlobHasher:
    """Hash regular file ``src`` from offset ``start`` to its end; with ``dst``, copy it there
    (from offset 0), hash the copy and fsync it (`_copies`). Without ``dst`` (a file added in
    place) the chunks are read into buffers taking turns (`_reads`)."""
    hasher = BlobHasher()
    if dst is not None:
        with os_errors(doing), collapse_groups():
            await _fan_out(_copies(src, start, dst), hasher.update_whole, hasher.update_blocks)
        return hasher
    buffers = [_spare.pop() if _spare else mmap.mmap(-1, READ_CHUNK) for _ in range(_DEPTH)]
    try:
        with os_errors(doing), collapse_groups():
            await _fan_out(_reads(src, start, buffers), hasher.update_whole, hasher.update_blocks)
    finally:  # no step holds them any more: _fan_out waited for its threads
        _spare[:] = (_spare + buffers)[:_DEPTH]
    return hasher


async def _copies(src: int, start: int, dst: int) -> AsyncGenerator[_Chunk, None]:
    """Copy ``src`` from ``start`` to its end into ``dst`` chunk by chunk, and yield each chunk
    as mapped from ``dst``: what is hashed is exactly what is stored.

    The kernel copies (os.sendfile: no Python buffer, any two filesystems) and starts the
    chunk's writeback (`start_writeback`); the fsync comes once the last chunk is copied,
    while it is still being hashed. Measured side by side on 256 MiB against reading into
    Python buffers, writing and hashing those (`_hash_chunks`): as fast or faster, and 20% less
    CPU (0.33 s against 0.43 s).
    """
    in_kernel = True

    def copy_some(offset: int, count: int) -> int:
        nonlocal in_kernel
        if in_kernel:
            try:
                return os.sendfile(dst, src, offset, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK):
                    raise
                # A file the kernel cannot splice (e.g. /proc/self/status), or a system whose
                # sendfile writes only to sockets (macOS, the BSDs: ENOTSOCK).
                in_kernel = False
        data = os.pread(src, count, offset)
        write_all(dst, memoryview(data))
        return len(data)

    def copy(offset: int) -> _Chunk | None:
        done = 0
        while done < READ_CHUNK:
            sent = copy_some(start + offset + done, READ_CHUNK - done)
            if not sent:
                break
            done += sent
        if not done:
            return None
        start_writeback(dst, offset, done)
        return _mapped(dst, offset, done)

    offset = 0
    while chunk := await trio.to_thread.run_sync(copy, offset):
        offset += chunk.view.nbytes
        yield chunk
    await trio.to_thread.run_sync(os.fsync, dst)


def _mapped(fd: int, offset: int, length: int) -> _Chunk:
    """Bytes [offset, offset+length) of ``fd`` as mapped, without a copy (blocking).

    A mapping starts on a page; a chunk does not after a short one (a growing file). Private:
    9p refuses a shared mapping of a file open for writing, FUSE's direct_io any shared one; a
    filesystem that maps nothing gets the chunk read back instead.
    """
    skip = offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapped = mmap.mmap(
            fd, skip + length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ, offset=offset - skip
        )
    except OSError:
        return _Chunk(memoryview(os.pread(fd, length, offset)))
    with memoryview(mapped) as whole:
        return _Chunk(whole[skip:], mapped.close)


_spare: list[mmap.mmap] = []
"""Read buffers kept for the next add in place (trio thread only): a fresh mapping costs
its page faults, ~20 ms of CPU per add of 256 MiB in `_DEPTH` new 8 MiB buffers."""


async def _reads(src: int, start: int, buffers: list[mmap.mmap]) -> AsyncGenerator[_Chunk, None]:
    """``src`` from ``start`` to its end, read into ``buffers`` taking turns: a mapping of a
    file that someone truncates meanwhile (one added in place is the user's) would kill the
    process with SIGBUS, a read just comes back short.

    The buffers are anonymous mappings, page-aligned: where malloc puts a big bytearray's bytes
    (16 bytes into a page), the kernel copies into it at a fifth of the speed here (preadv of
    256 MiB: 100 against 20-30 ms of CPU).
    """
    free_send, free = trio.open_memory_channel[mmap.mmap](len(buffers))
    for buffer in buffers:
        free_send.send_nowait(buffer)
    offset = start
    while True:
        buffer = await free.receive()
        length = await trio.to_thread.run_sync(os.preadv, src, [buffer], offset)
        if not length:
            return
        offset += length
        yield _Chunk(memoryview(buffer)[:length], functools.partial(free_send.send_nowait, buffer))


async def _read_chunks(read: Callable[[int], bytes], doing: str) -> AsyncIterator[bytes]:
    with os_errors(doing):
        while chunk := await trio.to_thread.run_sync(read, READ_CHUNK):
            yield chunk


class BlobStore:
    """The node's blob store. Construct with `await BlobStore.open(root)` from trio code.

    The constructor blocks (it recovers from crashes); all methods that touch file contents
    are async and run their IO in worker threads. Short metadata operations share one lock
    with the in-use counts, so GC, removal and commits never race each other.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._data = self.root / "data"
        self._external = self.root / "external"
        self._blocks = self.root / "blocks"
        self._tmp = self.root / "tmp"
        self._partials = PartialFiles(self.root / "partial", self._tmp)
        with os_errors(f"opening blob store {self.root}"):
            make_private(self.root)  # blobs may be private files, and may live outside DATA
            for d in (self._data, self._external, self._blocks, self._tmp, self._partials.folder):
                d.mkdir(mode=0o700, exist_ok=True)
            self._lock_fd = os.open(
                self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(f"blob store {self.root} is already open in another process") from None
        self._lock = threading.Lock()
        self._in_use: Counter[str] = Counter()
        self._open_partials: set[str] = set()
        try:
            self._refs = RefTable(self.root / "meta.sqlite")
            with os_errors(f"recovering blob store {self.root}"):
                self._recover()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(
                f"{self.root / 'meta.sqlite'} is damaged ({exc}); restore it or move it away "
                "(tags and pins are lost)"
            ) from None
        except BaseException:
            self.close()
            raise

    @classmethod
    async def open(cls, root: str | Path) -> BlobStore:
        """Open (creating if needed) without blocking the trio loop during recovery."""
        return await trio.to_thread.run_sync(cls, root)

    def close(self) -> None:
        """Release the process lock; open partial downloads stay resumable on disk."""
        if self._lock_fd < 0:
            return
        if hasattr(self, "_refs"):
            self._refs.close()
        os.close(self._lock_fd)
        self._lock_fd = -1

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- crash recovery ---------------------------------------------------------------------

    def _recover(self) -> None:
        for leftover in self._tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        data_names = set(os.listdir(self._data))
        external_names = set(os.listdir(self._external))
        block_names = set(os.listdir(self._blocks))
        for name in block_names - data_names - external_names:
            (self._blocks / name).unlink()
        for name in data_names:
            if not is_blob_hash(name):
                (self._data / name).unlink()
            elif self._load_block_list(name) is None:
                self._reverify(name)
        for name in external_names:
            if name in data_names or not is_blob_hash(name) or name not in block_names:
                (self._external / name).unlink()
            elif self._external_file(name) is None:
                self._delete_blob(name)
        self._partials.recover()
        for d in (self._data, self._external, self._blocks, self._partials.folder):
            fsync_dir(d)

    def _load_block_list(self, h: BlobHash) -> BlockList | None:
        """The stored BlockList if it parses and fits the data file's size, else None."""
        try:
            bl = BlockList.from_bytes((self._blocks / h).read_bytes())
            return bl if bl.size == (self._data / h).stat().st_size else None
        except (OSError, ValueError):
            return None

    def _reverify(self, h: BlobHash) -> None:
        """Keep data/<h> only if it hashes to h, rebuilding its block list."""
        digest, bl = hash_file(self._data / h)
        if digest.hex() == h:
            write_atomic(self._tmp, self._blocks / h, bl.to_bytes())
        else:
            (self._data / h).unlink()
            unlink(self._blocks / h)

    # -- small helpers ----------------------------------------------------------------------

    def _external_file(self, h: BlobHash) -> ExternalFile | None:
        """The record of a blob added in place, if there is one and its file still looks as it
        did when it was hashed (size, mtime, inode)."""
        try:
            record = ExternalFile.model_validate_json((self._external / h).read_bytes())
            st = os.stat(record.path)
        except (OSError, ValidationError):
            return None
        return record if stat.S_ISREG(st.st_mode) and record.matches(st) else None

    def _stored(self, h: BlobHash) -> bool:
        return (self._data / h).exists() or self._external_file(h) is not None

    def _info_sync(self, h: BlobHash, bl: BlockList | None = None) -> BlobInfo:
        if bl is None:
            if not self._stored(h):
                raise BlobNotFound(f"blob {h} is not in the store")
            bl = self._read_block_list(h)
        with self._lock:
            refs = self._refs.of(h)
        return BlobInfo(
            hash=h,
            size=bl.size,
            root=bl.root_hex,
            pinned=refs.pinned,
            tags=refs.tags,
            tag_count=refs.tag_count,
        )

    def _read_block_list(self, h: BlobHash) -> BlockList:
        try:
            data = (self._blocks / h).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {h} is not in the store") from None
        try:
            return BlockList.from_bytes(data)
        except ValueError as exc:
            raise BlobCorrupt(f"block list of blob {h} is damaged: {exc}") from None

    def _delete_blob(self, h: BlobHash) -> int:
        """Unlink the content (or the in-place record) then blocks, never the other way round;
        returns the bytes freed. Caller locks."""
        path = self._data / h
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            size = 0
        unlink(self._external / h)
        unlink(self._blocks / h)
        return size

    def _forget(self, h: BlobHash) -> None:
        with self._lock:
            self._delete_blob(h)

    def _names(self) -> builtins.list[BlobHash]:
        names = set(os.listdir(self._data)) | set(os.listdir(self._external))
        return sorted(n for n in names if is_blob_hash(n))  # open() deleted any other

    # -- adding -----------------------------------------------------------------------------

    async def add_path(
        self, path: str | Path, *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        """Copy a file into the store (constant memory); ``tag``/``pin`` apply atomically so GC
        cannot take the new blob between the add and the tagging."""
        source = Path(path)
        with os_errors(f"reading {source}"):
            f = await trio.to_thread.run_sync(source.open, "rb")
        with f:
            return await self.add_file(f, tag=tag, pin=pin)

    async def add_file(self, f: BinaryIO, *, tag: str | None = None, pin: bool = False) -> BlobInfo:
        """Copy an open file from its current position to its end (the API opens the file
        itself, so that what it checked is what gets read): a regular file in the kernel
        (`_hash_file`), anything else (a pipe) read chunk by chunk."""
        src = f.fileno()
        if stat.S_ISREG(os.fstat(src).st_mode):
            start = f.tell()
            return await self._ingest(functools.partial(_hash_file, src, start), tag, pin)
        return await self._write(
            _read_chunks(f.read, f"reading {getattr(f, 'name', 'the file')}"), tag, pin
        )

    async def add_bytes(
        self, data: bytes, *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        async def chunks() -> AsyncIterator[memoryview]:
            view = memoryview(data)
            for off in range(0, view.nbytes, READ_CHUNK):
                yield view[off : off + READ_CHUNK]

        return await self._write(chunks(), tag, pin)

    async def add_stream(
        self, chunks: AsyncIterable[bytes], *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        """Add what an async byte stream (an HTTP upload) yields, in constant memory; a stream that
        fails or is cancelled midway leaves nothing behind."""

        async def batches() -> AsyncIterator[bytearray]:
            pending = bytearray()
            async for chunk in chunks:
                pending += chunk
                if len(pending) >= _STREAM_BATCH:
                    yield pending
                    pending = bytearray()
            yield pending

        return await self._write(batches(), tag, pin)

    async def _write(self, chunks: AsyncIterator[Buffer], tag: str | None, pin: bool) -> BlobInfo:
        """Write, hash and install what ``chunks`` yields (see `_hash_chunks`)."""
        return await self._ingest(functools.partial(_hash_chunks, chunks), tag, pin)

    async def _ingest(
        self, fill: Callable[[int, str], Awaitable[BlobHasher]], tag: str | None, pin: bool
    ) -> BlobInfo:
        """Have ``fill(fd, doing)`` write, hash and fsync the blob into a new temp file (its
        fsync overlapping the hashing of the last chunks), then install it; cancelled or failed,
        it leaves no temp file."""
        tmp = tmp_path(self._tmp)
        try:
            with os_errors(f"writing blob to {tmp}"):
                fd = create(tmp)
            try:
                hasher = await fill(fd, f"writing blob to {tmp}")
            finally:
                os.close(fd)
            digest, bl = hasher.finish()
            return await trio.to_thread.run_sync(
                self.install, tmp, BlobHash(digest.hex()), bl, tag, pin
            )
        finally:
            unlink(tmp)

    def install(
        self, tmp: Path, h: BlobHash, bl: BlockList, tag: str | None, pin: bool
    ) -> BlobInfo:
        """Move a fully written, fsynced, hashed file into data/ (blocks file first); a blob
        held in place until now is from then on the store's own copy."""
        blocks_tmp = tmp_path(self._tmp)
        try:
            with os_errors(f"storing blob {h}"):
                with open(blocks_tmp, "wb") as f:
                    f.write(bl.to_bytes())
                    f.flush()
                    os.fsync(f.fileno())
                with self._lock:
                    if not (self._data / h).exists():
                        os.replace(blocks_tmp, self._blocks / h)
                        os.replace(tmp, self._data / h)
                        unlink(self._external / h)
                    self._refs.add(h, tag, pin)
                fsync_dir(self._blocks)
                fsync_dir(self._data)
        finally:
            unlink(blocks_tmp)
        return self._info_sync(h, bl)

    async def add_in_place(
        self,
        path: str | Path,
        *,
        opened: BinaryIO | None = None,
        tag: str | None = None,
        pin: bool = False,
    ) -> BlobInfo:
        """Add a regular file without copying it: the store records where it is, its size,
        mtime and inode, and its block hashes, and serves from it, verifying as it reads.

        ``opened``: the file as the caller opened (and checked) it, ``path`` being where it is
        (`fsutil.open_real`). What is hashed and recorded is always the file read through one
        descriptor, never the path opened again: a path can name another file a moment later.
        """
        if opened is not None:
            return await self._add_in_place(opened.fileno(), Path(path), tag, pin)
        try:
            with os_errors(f"reading {path}"):
                f, real = await trio.to_thread.run_sync(open_real, Path(path))
        except (NotRegularFile, FileReplaced) as exc:
            raise StoreError(str(exc)) from None
        with f:
            return await self._add_in_place(f.fileno(), real, tag, pin)

    async def _add_in_place(self, fd: int, source: Path, tag: str | None, pin: bool) -> BlobInfo:
        doing = f"reading {source}"
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise StoreError(f"{source} is not a regular file")
        hasher = await _hash_file(fd, 0, None, doing)
        after = os.fstat(fd)
        try:
            # The record names the file by its path: that must still be the file just hashed.
            now: os.stat_result | None = await trio.to_thread.run_sync(os.stat, source)
        except OSError:
            now = None
        unchanged = FileIdentity.of(before).matches(after) and hasher.size == after.st_size
        if not unchanged or now is None or not FileIdentity.of(after).matches(now):
            raise StoreError(f"{source} changed while it was being added; add it again")
        digest, bl = hasher.finish()
        record = ExternalFile.at(source, after).model_dump_json().encode()
        return await trio.to_thread.run_sync(
            self._install_external, BlobHash(digest.hex()), bl, record, tag, pin
        )

    def _install_external(
        self, h: BlobHash, bl: BlockList, record: bytes, tag: str | None, pin: bool
    ) -> BlobInfo:
        """Record a blob added in place (blocks file first); one the store holds a copy of
        already only gains the refs."""
        with os_errors(f"storing blob {h}"):
            with self._lock:
                if not (self._data / h).exists():
                    write_atomic(self._tmp, self._blocks / h, bl.to_bytes())
                    write_atomic(self._tmp, self._external / h, record)
                self._refs.add(h, tag, pin)
            fsync_dir(self._blocks)
            fsync_dir(self._external)
        return self._info_sync(h, bl)

    # -- reading ----------------------------------------------------------------------------

    def has(self, hash: BlobHash) -> bool:
        return self._stored(hash)

    async def info(self, hash: BlobHash) -> BlobInfo:
        return await trio.to_thread.run_sync(self._info_sync, hash)

    async def block_list(self, hash: BlobHash) -> BlockList:
        h = hash

        def read() -> BlockList:
            if not self._stored(h):
                raise BlobNotFound(f"blob {h} is not in the store")
            return self._read_block_list(h)

        return await trio.to_thread.run_sync(read)

    async def list(self) -> builtins.list[BlobInfo]:
        return await trio.to_thread.run_sync(self._list_sync)

    def _list_sync(self) -> builtins.list[BlobInfo]:
        out: builtins.list[BlobInfo] = []
        for h in self._names():
            with contextlib.suppress(BlobNotFound):
                out.append(self._info_sync(h))
        return out

    @contextlib.contextmanager
    def in_use(self, hash: BlobHash) -> Iterator[None]:
        """Mark a hash as in use (reading, serving, fetching): GC and remove leave it alone.

        The hash need not be stored yet, so a fetch can hold it from the start.
        """
        h = hash
        with self._lock:
            self._in_use[h] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[h] -= 1
                if not self._in_use[h]:
                    del self._in_use[h]

    def is_in_use(self, hash: BlobHash) -> bool:
        with self._lock:
            return self._in_use[hash] > 0

    @contextlib.contextmanager
    def open_read(self, hash: BlobHash) -> Iterator[io.BufferedReader]:
        """The store's own file of a blob, held in use while open (blocking reads: use threads).
        A blob added in place has none: read it with `read_range`, which verifies it."""
        h = hash
        with self.in_use(h):
            try:
                f = open(self._data / h, "rb")
            except FileNotFoundError:
                raise BlobNotFound(f"blob {h} is not in the store") from None
            with f:
                yield f

    @contextlib.contextmanager
    def _open_content(self, h: BlobHash) -> Iterator[_Content]:
        """The blob's bytes, held in use while open: its data file, or its file added in place
        (checked against the record now and per block on every read; forgotten if changed)."""
        with self.in_use(h):
            blocks: BlockList | None = None
            try:
                fd = os.open(self._data / h, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd, blocks = self._open_external(h)
            try:
                yield _Content(h, fd, os.fstat(fd).st_size, blocks)
            except BlobCorrupt:
                if blocks is not None:
                    self._forget(h)
                raise
            finally:
                os.close(fd)

    def _open_external(self, h: BlobHash) -> tuple[int, BlockList]:
        """The file of a blob added in place, if it still looks as recorded; else the blob is
        forgotten (missing) and BlobNotFound raised."""
        record = self._external_file(h)
        if record is not None:
            blocks = self._read_block_list(h)
            with contextlib.suppress(OSError):
                fd = os.open(record.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                if record.matches(os.fstat(fd)) and blocks.size == record.size:
                    return fd, blocks
                os.close(fd)
        if (self._external / h).exists():
            self._forget(h)
            raise BlobNotFound(f"blob {h} is missing: the file it was added in place from changed")
        raise BlobNotFound(f"blob {h} is not in the store")

    async def read_range(
        self,
        hash: BlobHash,
        offset: int = 0,
        length: int | None = None,
        *,
        chunk_size: int = BLOCK_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """Stream bytes [offset, offset+length) in chunks; wrap in contextlib.aclosing so an
        early exit releases the in-use mark at once rather than at garbage collection."""
        h = hash
        with self._open_content(h) as content:
            if length is None:
                length = content.size - offset
            if offset < 0 or length < 0 or offset + length > content.size:
                raise ValueError(f"range {offset}+{length} outside blob of {content.size} bytes")
            pos, end = offset, offset + length
            while pos < end:
                n = min(chunk_size, end - pos)
                chunk = await trio.to_thread.run_sync(content.pread, pos, n)
                pos += n
                yield chunk

    async def serve_blocks(
        self, hash: BlobHash, offset: int, length: int
    ) -> AsyncGenerator[memoryview, None]:
        """The blob provider's read: bytes [offset, offset+length), ``offset`` at the start of a
        block, one block per view of a single reused buffer, so each view is valid only until
        the next is asked for (the provider writes it to a stream, which copies it at once).
        Wrap in contextlib.aclosing, as `read_range`.

        A block already in the page cache, as a blob being served usually is, is read right
        here (a read that never waits for the disk; a hop to a worker thread and back per block
        cost the provider 8% of its CPU). The rest of a block, and every block of a blob added
        in place (verified as it is read), are read in a worker thread."""
        h = hash
        with self._open_content(h) as content, os_errors(f"serving blob {h}"):
            if offset % BLOCK_SIZE or length < 0 or offset + length > content.size:
                raise ValueError(f"blocks {offset}+{length} outside blob of {content.size} bytes")
            buffer = memoryview(bytearray(min(BLOCK_SIZE, length)))
            for pos in range(offset, offset + length, BLOCK_SIZE):
                view = buffer[: min(BLOCK_SIZE, offset + length - pos)]
                cached = content.read_cached(pos, view)
                if cached < view.nbytes:
                    await trio.to_thread.run_sync(content.read_into, pos + cached, view[cached:])
                yield view

    async def export(self, hash: BlobHash, dest: str | Path, *, durable: bool = True) -> BlobInfo:
        """Copy a blob to ``dest`` (temp file + rename there), checking its hash on the way.
        ``durable=False`` skips the fsyncs, for a scratch copy that a crash may lose."""
        return await trio.to_thread.run_sync(self._export_sync, hash, Path(dest), durable)

    def _export_sync(self, h: BlobHash, dest: Path, durable: bool) -> BlobInfo:
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            with self._open_content(h) as src, os_errors(f"exporting blob {h} to {dest}"):
                fd = create(tmp)
                try:
                    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                    for off in range(0, src.size, READ_CHUNK):
                        trio.from_thread.check_cancelled()
                        chunk = src.pread(off, min(READ_CHUNK, src.size - off))
                        hasher.update(chunk)
                        write_all(fd, memoryview(chunk))
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if hasher.hexdigest() != h:
                    self._forget(h)
                    raise BlobCorrupt(
                        f"blob {h} was damaged on disk and has been removed; fetch it again"
                    )
                os.replace(tmp, dest)
                if durable:
                    fsync_dir(dest.parent)
        finally:
            unlink(tmp)
        return self._info_sync(h)

    async def verify(self, hash: BlobHash) -> bool:
        """Re-hash a stored blob; a damaged one is removed (one added in place, forgotten) and
        False returned."""
        return await trio.to_thread.run_sync(self._verify_sync, hash)

    def _verify_sync(self, h: BlobHash) -> bool:
        try:
            with self._open_content(h) as content:
                stored = self._read_block_list(h)
                hasher = BlobHasher()
                for off in range(0, content.size, READ_CHUNK):
                    hasher.update(content.pread(off, min(READ_CHUNK, content.size - off)))
                digest, bl = hasher.finish()
        except BlobCorrupt:
            return False
        if digest.hex() == h and bl == stored:
            return True
        self._forget(h)
        return False

    # -- removal, tags, pins, GC ------------------------------------------------------------

    async def remove(self, hash: BlobHash, *, force: bool = False) -> None:
        """Delete a blob (of one added in place, only the record: the file stays). Refuses while
        it is in use, pinned or tagged, unless ``force``, which also drops its pins and tags
        (readers with the file open keep reading on POSIX)."""
        await trio.to_thread.run_sync(self._remove_sync, hash, force)

    def _remove_sync(self, h: BlobHash, force: bool) -> None:
        with self._lock:
            if not ((self._data / h).exists() or (self._external / h).exists()):
                raise BlobNotFound(f"blob {h} is not in the store")
            if not force:
                if self._in_use[h]:
                    raise BlobInUse(
                        f"blob {h} is in use (being read, served or written); retry later or force"
                    )
                refs = self._refs.of(h)
                if refs.pinned or refs.tags:
                    why = ", ".join(["pinned"] * refs.pinned + [f"tag {t!r}" for t in refs.tags])
                    if more := refs.tag_count - len(refs.tags):
                        why += f" and {more} more tags"
                    raise BlobInUse(f"blob {h} is kept by {why}; unpin/untag it first or force")
            else:
                self._refs.drop(h)
            self._delete_blob(h)

    async def set_tag(self, name: str, hash: BlobHash) -> None:
        """Point tag ``name`` at a hash (stored or not yet fetched); tags keep blobs from GC."""
        await trio.to_thread.run_sync(self._locked, self._refs.set_tag, name, hash)

    async def set_tags(self, tags: Mapping[str, BlobHash]) -> None:
        """`set_tag` for many, in one thread hop and one transaction."""

        def set_all() -> None:
            with self._lock:
                self._refs.set_tags(tags)

        await trio.to_thread.run_sync(set_all)

    async def delete_tag(self, name: str) -> bool:
        """Returns whether the tag existed."""
        return await trio.to_thread.run_sync(self._locked, self._refs.delete_tag, name)

    async def tags(self) -> dict[str, str]:
        return await trio.to_thread.run_sync(self._locked, self._refs.tags)

    async def pin(self, hash: BlobHash) -> None:
        """Pin a stored blob: GC never removes it. BlobNotFound if it is not stored, so that a
        mistyped hash is an error rather than a pin that silently keeps nothing."""
        await trio.to_thread.run_sync(self._pin_sync, hash)

    def _pin_sync(self, h: BlobHash) -> None:
        # removal and GC take the lock too: the blob cannot go between check and pin
        with self._lock:
            if not self._stored(h):
                raise BlobNotFound(f"blob {h} is not in the store")
            self._refs.pin(h)

    async def unpin(self, hash: BlobHash) -> bool:
        """Returns whether the hash was pinned."""
        return await trio.to_thread.run_sync(self._locked, self._refs.unpin, hash)

    def _locked(self, call: Callable[..., _T], *args: str) -> _T:
        with self._lock:
            return call(*args)

    async def gc(self, protected: set[BlobHash] | frozenset[BlobHash] = frozenset()) -> GcResult:
        """Delete blobs and abandoned partial downloads that nothing keeps: not pinned, not
        tagged, not in use, not in ``protected`` (the job layer's live jobs)."""
        keep = set(protected)
        return await trio.to_thread.run_sync(self._gc_sync, keep)

    def _gc_sync(self, keep: set[BlobHash]) -> GcResult:
        result = GcResult()

        def collectable(h: BlobHash) -> bool:
            return h not in keep and not self._in_use[h] and not self._refs.keeps(h)

        for h in self._names():
            with self._lock:  # per blob, so in_use() never waits for a whole pass
                if collectable(h):
                    result.freed_bytes += self._delete_blob(h)
                    result.removed.append(h)
        for h in self._partials.hashes():
            with self._lock:
                if collectable(h):
                    result.freed_bytes += self._partials.delete(h)
                    result.removed_partials.append(h)
        return result

    # -- partial downloads (PartialHost) ----------------------------------------------------

    async def partial(self, hash: BlobHash, block_list: BlockList | None = None) -> PartialBlob:
        """Start or resume a verified download of ``hash``.

        Without ``block_list`` an existing download is resumed from its state file. A
        ``block_list`` different from the stored one restarts the download: the caller is
        the one who checked it against the trusted root. Blocks recorded as written are
        re-verified from disk, so a torn write is never trusted. Close the result (or use it
        as a context manager) when done; it holds the hash in use.
        """
        h = hash
        with self._lock:
            if h in self._open_partials:
                raise BlobInUse(f"a download of blob {h} is already open")
            self._open_partials.add(h)
            self._in_use[h] += 1
        try:
            return await trio.to_thread.run_sync(self._open_partial_sync, h, block_list)
        except BaseException:
            self.release_partial(h)
            raise

    def _open_partial_sync(self, h: BlobHash, block_list: BlockList | None) -> PartialBlob:
        if self._stored(h):
            raise StoreError(f"blob {h} is already stored; nothing to download")
        return self._partials.open(self, h, block_list)

    def release_partial(self, h: BlobHash) -> None:
        with self._lock:
            self._open_partials.discard(h)
            self._in_use[h] -= 1
            if not self._in_use[h]:
                del self._in_use[h]

    def discard_partial(self, h: BlobHash) -> None:
        with self._lock:
            self._partials.delete(h)

    async def partial_progress(self, hash: BlobHash) -> PartialProgress | None:
        """Progress of a download, open or not (for a closed one, as recorded, unverified)."""
        h = hash

        def read() -> PartialProgress | None:
            state = self._partials.read_state(h)
            return None if state is None else progress(h, state[0], set(state[1]))

        return await trio.to_thread.run_sync(read)
