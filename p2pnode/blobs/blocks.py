"""Verification scheme for blob transfer: per-block BLAKE3 hashes bound by one root.

The `blake3` package exposes no chaining values, so iroh-blobs' bao streaming cannot be
reproduced; instead a blob is cut into fixed 1 MiB blocks, each hashed on its own, and the
list of block hashes is bound to the blob by ``root``. The root travels in tickets and signed
announcements. A fetcher checks an untrusted ``BlockList`` against the expected root and size,
then verifies every block as it arrives, so at most one block is ever unverified.

An empty blob has zero blocks: ``ceil(0 / BLOCK_SIZE) == 0`` and nothing needs transferring.
"""

from __future__ import annotations

import mmap
import struct
from functools import cached_property
from pathlib import Path
from typing import Self, TypeAlias

import blake3
from pydantic import BaseModel, ConfigDict, Field, model_validator

from p2pnode.ids import BlobHash

BLOCK_SIZE = 1 << 20
HASH_LEN = 32
ROOT_DOMAIN = b"p2pnode-blocks-v1"
# Big reads amortise syscalls; a multiple of BLOCK_SIZE keeps block hashing copy-free.
READ_CHUNK = 8 * BLOCK_SIZE

_SIZE = struct.Struct(">Q")

Buffer: TypeAlias = bytes | bytearray | memoryview


def block_count(size: int) -> int:
    """Number of blocks of a blob of ``size`` bytes (zero for the empty blob)."""
    return -(-size // BLOCK_SIZE)


class BlockList(BaseModel):
    """The block hashes of one blob; ``root`` commits to them and to the size."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    size: int = Field(ge=0, lt=1 << 64)
    hashes: tuple[bytes, ...]

    @model_validator(mode="after")
    def _check_shape(self) -> Self:
        if len(self.hashes) != block_count(self.size):
            raise ValueError(
                f"a blob of {self.size} bytes has {block_count(self.size)} blocks, "
                f"got {len(self.hashes)} hashes"
            )
        if any(len(h) != HASH_LEN for h in self.hashes):
            raise ValueError(f"block hashes must be {HASH_LEN} bytes")
        return self

    @cached_property
    def root(self) -> bytes:
        """BLAKE3 over domain tag, big-endian u64 size and the concatenated block hashes."""
        return blake3.blake3(ROOT_DOMAIN + _SIZE.pack(self.size) + b"".join(self.hashes)).digest()

    @property
    def root_hex(self) -> BlobHash:
        return BlobHash(self.root.hex())

    def __len__(self) -> int:
        return len(self.hashes)

    def to_bytes(self) -> bytes:
        """Compact wire/disk form: u64 size, then the block hashes (their count follows from it)."""
        return _SIZE.pack(self.size) + b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockList:
        """Parse ``to_bytes`` output; raises ValueError on any malformed input."""
        if len(data) < _SIZE.size:
            raise ValueError("block list too short")
        (size,) = _SIZE.unpack_from(data)
        expected = _SIZE.size + HASH_LEN * block_count(size)
        if len(data) != expected:
            raise ValueError(
                f"block list for {size} bytes must be {expected} bytes, got {len(data)}"
            )
        hashes = tuple(data[i : i + HASH_LEN] for i in range(_SIZE.size, expected, HASH_LEN))
        return cls(size=size, hashes=hashes)

    def block_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of block ``index``; only the last block may be short."""
        if not 0 <= index < len(self.hashes):
            raise IndexError(f"block {index} out of range 0..{len(self.hashes) - 1}")
        offset = index * BLOCK_SIZE
        return offset, min(BLOCK_SIZE, self.size - offset)

    def verify_block(self, index: int, data: Buffer) -> bool:
        """True iff ``data`` is exactly block ``index``: right length and right hash."""
        if not 0 <= index < len(self.hashes):
            return False
        view = memoryview(data)
        if view.nbytes != self.block_range(index)[1]:
            return False
        return blake3.blake3(view).digest() == self.hashes[index]

    @classmethod
    def from_file(cls, path: str | Path) -> BlockList:
        """Hash a file on disk (blocking: call it from a worker thread)."""
        return hash_file(path)[1]


class BlobHasher:
    """One pass over the content yields both the whole-blob hash and the block list.

    Feeding arbitrary chunk sizes works; chunks aligned to BLOCK_SIZE avoid any buffering.
    """

    def __init__(self) -> None:
        self._whole = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._block = blake3.blake3()
        self._block_fill = 0
        self._hashes: list[bytes] = []
        self.size = 0

    def update(self, data: Buffer) -> None:
        self.update_whole(data)
        self.update_blocks(data)

    def update_whole(self, data: Buffer) -> None:
        """The whole-blob half of `update`; may run in one thread while `update_blocks` runs in
        another (blake3 releases the GIL), but each half's calls must come in content order."""
        view = memoryview(data).cast("B")
        self._whole.update(view)
        self.size += view.nbytes

    def update_blocks(self, data: Buffer) -> None:
        """The block-hash half of `update`."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            take = min(BLOCK_SIZE - self._block_fill, view.nbytes)
            if take == BLOCK_SIZE:
                self._hashes.append(blake3.blake3(view[:take]).digest())
            else:
                self._block.update(view[:take])
                self._block_fill += take
                if self._block_fill == BLOCK_SIZE:
                    self._flush_block()
            view = view[take:]

    def _flush_block(self) -> None:
        self._hashes.append(self._block.digest())
        self._block = blake3.blake3()
        self._block_fill = 0

    def finish(self) -> tuple[bytes, BlockList]:
        """(whole-content BLAKE3 digest, BlockList); the hasher must not be reused."""
        if self._block_fill:
            self._flush_block()
        return self._whole.digest(), BlockList(size=self.size, hashes=tuple(self._hashes))


def hash_file(path: str | Path) -> tuple[bytes, BlockList]:
    """Whole-content digest and block list of a file, in constant memory (blocking).

    Read into a page-aligned buffer (an anonymous mapping), as `store._reads` does and for the
    same reason.
    """
    hasher = BlobHasher()
    with (
        open(path, "rb", buffering=0) as f,
        mmap.mmap(-1, READ_CHUNK) as buf,
        memoryview(buf) as view,
    ):
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.finish()
