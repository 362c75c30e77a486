"""Content-addressed blob store on disk (the IROH_BLOBS_PATH folder).

A blob is named by the lowercase hex BLAKE3 hash of its content, the same name iroh-blobs
gives it. Layout under the root folder::

    data/<hex>       content; its presence is the commit point of a blob
    blocks/<hex>     BlockList bytes (block hashes + size), always written before data/<hex>
    tmp/             temp files on the same filesystem, so renames are atomic
    partial/<hex>.data, <hex>.state   resumable downloads (see PartialBlob)
    meta.sqlite      tags (name -> hash) and pins: the roots that GC keeps
    lock             flock: one process per store, because in-use counts live in memory

Every blob enters data/ by an atomic rename of a fully written, fsynced and hashed temp file,
so a crash leaves either the whole blob or nothing. Opening the store deletes crash leftovers
and re-verifies any data file whose block list is missing or does not fit it; full content is
re-checked by `verify` and on every `export`, and per block by any fetcher.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import io
import os
import shutil
import sqlite3
import struct
import threading
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from pathlib import Path

import blake3
import trio

from .blocks import BLOCK_SIZE, HASH_LEN, READ_CHUNK, BlobHasher, BlockList, block_count, hash_file
from .model import BlobInfo, GcResult, PartialProgress

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
    "normalize_hash",
]

_STATE_MAGIC = b"p2pnode-partial-v1\n"
_INDEX = struct.Struct(">Q")


class StoreError(Exception):
    """The store could not do what was asked; the message is meant for people."""


class BlobNotFound(StoreError):
    """No complete blob (or partial download) with that hash is stored."""


class BlobCorrupt(StoreError):
    """Bytes did not match the hash they were supposed to have; nothing bad was kept."""


class BlobInUse(StoreError):
    """The blob is being read, served or written, or is pinned/tagged."""


def normalize_hash(value: str) -> str:
    """Lowercase 64-digit hex, or ValueError: names become paths, so they must be checked."""
    h = value.strip().lower()
    if len(h) != 2 * HASH_LEN or h.strip("0123456789abcdef"):
        raise ValueError(f"not a blob hash (64 hex digits): {value!r}")
    return h


def _is_hash(name: str) -> bool:
    return len(name) == 2 * HASH_LEN and name == name.lower() and not name.strip("0123456789abcdef")


def _store_error(exc: OSError, doing: str) -> StoreError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return StoreError(f"disk full while {doing}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f"{exc.filename} " if exc.filename else ""
        return StoreError(f"permission denied: {where}(while {doing})")
    return StoreError(f"{doing} failed: {exc.strerror or exc}")


@contextlib.contextmanager
def _os_errors(doing: str) -> Iterator[None]:
    """Turn OSError into StoreError with a message saying what was being done."""
    try:
        yield
    except OSError as exc:
        raise _store_error(exc, doing) from exc


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until everything is written (short writes happen on signals and pipes)."""
    while data.nbytes:
        data = data[os.write(fd, data) :]


def _create(path: Path) -> int:
    """A new file (never an existing one) for this process alone: temp files become blobs."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class BlobStore:
    """The node's blob store. Construct with `await BlobStore.open(root)` from trio code.

    The constructor blocks (it recovers from crashes); all methods that touch file contents
    are async and run their IO in worker threads. Short metadata operations share one lock
    with the in-use counts, so GC, removal and commits never race each other.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._data = self.root / "data"
        self._blocks = self.root / "blocks"
        self._tmp = self.root / "tmp"
        self._partial = self.root / "partial"
        with _os_errors(f"opening blob store {self.root}"):
            for d in (self._data, self._blocks, self._tmp, self._partial):
                d.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(
                self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
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
            self._db = sqlite3.connect(
                self.root / "meta.sqlite", check_same_thread=False, isolation_level=None
            )
            self._db.executescript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = FULL;
                CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS tags_by_hash ON tags (hash);
                CREATE TABLE IF NOT EXISTS pins (hash TEXT PRIMARY KEY);
                """
            )
            with _os_errors(f"recovering blob store {self.root}"):
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
        if hasattr(self, "_db"):
            self._db.close()
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
        for name in os.listdir(self._blocks):
            if name not in data_names:
                (self._blocks / name).unlink()
        for name in data_names:
            if not _is_hash(name):
                (self._data / name).unlink()
            elif self._load_block_list(name) is None:
                self._reverify(name)
        names = os.listdir(self._partial)
        for name in names:
            stem, _, ext = name.partition(".")
            twin = f"{stem}.{'state' if ext == 'data' else 'data'}"
            if not _is_hash(stem) or ext not in ("data", "state") or twin not in names:
                (self._partial / name).unlink()
        for d in (self._data, self._blocks, self._partial):
            _fsync_dir(d)

    def _load_block_list(self, h: str) -> BlockList | None:
        """The stored BlockList if it parses and fits the data file's size, else None."""
        try:
            bl = BlockList.from_bytes((self._blocks / h).read_bytes())
            return bl if bl.size == (self._data / h).stat().st_size else None
        except (OSError, ValueError):
            return None

    def _reverify(self, h: str) -> None:
        """Keep data/<h> only if it hashes to h, rebuilding its block list."""
        digest, bl = hash_file(self._data / h)
        if digest.hex() == h:
            self._write_atomic(self._blocks / h, bl.to_bytes())
        else:
            (self._data / h).unlink()
            _unlink(self._blocks / h)

    # -- small helpers ----------------------------------------------------------------------

    def _tmp_path(self) -> Path:
        return self._tmp / uuid.uuid4().hex

    def _write_atomic(self, dest: Path, data: bytes) -> None:
        """Write a small file via tmp/ + fsync + rename; the caller fsyncs dest's folder."""
        tmp = self._tmp_path()
        try:
            fd = _create(tmp)
            try:
                _write_all(fd, memoryview(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, dest)
        except BaseException:
            _unlink(tmp)
            raise

    def _refs(self, h: str) -> tuple[bool, tuple[str, ...]]:
        """(pinned, tags) of a hash; caller holds self._lock."""
        pinned = self._db.execute("SELECT 1 FROM pins WHERE hash = ?", (h,)).fetchone() is not None
        tags = tuple(
            r[0]
            for r in self._db.execute("SELECT name FROM tags WHERE hash = ? ORDER BY name", (h,))
        )
        return pinned, tags

    def _add_refs(self, h: str, tag: str | None, pin: bool) -> None:
        """Caller holds self._lock."""
        if tag is not None:
            self._db.execute("INSERT OR REPLACE INTO tags (name, hash) VALUES (?, ?)", (tag, h))
        if pin:
            self._db.execute("INSERT OR IGNORE INTO pins (hash) VALUES (?)", (h,))

    def _info_sync(self, h: str, bl: BlockList | None = None) -> BlobInfo:
        if bl is None:
            bl = self._read_block_list(h)
        with self._lock:
            pinned, tags = self._refs(h)
        return BlobInfo(hash=h, size=bl.size, root=bl.root_hex, pinned=pinned, tags=tags)

    def _read_block_list(self, h: str) -> BlockList:
        try:
            data = (self._blocks / h).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {h} is not in the store") from None
        try:
            return BlockList.from_bytes(data)
        except ValueError as exc:
            raise BlobCorrupt(f"block list of blob {h} is damaged: {exc}") from None

    def _delete_blob(self, h: str) -> int:
        """Unlink data then blocks (never data without blocks); returns freed bytes. Caller
        locks."""
        path = self._data / h
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            size = 0
        _unlink(self._blocks / h)
        return size

    # -- adding -----------------------------------------------------------------------------

    async def add_path(
        self, path: str | Path, *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        """Copy a file into the store (constant memory); ``tag``/``pin`` apply atomically so GC
        cannot take the new blob between the add and the tagging."""
        return await trio.to_thread.run_sync(self._add_sync, Path(path), tag, pin)

    async def add_bytes(
        self, data: bytes, *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        return await trio.to_thread.run_sync(self._add_sync, memoryview(data), tag, pin)

    def _add_sync(self, source: Path | memoryview, tag: str | None, pin: bool) -> BlobInfo:
        """Runs in a trio worker thread; polls for cancellation between chunks so a cancelled
        add of a huge file stops promptly (and leaves no temp file)."""
        tmp = self._tmp_path()
        try:
            with _os_errors(f"writing blob to {tmp}"):
                fd = _create(tmp)
                try:
                    hasher = BlobHasher()
                    if isinstance(source, Path):
                        self._copy_file(source, fd, hasher)
                    else:
                        for off in range(0, source.nbytes, READ_CHUNK):
                            trio.from_thread.check_cancelled()
                            chunk = source[off : off + READ_CHUNK]
                            hasher.update(chunk)
                            _write_all(fd, chunk)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            digest, bl = hasher.finish()
            return self._install(tmp, digest.hex(), bl, tag, pin)
        finally:
            _unlink(tmp)

    async def add_stream(
        self, chunks: AsyncIterable[bytes], *, tag: str | None = None, pin: bool = False
    ) -> BlobInfo:
        """Add what an async byte stream (an HTTP upload) yields, in constant memory; a stream that
        fails or is cancelled midway leaves nothing behind."""
        tmp = self._tmp_path()
        try:
            with _os_errors(f"writing blob to {tmp}"):
                fd = _create(tmp)
            try:
                hasher = BlobHasher()
                pending = bytearray()
                async for chunk in chunks:
                    pending += chunk
                    if len(pending) >= BLOCK_SIZE:
                        data, pending = pending, bytearray()
                        await trio.to_thread.run_sync(self._hash_and_write, fd, hasher, data, tmp)
                await trio.to_thread.run_sync(self._hash_and_write, fd, hasher, pending, tmp)
                with _os_errors(f"writing blob to {tmp}"):
                    await trio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
            digest, bl = hasher.finish()
            return await trio.to_thread.run_sync(self._install, tmp, digest.hex(), bl, tag, pin)
        finally:
            _unlink(tmp)

    @staticmethod
    def _hash_and_write(fd: int, hasher: BlobHasher, data: bytearray, tmp: Path) -> None:
        hasher.update(data)
        with _os_errors(f"writing blob to {tmp}"):
            _write_all(fd, memoryview(data))

    @staticmethod
    def _copy_file(source: Path, fd: int, hasher: BlobHasher) -> None:
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        with _os_errors(f"reading {source}"):
            f = open(source, "rb", buffering=0)
        with f:
            while True:
                trio.from_thread.check_cancelled()
                with _os_errors(f"reading {source}"):
                    n = f.readinto(buf)
                if not n:
                    break
                hasher.update(view[:n])
                _write_all(fd, view[:n])

    def _install(self, tmp: Path, h: str, bl: BlockList, tag: str | None, pin: bool) -> BlobInfo:
        """Move a fully written, fsynced, hashed file into data/ (blocks file first)."""
        blocks_tmp = self._tmp_path()
        try:
            with _os_errors(f"storing blob {h}"):
                with open(blocks_tmp, "wb") as f:
                    f.write(bl.to_bytes())
                    f.flush()
                    os.fsync(f.fileno())
                with self._lock:
                    if not (self._data / h).exists():
                        os.replace(blocks_tmp, self._blocks / h)
                        os.replace(tmp, self._data / h)
                    self._add_refs(h, tag, pin)
                _fsync_dir(self._blocks)
                _fsync_dir(self._data)
        finally:
            _unlink(blocks_tmp)
        return self._info_sync(h, bl)

    # -- reading ----------------------------------------------------------------------------

    def has(self, hash: str) -> bool:
        return (self._data / normalize_hash(hash)).exists()

    async def info(self, hash: str) -> BlobInfo:
        return await trio.to_thread.run_sync(self._info_sync, normalize_hash(hash))

    async def block_list(self, hash: str) -> BlockList:
        return await trio.to_thread.run_sync(self._read_block_list, normalize_hash(hash))

    async def list(self) -> builtins.list[BlobInfo]:
        return await trio.to_thread.run_sync(self._list_sync)

    def _list_sync(self) -> builtins.list[BlobInfo]:
        out: builtins.list[BlobInfo] = []
        for h in sorted(os.listdir(self._data)):
            with contextlib.suppress(BlobNotFound):
                out.append(self._info_sync(h))
        return out

    @contextlib.contextmanager
    def in_use(self, hash: str) -> Iterator[None]:
        """Mark a hash as in use (reading, serving, fetching): GC and remove leave it alone.

        The hash need not be stored yet, so a fetch can hold it from the start.
        """
        h = normalize_hash(hash)
        with self._lock:
            self._in_use[h] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[h] -= 1
                if not self._in_use[h]:
                    del self._in_use[h]

    def is_in_use(self, hash: str) -> bool:
        with self._lock:
            return self._in_use[normalize_hash(hash)] > 0

    @contextlib.contextmanager
    def open_read(self, hash: str) -> Iterator[io.BufferedReader]:
        """A binary file of the blob, held in use while open. Blocking reads: use threads."""
        h = normalize_hash(hash)
        with self.in_use(h):
            try:
                f = open(self._data / h, "rb")
            except FileNotFoundError:
                raise BlobNotFound(f"blob {h} is not in the store") from None
            with f:
                yield f

    async def read_range(
        self, hash: str, offset: int = 0, length: int | None = None, *, chunk_size: int = BLOCK_SIZE
    ) -> AsyncGenerator[bytes, None]:
        """Stream bytes [offset, offset+length) in chunks; wrap in contextlib.aclosing so an
        early exit releases the in-use mark at once rather than at garbage collection."""
        with self.open_read(hash) as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            if length is None:
                length = size - offset
            if offset < 0 or length < 0 or offset + length > size:
                raise ValueError(f"range {offset}+{length} outside blob of {size} bytes")
            pos, end = offset, offset + length
            while pos < end:
                chunk = await trio.to_thread.run_sync(os.pread, fd, min(chunk_size, end - pos), pos)
                if not chunk:
                    raise BlobCorrupt(f"blob {hash} is shorter on disk than recorded")
                pos += len(chunk)
                yield chunk

    async def export(self, hash: str, dest: str | Path, *, durable: bool = True) -> BlobInfo:
        """Copy a blob to ``dest`` (temp file + rename there), checking its hash on the way.
        ``durable=False`` skips the fsyncs, for a scratch copy that a crash may lose."""
        return await trio.to_thread.run_sync(
            self._export_sync, normalize_hash(hash), Path(dest), durable
        )

    def _export_sync(self, h: str, dest: Path, durable: bool) -> BlobInfo:
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            with self.open_read(h) as src, _os_errors(f"exporting blob {h} to {dest}"):
                fd = _create(tmp)
                try:
                    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                    buf = bytearray(READ_CHUNK)
                    view = memoryview(buf)
                    while n := src.readinto(buf):
                        trio.from_thread.check_cancelled()
                        hasher.update(view[:n])
                        _write_all(fd, view[:n])
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if hasher.hexdigest() != h:
                    with self._lock:
                        self._delete_blob(h)
                    raise BlobCorrupt(
                        f"blob {h} was damaged on disk and has been removed; fetch it again"
                    )
                os.replace(tmp, dest)
                if durable:
                    _fsync_dir(dest.parent)
        finally:
            _unlink(tmp)
        return self._info_sync(h)

    async def verify(self, hash: str) -> bool:
        """Re-hash a stored blob; a damaged one is removed and False returned."""
        return await trio.to_thread.run_sync(self._verify_sync, normalize_hash(hash))

    def _verify_sync(self, h: str) -> bool:
        with self.open_read(h):
            stored = self._read_block_list(h)
            digest, bl = hash_file(self._data / h)
        if digest.hex() == h and bl == stored:
            return True
        with self._lock:
            self._delete_blob(h)
        return False

    # -- removal, tags, pins, GC ------------------------------------------------------------

    async def remove(self, hash: str, *, force: bool = False) -> None:
        """Delete a blob. Refuses while it is in use, pinned or tagged, unless ``force``, which
        also drops its pins and tags (readers with the file open keep reading on POSIX)."""
        await trio.to_thread.run_sync(self._remove_sync, normalize_hash(hash), force)

    def _remove_sync(self, h: str, force: bool) -> None:
        with self._lock:
            if not (self._data / h).exists():
                raise BlobNotFound(f"blob {h} is not in the store")
            if not force:
                if self._in_use[h]:
                    raise BlobInUse(
                        f"blob {h} is in use (being read, served or written); retry later or force"
                    )
                pinned, tags = self._refs(h)
                if pinned or tags:
                    why = ", ".join((["pinned"] if pinned else []) + [f"tag {t!r}" for t in tags])
                    raise BlobInUse(f"blob {h} is kept by {why}; unpin/untag it first or force")
            else:
                self._db.execute("DELETE FROM pins WHERE hash = ?", (h,))
                self._db.execute("DELETE FROM tags WHERE hash = ?", (h,))
            self._delete_blob(h)

    async def set_tag(self, name: str, hash: str) -> None:
        """Point tag ``name`` at a hash (stored or not yet fetched); tags keep blobs from GC."""
        h = normalize_hash(hash)
        sql = "INSERT OR REPLACE INTO tags (name, hash) VALUES (?, ?)"
        await trio.to_thread.run_sync(self._locked_sql, sql, (name, h))

    async def delete_tag(self, name: str) -> bool:
        """Returns whether the tag existed."""
        return (
            await trio.to_thread.run_sync(
                self._locked_sql, "DELETE FROM tags WHERE name = ?", (name,)
            )
            > 0
        )

    async def tags(self) -> dict[str, str]:
        def query() -> dict[str, str]:
            with self._lock:
                return dict(self._db.execute("SELECT name, hash FROM tags ORDER BY name"))

        return await trio.to_thread.run_sync(query)

    async def pin(self, hash: str) -> None:
        """Pin a stored blob: GC never removes it. BlobNotFound if it is not stored, so that a
        mistyped hash is an error rather than a pin that silently keeps nothing."""
        await trio.to_thread.run_sync(self._pin_sync, normalize_hash(hash))

    def _pin_sync(self, h: str) -> None:
        with (
            self._lock
        ):  # removal and GC take the lock too: the blob cannot go between check and pin
            if not self.has(h):
                raise BlobNotFound(f"blob {h} is not in the store")
            self._db.execute("INSERT OR IGNORE INTO pins (hash) VALUES (?)", (h,))

    async def unpin(self, hash: str) -> bool:
        """Returns whether the hash was pinned."""
        h = normalize_hash(hash)
        return (
            await trio.to_thread.run_sync(self._locked_sql, "DELETE FROM pins WHERE hash = ?", (h,))
            > 0
        )

    def _locked_sql(self, sql: str, args: tuple[str, ...]) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    async def gc(self, protected: set[str] | frozenset[str] = frozenset()) -> GcResult:
        """Delete blobs and abandoned partial downloads that nothing keeps: not pinned, not
        tagged, not in use, not in ``protected`` (the job layer's live jobs)."""
        keep = {normalize_hash(h) for h in protected}
        return await trio.to_thread.run_sync(self._gc_sync, keep)

    def _gc_sync(self, keep: set[str]) -> GcResult:
        result = GcResult()

        def collectable(h: str) -> bool:
            return h not in keep and not self._in_use[h] and self._refs(h) == (False, ())

        for h in os.listdir(self._data):
            with self._lock:  # per blob, so in_use() never waits for a whole pass
                if collectable(h):
                    result.freed_bytes += self._delete_blob(h)
                    result.removed.append(h)
        for name in os.listdir(self._partial):
            h, _, ext = name.partition(".")
            if ext != "state":
                continue
            with self._lock:
                if collectable(h):
                    result.freed_bytes += self._delete_partial_files(h)
                    result.removed_partials.append(h)
        return result

    # -- partial downloads ------------------------------------------------------------------

    async def partial(self, hash: str, block_list: BlockList | None = None) -> PartialBlob:
        """Start or resume a verified download of ``hash``.

        Without ``block_list`` an existing download is resumed from its state file. A
        ``block_list`` different from the stored one restarts the download: the caller is
        the one who checked it against the trusted root. Blocks recorded as written are
        re-verified from disk, so a torn write is never trusted. Close the result (or use it
        as a context manager) when done; it holds the hash in use.
        """
        h = normalize_hash(hash)
        with self._lock:
            if h in self._open_partials:
                raise BlobInUse(f"a download of blob {h} is already open")
            self._open_partials.add(h)
            self._in_use[h] += 1
        try:
            return await trio.to_thread.run_sync(self._open_partial_sync, h, block_list)
        except BaseException:
            self._release_partial(h)
            raise

    def _release_partial(self, h: str) -> None:
        with self._lock:
            self._open_partials.discard(h)
            self._in_use[h] -= 1
            if not self._in_use[h]:
                del self._in_use[h]

    def _partial_paths(self, h: str) -> tuple[Path, Path]:
        return self._partial / f"{h}.data", self._partial / f"{h}.state"

    def _delete_partial_files(self, h: str) -> int:
        data, state = self._partial_paths(h)
        try:
            size = data.stat().st_blocks * 512
        except FileNotFoundError:
            size = 0
        _unlink(data)
        _unlink(state)
        return size

    def _read_state(self, h: str) -> tuple[BlockList, builtins.list[int]] | None:
        """(block list, recorded block indices) from a state file; None if absent or damaged."""
        try:
            raw = self._partial_paths(h)[1].read_bytes()
        except FileNotFoundError:
            return None
        head = len(_STATE_MAGIC) + HASH_LEN
        if not raw.startswith(_STATE_MAGIC) or raw[len(_STATE_MAGIC) : head].hex() != h:
            return None
        try:
            size = _INDEX.unpack_from(raw, head)[0]
            end = head + 8 + HASH_LEN * block_count(size)
            bl = BlockList.from_bytes(raw[head:end])
        except (struct.error, ValueError):
            return None
        records = raw[end : end + (len(raw) - end) // 8 * 8]  # a torn last record is dropped
        return bl, [i for (i,) in _INDEX.iter_unpack(records) if i < len(bl)]

    def _write_state(self, h: str, bl: BlockList, done: set[int]) -> None:
        body = (
            _STATE_MAGIC
            + bytes.fromhex(h)
            + bl.to_bytes()
            + b"".join(_INDEX.pack(i) for i in sorted(done))
        )
        self._write_atomic(self._partial_paths(h)[1], body)

    def _open_partial_sync(self, h: str, block_list: BlockList | None) -> PartialBlob:
        if (self._data / h).exists():
            raise StoreError(f"blob {h} is already stored; nothing to download")
        data_path, _ = self._partial_paths(h)
        with _os_errors(f"opening download of blob {h}"):
            state = self._read_state(h)
            if state is not None and block_list is not None and state[0] != block_list:
                state = None
            if state is None or not data_path.exists():
                if block_list is None:
                    raise BlobNotFound(f"no resumable download of blob {h}")
                self._delete_partial_files(h)
                bl, done = block_list, set[int]()
                fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            else:
                bl = state[0]
                fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
                done = set[int]()
                for i in set(state[1]):
                    offset, length = bl.block_range(i)
                    if bl.verify_block(i, os.pread(fd, length, offset)):
                        done.add(i)
            try:
                os.ftruncate(fd, bl.size)
                # Reserve the space now: a full disk fails here, and block writes skip allocation.
                if bl.size:
                    os.posix_fallocate(fd, 0, bl.size)
                self._write_state(h, bl, done)
                _fsync_dir(self._partial)
                state_fd = os.open(
                    self._partial_paths(h)[1], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
                )
            except BaseException:
                os.close(fd)
                raise
        return PartialBlob(self, h, bl, fd, state_fd, done)

    async def partial_progress(self, hash: str) -> PartialProgress | None:
        """Progress of a download, open or not (for a closed one, as recorded, unverified)."""
        h = normalize_hash(hash)

        def read() -> PartialProgress | None:
            state = self._read_state(h)
            return None if state is None else _progress(h, state[0], set(state[1]))

        return await trio.to_thread.run_sync(read)


def _progress(h: str, bl: BlockList, done: set[int]) -> PartialProgress:
    return PartialProgress(
        hash=h,
        size=bl.size,
        blocks_total=len(bl),
        blocks_done=len(done),
        bytes_done=sum(bl.block_range(i)[1] for i in done),
    )


class PartialBlob:
    """A resumable download: blocks are verified before they touch the disk.

    Data goes to partial/<hex>.data at each block's offset; the state file holds the expected
    hash, the BlockList and an append-only log of finished blocks. Blocks may be written in
    any order and from several tasks at once.
    """

    def __init__(
        self, store: BlobStore, h: str, bl: BlockList, fd: int, state_fd: int, done: set[int]
    ) -> None:
        self.hash = h
        self.block_list = bl
        self._store = store
        self._fd = fd
        self._state_fd = state_fd
        self._done = done
        self._state_lock = threading.Lock()
        # While blocks arrive in order from the first, hash the content as it goes, so commit
        # need not read the whole blob back; any gap or resume falls back to that re-read.
        self._running_hash: blake3.blake3 | None = None if done else blake3.blake3()
        self._hashed_blocks = 0
        self._closed = False

    def missing_blocks(self) -> list[int]:
        return [i for i in range(len(self.block_list)) if i not in self._done]

    def progress(self) -> PartialProgress:
        return _progress(self.hash, self.block_list, set(self._done))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"download of blob {self.hash} is closed")

    async def write_block(self, index: int, data: bytes) -> None:
        """Verify block ``index`` and write it; a wrong block raises BlobCorrupt, writes nothing."""
        self._check_open()
        if not 0 <= index < len(self.block_list):
            raise BlobCorrupt(f"blob {self.hash} has no block {index}")
        if index in self._done:
            return
        await trio.to_thread.run_sync(self._write_block_sync, index, data)

    def _write_block_sync(self, index: int, data: bytes) -> None:
        if not self.block_list.verify_block(index, data):
            raise BlobCorrupt(
                f"block {index} of blob {self.hash} failed verification; nothing written"
            )
        with _os_errors(f"writing block {index} of blob {self.hash}"):
            _pwrite_all(self._fd, memoryview(data), index * BLOCK_SIZE)
            with self._state_lock:
                os.write(self._state_fd, _INDEX.pack(index))
                self._done.add(index)
                if self._running_hash is not None:
                    if index == self._hashed_blocks:
                        self._running_hash.update(data)
                        self._hashed_blocks += 1
                    else:
                        self._running_hash = None

    async def flush(self) -> None:
        """Push written blocks to disk now, so that commit's fsync finds little left to do.

        Fetchers call this alongside the download: the disk works while the network does.
        """
        self._check_open()
        await trio.to_thread.run_sync(os.fdatasync, self._fd)

    async def commit(self, *, tag: str | None = None, pin: bool = False) -> BlobInfo:
        """Re-hash everything, then move the blob into the store; on a hash mismatch the
        download is deleted and BlobCorrupt raised. Closes the download."""
        self._check_open()
        if missing := self.missing_blocks():
            raise StoreError(
                f"cannot commit blob {self.hash}: {len(missing)} of {len(self.block_list)} "
                "blocks missing"
            )
        return await trio.to_thread.run_sync(self._commit_sync, tag, pin)

    def _commit_sync(self, tag: str | None, pin: bool) -> BlobInfo:
        store, h = self._store, self.hash
        data_path, state_path = store._partial_paths(h)
        with _os_errors(f"committing blob {h}"):
            if self._running_hash is not None and self._hashed_blocks == len(self.block_list):
                digest = self._running_hash.hexdigest()
            else:
                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                for off in range(0, self.block_list.size, READ_CHUNK):
                    trio.from_thread.check_cancelled()
                    hasher.update(os.pread(self._fd, READ_CHUNK, off))
                digest = hasher.hexdigest()
            if digest != h:
                self.close()
                with store._lock:
                    store._delete_partial_files(h)
                raise BlobCorrupt(
                    f"downloaded content does not hash to {h}; the download was discarded"
                )
            os.fsync(self._fd)
            info = store._install(data_path, h, self.block_list, tag, pin)
            _unlink(data_path)  # only left when the blob was already stored
            _unlink(state_path)
        self.close()
        return info

    def close(self) -> None:
        """Stop writing; what was written stays on disk for a later resume."""
        if self._closed:
            return
        self._closed = True
        os.close(self._fd)
        os.close(self._state_fd)
        self._store._release_partial(self.hash)

    def __enter__(self) -> PartialBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
