"""What the local API accepts and returns: the one vocabulary the server and the CLI share.

Light on purpose (pydantic and the layers' own light models only), so a CLI call imports no server,
transport or runtime code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from p2pnode.blobs.model import BlobInfo, FetchProgress, FileIdentity
from p2pnode.ids import NodeIdField
from p2pnode.jobs.model import Job, JobState, LogStream
from p2pnode.status import DiskStatus as DiskStatus  # re-exported: served and read here
from p2pnode.status import MemberStatus as MemberStatus
from p2pnode.status import NodeInfo as NodeInfo
from p2pnode.status import NodeStatus as NodeStatus


class Health(BaseModel):
    ok: bool
    id: NodeIdField
    version: str


class JoinTicketReply(BaseModel):
    ticket: str


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


class ErrorReply(BaseModel):
    """Every error answer: one line for a person."""

    detail: str


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


class JobView(Job):
    """A job as the API shows it: the stored record, plus why it still waits when the node can
    tell (no live worker offers its executor)."""

    waiting_for: str | None = None


class LogEvent(BaseModel):
    """One line of `GET /jobs/{id}/logs`: text a job wrote to one of its streams, or a note from
    the node (output dropped, a new attempt), or last of all the job's state when the stream
    ended."""

    stream: LogStream | None = None
    text: str = ""
    note: str | None = None
    state: JobState | None = None


class DrainStatus(BaseModel):
    """A node's drain switch and the jobs it still runs (a drained node is empty when none)."""

    draining: bool
    running: list[str]


class LoginCode(BaseModel):
    """A one-time dashboard login code (`/login#code=...`), good for `expires_in` seconds."""

    code: str
    expires_in: float


class BlobEntry(BlobInfo):
    """A blob as `GET /blobs` lists it: `jobs` are the jobs holding it by the tags listed (every
    job unless `tag_count` says there are more tags)."""

    jobs: list[str] = []
