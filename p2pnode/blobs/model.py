"""What the blob layer reports: light models the API and the CLI share, importing nothing heavy."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BlobInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    hash: str
    size: int
    root: str
    pinned: bool = False
    tags: tuple[str, ...] = ()


class PartialProgress(BaseModel):
    model_config = ConfigDict(frozen=True)

    hash: str
    size: int
    blocks_total: int
    blocks_done: int
    bytes_done: int


class GcResult(BaseModel):
    removed: list[str] = []
    removed_partials: list[str] = []
    freed_bytes: int = 0


class FetchProgress(BaseModel):
    hash: str
    size: int
    bytes_done: int
    provider: str | None = None
