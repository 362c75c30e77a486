"""The on-disk blob store: content addressing, crash safety, partial downloads, GC."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import blake3
import pytest
import trio

from p2pnode.blobs import store as store_mod
from p2pnode.blobs.blocks import BLOCK_SIZE, READ_CHUNK, BlobHasher, BlockList
from p2pnode.blobs.store import BlobCorrupt, BlobInUse, BlobNotFound, BlobStore, StoreError
from p2pnode.ids import parse_blob_hash

SIZES = [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 12345]


def digest_and_blocks(data: bytes) -> tuple[str, BlockList]:
    hasher = BlobHasher()
    hasher.update(data)
    digest, bl = hasher.finish()
    return digest.hex(), bl


def block(data: bytes, bl: BlockList, index: int) -> bytes:
    offset, length = bl.block_range(index)
    return data[offset : offset + length]


async def reopen(s: BlobStore) -> BlobStore:
    s.close()
    return await BlobStore.open(s.root)


# -- add / read / export ---------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("via", ["bytes", "path"])
async def test_round_trip(store: BlobStore, tmp_path: Path, size: int, via: str) -> None:
    data = os.urandom(size)
    if via == "path":
        src = tmp_path / "src"
        src.write_bytes(data)
        info = await store.add_path(src)
    else:
        info = await store.add_bytes(data)
    expected_hash, bl = digest_and_blocks(data)
    assert info.hash == blake3.blake3(data).hexdigest() == expected_hash
    assert (info.size, info.root, info.pinned, info.tags) == (size, bl.root_hex, False, ())
    assert store.has(info.hash) and await store.info(info.hash) == info
    assert await store.block_list(info.hash) == bl
    assert [b.hash for b in await store.list()] == [info.hash]

    with store.open_read(info.hash) as f:
        assert f.read() == data
    assert b"".join([c async for c in store.read_range(info.hash, chunk_size=300_000)]) == data
    if size > 10:
        got = b"".join(
            [c async for c in store.read_range(info.hash, 3, size - 7, chunk_size=BLOCK_SIZE // 3)]
        )
        assert got == data[3:-4]

    dest = tmp_path / "out" / "exported"
    dest.parent.mkdir()
    assert await store.export(info.hash, dest) == info
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["exported"]
    assert os.listdir(store.root / "tmp") == []


async def test_file_adds_over_several_chunks(store: BlobStore, tmp_path: Path) -> None:
    """Copied in the kernel and hashed back chunk by chunk (or, in place, read in turns): every
    chunk boundary and an unaligned start and end give the content's hash and blocks."""
    data = os.urandom(2 * READ_CHUNK + 12345)
    src = tmp_path / "src"
    src.write_bytes(data)
    copied = await store.add_path(src)
    with open(src, "rb") as f:
        f.seek(1000)
        tail = await store.add_file(f)
    for info, content in ((copied, data), (tail, data[1000:])):
        expected_hash, bl = digest_and_blocks(content)
        assert (info.hash, info.size, info.root) == (expected_hash, len(content), bl.root_hex)
        with store.open_read(info.hash) as stored:
            assert stored.read() == content
    await store.remove(copied.hash)
    in_place = await store.add_in_place(src)
    assert (in_place.hash, in_place.root) == (copied.hash, copied.root)
    # A regular file the kernel cannot copy by itself is copied through Python.
    status = await store.add_path("/proc/self/status")
    with store.open_read(status.hash) as stored:
        assert b"Name:" in (content := stored.read())
    assert blake3.blake3(content).hexdigest() == status.hash
    assert os.listdir(store.root / "tmp") == []


async def test_path_add_steps_work_at_their_own_pace(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy and the two hashes of a path add work on different chunks at once, with no
    barrier per chunk: here the block hashes of the first chunk wait until the whole-content
    hash has done all three chunks (the copy ran ahead of both)."""
    data = os.urandom(3 * READ_CHUNK)
    src = tmp_path / "src"
    src.write_bytes(data)
    whole_done = threading.Semaphore(0)
    ran_ahead: list[bool] = []
    real_whole, real_blocks = BlobHasher.update_whole, BlobHasher.update_blocks

    def whole(self: BlobHasher, view: memoryview) -> None:
        real_whole(self, view)
        whole_done.release()

    def blocks(self: BlobHasher, view: memoryview) -> None:
        if not ran_ahead:
            ran_ahead.append(all(whole_done.acquire(timeout=10) for _ in range(3)))
        real_blocks(self, view)

    monkeypatch.setattr(BlobHasher, "update_whole", whole)
    monkeypatch.setattr(BlobHasher, "update_blocks", blocks)
    info = await store.add_path(src)
    assert ran_ahead == [True]
    assert (info.hash, await store.block_list(info.hash)) == digest_and_blocks(data)


async def test_file_adds_where_sendfile_writes_only_to_sockets(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS and the BSDs: sendfile's output must be a socket; the copy goes through Python."""

    def sockets_only(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK))

    monkeypatch.setattr(store_mod.os, "sendfile", sockets_only)
    data = os.urandom(READ_CHUNK + 12345)
    src = tmp_path / "src"
    src.write_bytes(data)
    info = await store.add_path(src)
    assert info.hash == blake3.blake3(data).hexdigest()
    with store.open_read(info.hash) as stored:
        assert stored.read() == data


async def test_add_is_idempotent(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK_SIZE + 3)
    src = tmp_path / "src"
    src.write_bytes(data)
    first = await store.add_bytes(data)
    async with trio.open_nursery() as nursery:  # concurrent adds of the same content
        for _ in range(3):
            nursery.start_soon(store.add_path, src)
    assert await store.add_path(src) == first
    assert os.listdir(store.root / "data") == [first.hash]
    assert os.listdir(store.root / "blocks") == [first.hash]
    assert os.listdir(store.root / "tmp") == []


async def test_add_with_tag_and_pin(store: BlobStore) -> None:
    info = await store.add_bytes(b"tagged", tag="release", pin=True)
    assert info.pinned and info.tags == ("release",)
    assert await store.tags() == {"release": info.hash}
    assert (await store.gc()).removed == []


async def test_read_range_bounds_and_early_exit(store: BlobStore) -> None:
    info = await store.add_bytes(os.urandom(5000))
    with pytest.raises(ValueError):
        [c async for c in store.read_range(info.hash, 4000, 1001)]
    with pytest.raises(ValueError):
        [c async for c in store.read_range(info.hash, -1, 10)]
    async with aclosing(store.read_range(info.hash, chunk_size=1000)) as chunks:
        async for _ in chunks:
            assert store.is_in_use(info.hash)
            break
    assert not store.is_in_use(info.hash)


async def test_missing_and_invalid_hashes(store: BlobStore, tmp_path: Path) -> None:
    missing = blake3.blake3(b"nope").hexdigest()
    with pytest.raises(BlobNotFound, match="not in the store"):
        await store.info(missing)
    with pytest.raises(BlobNotFound):
        await store.export(missing, tmp_path / "x")
    with pytest.raises(BlobNotFound), store.open_read(missing):
        pass
    with pytest.raises(BlobNotFound):
        await store.remove(missing)
    assert not store.has(missing)
    # Names become paths: a hash is checked where it enters (here as a person types it); the
    # store takes the checked type.
    for bad in ("../../etc/passwd", "ab" * 31, "zz" * 32):
        with pytest.raises(ValueError, match="not a blob hash"):
            parse_blob_hash(bad)
    assert store.has(parse_blob_hash(f" {missing.upper()} ")) is False


async def test_store_is_single_process(store: BlobStore) -> None:
    with pytest.raises(StoreError, match="already open"):
        BlobStore(store.root)


# -- errors ----------------------------------------------------------------------------------


async def test_disk_full_during_add_leaves_nothing(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "write_all", full)
    with pytest.raises(StoreError, match="disk full while writing blob"):
        await store.add_bytes(os.urandom(3 * BLOCK_SIZE))
    assert os.listdir(store.root / "tmp") == []
    assert await store.list() == []


async def test_file_that_grows_during_add(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file still being written (a log, a download): its first chunk ends where the file then
    ended, off any page boundary, and the next one starts there; the blob is what was copied."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5000))
    real_start_writeback = store_mod.start_writeback

    def append_after_first_chunk(fd: int, offset: int, length: int) -> None:
        real_start_writeback(fd, offset, length)
        if offset == 0:
            with open(src, "ab") as f:
                f.write(os.urandom(3000))

    monkeypatch.setattr(store_mod, "start_writeback", append_after_first_chunk)
    info = await store.add_path(src)
    data = src.read_bytes()
    assert (info.hash, info.size) == (blake3.blake3(data).hexdigest(), 8000)
    with store.open_read(info.hash) as stored:
        assert stored.read() == data


async def test_disk_full_during_path_add_leaves_nothing(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * BLOCK_SIZE))

    def full(fd: int, offset: int, length: int) -> None:  # as sync_file_range reports it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "start_writeback", full)
    with pytest.raises(StoreError, match="disk full while writing blob"):
        await store.add_path(src)
    assert os.listdir(store.root / "tmp") == []
    assert await store.list() == []


async def test_path_add_where_the_filesystem_maps_no_file(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some FUSE and 9p mounts refuse to map a file: the copy is read back and hashed instead."""
    data = os.urandom(2 * READ_CHUNK + 12345)
    src = tmp_path / "src"
    src.write_bytes(data)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(store_mod.mmap, "mmap", refuse)
    info = await store.add_path(src)
    assert info.hash == blake3.blake3(data).hexdigest()
    await store.export(info.hash, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


async def test_disk_full_during_a_streamed_add_says_so(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks come faster than they are written, so the reader may be waiting in its send when
    the writer fails: the writer's error is what the caller gets, not the reader's broken
    channel."""

    data = os.urandom(READ_CHUNK)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield data

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod, "start_writeback", full)
    with pytest.raises(StoreError, match="disk full while writing blob"):
        await store.add_stream(chunks())
    assert os.listdir(store.root / "tmp") == []


async def test_permission_denied_during_export_leaves_nothing(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = await store.add_bytes(os.urandom(1000))
    out = tmp_path / "out"
    out.mkdir()

    def denied(fd: int, data: memoryview) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(store_mod, "write_all", denied)
    with pytest.raises(StoreError, match="permission denied"):
        await store.export(info.hash, out / "file")
    assert os.listdir(out) == []


async def test_cancelled_add_leaves_nothing(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "big"
    src.write_bytes(os.urandom(20 * BLOCK_SIZE))
    real_start_writeback = store_mod.start_writeback
    writes = 0

    def write_then_cancel(fd: int, offset: int, length: int) -> None:  # after each chunk
        nonlocal writes
        writes += 1
        real_start_writeback(fd, offset, length)
        trio.from_thread.run_sync(scope.cancel)

    monkeypatch.setattr(store_mod, "start_writeback", write_then_cancel)
    with trio.CancelScope() as scope:
        await store.add_path(src)
    assert scope.cancelled_caught and writes == 1
    assert os.listdir(store.root / "tmp") == []
    assert await store.list() == []


async def test_unreadable_source_is_a_store_error(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="reading .*missing"):
        await store.add_path(tmp_path / "missing")
    with pytest.raises(StoreError, match="reading"):
        await store.add_path(tmp_path)
    assert os.listdir(store.root / "tmp") == []


# -- crash recovery --------------------------------------------------------------------------


async def test_tmp_leftovers_and_orphans_cleaned_at_open(store: BlobStore) -> None:
    info = await store.add_bytes(b"keep me")
    store.close()
    (store.root / "tmp" / "half-written").write_bytes(b"x" * 1000)
    orphan = blake3.blake3(b"gone").hexdigest()
    (store.root / "blocks" / orphan).write_bytes(b"junk")
    (store.root / "data" / "not-a-hash").write_bytes(b"junk")
    (store.root / "partial" / f"{orphan}.data").write_bytes(b"no state file")
    s = await BlobStore.open(store.root)
    try:
        assert os.listdir(s.root / "tmp") == []
        assert os.listdir(s.root / "blocks") == [info.hash]
        assert os.listdir(s.root / "data") == [info.hash]
        assert os.listdir(s.root / "partial") == []
        assert [b.hash for b in await s.list()] == [info.hash]
    finally:
        s.close()


async def test_data_files_are_reverified_at_open(store: BlobStore) -> None:
    good = await store.add_bytes(os.urandom(BLOCK_SIZE + 7))
    truncated = await store.add_bytes(os.urandom(BLOCK_SIZE + 7))
    store.close()
    content = os.urandom(3000)
    lying_name = blake3.blake3(b"something else").hexdigest()
    (store.root / "data" / lying_name).write_bytes(content)  # content does not match its name
    honest_name = blake3.blake3(content).hexdigest()
    (store.root / "data" / honest_name).write_bytes(content)  # right content, no blocks file
    os.truncate(store.root / "data" / truncated.hash, 100)  # size no longer fits its block list
    s = await BlobStore.open(store.root)
    try:
        assert sorted(b.hash for b in await s.list()) == sorted([good.hash, honest_name])
        assert not (s.root / "data" / lying_name).exists()
        assert (await s.info(honest_name)).root == digest_and_blocks(content)[1].root_hex
        assert not s.has(truncated.hash)
    finally:
        s.close()


async def test_damaged_content_is_caught_by_verify_and_export(
    store: BlobStore, tmp_path: Path
) -> None:
    a = await store.add_bytes(os.urandom(BLOCK_SIZE * 2))
    b = await store.add_bytes(os.urandom(BLOCK_SIZE * 2))
    assert await store.verify(a.hash)
    for h in (a.hash, b.hash):
        with open(store.root / "data" / h, "r+b") as f:  # same size: bit rot, not truncation
            f.seek(BLOCK_SIZE + 5)
            byte = f.read(1)
            f.seek(BLOCK_SIZE + 5)
            f.write(bytes([byte[0] ^ 0xFF]))
    assert not await store.verify(a.hash)
    assert not store.has(a.hash)
    with pytest.raises(BlobCorrupt, match="damaged"):
        await store.export(b.hash, tmp_path / "out")
    assert not store.has(b.hash)
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["store"]


# -- partial downloads -----------------------------------------------------------------------


async def test_partial_out_of_order_then_commit(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(4 * BLOCK_SIZE + 99)
    h, bl = digest_and_blocks(data)
    with await store.partial(h, bl) as p:
        assert p.missing_blocks() == [0, 1, 2, 3, 4]
        async with trio.open_nursery() as nursery:
            for i in (3, 0, 4):
                nursery.start_soon(p.write_block, i, block(data, bl, i))
        await p.write_block(1, block(data, bl, 1))
        assert p.missing_blocks() == [2]
        assert (await store.partial_progress(h)).blocks_done == 4
        with pytest.raises(StoreError, match="1 of 5 blocks missing"):
            await p.commit()
        await p.write_block(2, block(data, bl, 2))
        info = await p.commit(tag="dl")
    assert info.hash == h and info.tags == ("dl",)
    assert os.listdir(store.root / "partial") == []
    assert await store.partial_progress(h) is None
    await store.export(h, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
    with pytest.raises(StoreError, match="already stored"):
        await store.partial(h, bl)


async def test_empty_blob_partial(store: BlobStore) -> None:
    h, bl = digest_and_blocks(b"")
    p = await store.partial(h, bl)
    assert p.missing_blocks() == []
    assert (await p.commit()).size == 0


async def test_wrong_block_rejected_and_nothing_written(store: BlobStore) -> None:
    data = os.urandom(3 * BLOCK_SIZE)
    h, bl = digest_and_blocks(data)
    p = await store.partial(h, bl)
    await p.write_block(0, block(data, bl, 0))
    state_before = (store.root / "partial" / f"{h}.state").read_bytes()
    bad = bytearray(block(data, bl, 1))
    bad[12345] ^= 1
    with pytest.raises(BlobCorrupt, match="block 1 .* failed verification"):
        await p.write_block(1, bytes(bad))
    with pytest.raises(BlobCorrupt):
        await p.write_block(1, block(data, bl, 1)[:-1])
    with pytest.raises(BlobCorrupt):
        await p.write_block(7, block(data, bl, 1))
    assert p.missing_blocks() == [1, 2]
    raw = (store.root / "partial" / f"{h}.data").read_bytes()
    assert raw[BLOCK_SIZE : 2 * BLOCK_SIZE] == bytes(BLOCK_SIZE)
    assert (store.root / "partial" / f"{h}.state").read_bytes() == state_before
    p.close()
    with pytest.raises(StoreError, match="closed"):
        await p.write_block(1, block(data, bl, 1))


async def test_one_open_download_per_blob(store: BlobStore) -> None:
    data = os.urandom(10)
    h, bl = digest_and_blocks(data)
    with await store.partial(h, bl), pytest.raises(BlobInUse, match="already open"):
        await store.partial(h, bl)
    with await store.partial(h) as p:  # resumable once the first one is closed
        assert p.missing_blocks() == [0]


async def test_resume_after_crash_keeps_verified_blocks(store: BlobStore) -> None:
    data = os.urandom(4 * BLOCK_SIZE + 1)
    h, bl = digest_and_blocks(data)
    p = await store.partial(h, bl)
    for i in (0, 2, 4):
        await p.write_block(i, block(data, bl, i))
    del p  # "crash": never closed, never committed
    with open(store.root / "partial" / f"{h}.state", "ab") as f:
        f.write(b"\x00\x00\x01")  # a torn record at the end of the log
    s = await reopen(store)
    try:
        progress = await s.partial_progress(h)
        assert progress is not None and (progress.blocks_done, progress.bytes_done) == (
            3,
            2 * BLOCK_SIZE + 1,
        )
        p = await s.partial(h)  # the state file alone is enough to resume
        assert p.block_list == bl
        assert p.missing_blocks() == [1, 3]
        for i in p.missing_blocks():
            await p.write_block(i, block(data, bl, i))
        info = await p.commit()
        with s.open_read(info.hash) as f:
            assert f.read() == data
    finally:
        s.close()


async def test_damaged_recorded_block_is_missing_again(store: BlobStore) -> None:
    data = os.urandom(3 * BLOCK_SIZE)
    h, bl = digest_and_blocks(data)
    with await store.partial(h, bl) as p:
        for i in range(3):
            await p.write_block(i, block(data, bl, i))
    with open(store.root / "partial" / f"{h}.data", "r+b") as f:  # a torn or rotten write
        f.seek(BLOCK_SIZE + 77)
        f.write(b"\xaa\xbb")
    s = await reopen(store)
    try:
        p = await s.partial(h, bl)
        assert p.missing_blocks() == [1]
        await p.write_block(1, block(data, bl, 1))
        assert (await p.commit()).hash == h
    finally:
        s.close()


async def test_different_block_list_restarts_download(store: BlobStore) -> None:
    data = os.urandom(2 * BLOCK_SIZE)
    h, bl = digest_and_blocks(data)
    with await store.partial(h, bl) as p:
        await p.write_block(0, block(data, bl, 0))
    other = digest_and_blocks(os.urandom(2 * BLOCK_SIZE))[1]
    with await store.partial(h, other) as p:
        assert p.block_list == other and p.missing_blocks() == [0, 1]


async def test_commit_rejects_content_not_matching_hash(store: BlobStore) -> None:
    """Blocks match a (lying) block list, but the whole content is not the named blob."""
    data = os.urandom(BLOCK_SIZE + 10)
    _, bl = digest_and_blocks(data)
    claimed = blake3.blake3(b"what the ticket promised").hexdigest()
    p = await store.partial(claimed, bl)
    for i in range(len(bl)):
        await p.write_block(i, block(data, bl, i))
    with pytest.raises(BlobCorrupt, match="does not hash to"):
        await p.commit()
    assert not store.has(claimed)
    assert os.listdir(store.root / "partial") == []
    with pytest.raises(BlobNotFound, match="no resumable download"):
        await store.partial(claimed)


# -- removal and GC --------------------------------------------------------------------------


async def test_gc_keeps_what_is_referenced(store: BlobStore) -> None:
    infos = [await store.add_bytes(os.urandom(100) + bytes([i])) for i in range(6)]
    pinned, tagged, in_use, protected, reading, garbage = (i.hash for i in infos)
    await store.pin(pinned)
    await store.set_tag("t", tagged)
    abandoned = digest_and_blocks(os.urandom(50))
    (await store.partial(*abandoned)).close()
    live = digest_and_blocks(os.urandom(60))
    live_partial = await store.partial(*live)

    with store.in_use(in_use), store.open_read(reading):
        result = await store.gc(protected={protected})
    assert result.removed == [garbage]
    assert result.removed_partials == [abandoned[0]]
    assert result.freed_bytes >= 101
    assert sorted(b.hash for b in await store.list()) == sorted(
        [pinned, tagged, in_use, protected, reading]
    )
    assert (await store.partial_progress(live[0])) is not None
    live_partial.close()

    assert await store.unpin(pinned)
    assert await store.delete_tag("t")
    assert not await store.delete_tag("t")
    result = await store.gc()
    assert sorted(result.removed) == sorted([pinned, tagged, in_use, protected, reading])
    assert result.removed_partials == [live[0]]
    assert await store.list() == []


async def test_remove_refuses_while_in_use_or_kept(store: BlobStore) -> None:
    a = await store.add_bytes(b"a")
    with store.open_read(a.hash), pytest.raises(BlobInUse, match="in use"):
        await store.remove(a.hash)
    await store.pin(a.hash)
    await store.set_tag("x", a.hash)
    with pytest.raises(BlobInUse, match="pinned, tag 'x'"):
        await store.remove(a.hash)
    assert store.has(a.hash)
    with store.open_read(a.hash) as f:
        await store.remove(a.hash, force=True)
        assert f.read() == b"a"  # an open reader keeps its bytes
    assert not store.has(a.hash)
    assert await store.tags() == {}
    assert not await store.unpin(a.hash)
    b = await store.add_bytes(b"b")
    await store.remove(b.hash)
    assert await store.list() == []


async def test_pin_wants_a_stored_blob(store: BlobStore) -> None:
    """A mistyped or unfetched hash is an error, not a pin that keeps nothing."""
    with pytest.raises(BlobNotFound, match="not in the store"):
        await store.pin("ab" * 32)
    assert not await store.unpin("ab" * 32)


# -- a real kill -9 --------------------------------------------------------------------------

CHILD = """
import sys, trio
from pathlib import Path
from p2pnode.blobs.blocks import BlockList
from p2pnode.blobs.store import BlobStore

async def main(root, fifo, a_path, b_path, b_hash):
    store = await BlobStore.open(root)
    print("added", (await store.add_path(a_path)).hash, flush=True)
    data = Path(b_path).read_bytes()
    bl = BlockList.from_file(b_path)
    p = await store.partial(b_hash, bl)
    for i in (0, 2):
        offset, length = bl.block_range(i)
        await p.write_block(i, data[offset:offset + length])
        print("wrote", i, flush=True)
    print("adding fifo", flush=True)
    await store.add_path(fifo)
    print("finished", flush=True)

trio.run(main, *sys.argv[1:])
"""


async def test_sigkill_mid_add_and_mid_download(tmp_path: Path) -> None:
    root, fifo = tmp_path / "store", tmp_path / "fifo"
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(3 * BLOCK_SIZE + 1))
    b_data = os.urandom(4 * BLOCK_SIZE + 5)
    b.write_bytes(b_data)
    b_hash, b_bl = digest_and_blocks(b_data)
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(fifo), str(a), str(b), b_hash],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while (line := await trio.to_thread.run_sync(proc.stdout.readline)) != "adding fifo\n":
            assert line, f"child died: {proc.wait()} {proc.stderr.read()}"
            lines.append(line.split())
        assert lines[0] == ["added", blake3.blake3(a.read_bytes()).hexdigest()]

        writer = await trio.to_thread.run_sync(open, fifo, "wb")  # waits for the child to open it
        try:
            # Returns once the child has read nearly all of it: the add is mid-stream.
            await trio.to_thread.run_sync(writer.write, os.urandom(3 * BLOCK_SIZE))
            assert len(os.listdir(root / "tmp")) == 1
            proc.send_signal(signal.SIGKILL)
            assert await trio.to_thread.run_sync(proc.wait) == -signal.SIGKILL
        finally:
            writer.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    store = await BlobStore.open(root)
    try:
        assert os.listdir(root / "tmp") == []
        listed = await store.list()
        assert [i.hash for i in listed] == [lines[0][1]]
        assert all([await store.verify(i.hash) for i in listed])
        p = await store.partial(b_hash)
        assert p.missing_blocks() == [1, 3, 4]
        for i in p.missing_blocks():
            await p.write_block(i, block(b_data, b_bl, i))
        assert (await p.commit()).hash == b_hash
    finally:
        store.close()
