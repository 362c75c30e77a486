"""What the blob layer reports: light models the API and the CLI share, importing nothing heavy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from p2pnode.ids import BlobHashField, NodeIdField


class BlobInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    hash: BlobHashField
    size: int
    root: BlobHashField
    pinned: bool = False
    tags: tuple[str, ...] = ()


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
