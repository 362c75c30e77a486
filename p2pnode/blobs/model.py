"""What the blob layer reports: light models the API and the CLI share, importing nothing heavy."""

from __future__ import annotations

import os
from typing import Self

from pydantic import BaseModel, ConfigDict

from p2pnode.ids import BlobHashField, NodeIdField


class BlobInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    hash: BlobHashField
    size: int
    root: BlobHashField
    pinned: bool = False
    tags: tuple[str, ...] = ()
    """Its first tags by name (`refs.TAGS_LISTED`): a blob can have thousands."""
    tag_count: int = 0
    """All its tags."""


class PartialProgress(BaseModel):
    model_config = ConfigDict(frozen=True)

    hash: BlobHashField
    size: int
    blocks_total: int
    blocks_done: int
    bytes_done: int


class GcResult(BaseModel):
    removed: list[BlobHashField] = []
    removed_partials: list[BlobHashField] = []
    freed_bytes: int = 0


class FetchProgress(BaseModel):
    hash: BlobHashField
    size: int
    bytes_done: int
    provider: NodeIdField | None = None


class FileIdentity(BaseModel):
    """Which file, exactly: the same path can name another file for another process (another
    mount namespace or container, or a file replaced meanwhile), and size and mtime say whether
    its content moved since."""

    model_config = ConfigDict(frozen=True)

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Self:
        return cls(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns) == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        )
