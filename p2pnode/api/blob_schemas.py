"""The blob part of the API's vocabulary, apart so that a blob command loads no jobs models.

Every `p2pnode blob ...` is a fresh process that pays for what it imports; `api/schemas.py`
re-exports these for the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from p2pnode.blobs.model import BlobInfo, FetchProgress, FileIdentity


class Request(BaseModel):
    """A request body: a misspelled or unknown field is refused, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError("must be an absolute path (the node's working folder is not the caller's)")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class PathRequest(Request):
    path: AbsolutePath
    pin: bool = True
    in_place: bool = False  # no copy: the node serves from the file, verifying what it reads
    # The file the caller has open: the node adds the path only if it opens that same file, else
    # answers 412 (it runs elsewhere, or the file was replaced) and the caller uploads instead.
    expect: FileIdentity | None = None


class ExportRequest(Request):
    path: AbsolutePath
    force: bool = False


class BlobAdded(BaseModel):
    blob: BlobInfo
    ticket: str


class BlobFetchRequest(Request):
    ticket: str


class FetchEvent(BaseModel):
    """One line of a fetch's NDJSON stream: progress, then a final `blob` or `error`."""

    progress: FetchProgress | None = None
    blob: BlobInfo | None = None
    error: str | None = None


class Done(BaseModel):
    ok: bool = True


class BlobEntry(BlobInfo):
    """A blob as `GET /blobs` lists it: `jobs` are the jobs holding it by the tags listed (every
    job unless `tag_count` says there are more tags)."""

    jobs: list[str] = []
