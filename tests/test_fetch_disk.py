"""How a download meets the disk: whole blocks are written around the page cache (O_DIRECT),
since filling the cache cost more CPU than the rest of the fetcher's work; a filesystem that
refuses O_DIRECT still gets every block through the cache. Real files throughout."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from pathlib import Path

import pytest

from p2pnode.blobs.blocks import BLOCK_SIZE
from p2pnode.blobs.store import BlobStore
from tests.test_blob_store import block, digest_and_blocks

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_pages(path: Path, offset: int, length: int) -> int:
    """How many pages of the file's [offset, offset+length) the page cache holds (mincore)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = -(-length // mmap.PAGESIZE)
            residency = ctypes.create_string_buffer(pages)
            assert _libc.mincore(address, length, residency) == 0, ctypes.get_errno()
            return sum(byte & 1 for byte in residency.raw)
        finally:
            _libc.munmap(address, length)
    finally:
        os.close(fd)


async def test_whole_blocks_are_written_around_the_page_cache(
    store: BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * BLOCK_SIZE + 5)
    h, bl = digest_and_blocks(data)
    data_file = store.root / "partial" / f"{h}.data"
    with await store.partial(h, bl) as download:
        for index in (2, 0, 1, 3):
            await download.write_block(index, block(data, bl, index))
        assert cached_pages(data_file, 0, 3 * BLOCK_SIZE) == 0
        await download.commit()
    await store.export(h, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


async def test_filesystem_refusing_o_direct_gets_every_block_through_the_cache(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmpfs before Linux 6.6 (and some FUSE filesystems) refuse O_DIRECT opens with EINVAL;
    this machine's kernel has no such filesystem, so the refusal is made here."""
    real_open = os.open

    def refusing_open(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    data = os.urandom(2 * BLOCK_SIZE + 7)
    h, bl = digest_and_blocks(data)
    with await store.partial(h, bl) as download:
        for index in range(len(bl)):
            await download.write_block(index, block(data, bl, index))
        assert cached_pages(store.root / "partial" / f"{h}.data", 0, 2 * BLOCK_SIZE) > 0
        await download.commit()
    monkeypatch.undo()
    await store.export(h, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data
