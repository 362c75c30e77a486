"""What the local API accepts and returns: the one vocabulary the server and the CLI share.

Light on purpose (pydantic and the layers' own light models only), so a CLI call imports no server,
transport or runtime code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from p2pnode.blobs.model import BlobInfo, FetchProgress
from p2pnode.gossip.stats import GossipStats
from p2pnode.jobs.model import Job, JobState, LogStream, WorkerStatus


class Health(BaseModel):
    ok: bool
    id: str
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


class NodeInfo(BaseModel):
    """What `p2pnode start` writes to node.json, so scripts can find the node: public facts only
    (the join ticket carries the cluster secret; `p2pnode ticket` asks the node for one)."""

    id: str
    api_url: str
    pid: int


"""A node id as the API and CLI take it: the 64 hex digits of its public key."""


class MemberStatus(BaseModel):
    """`connected`: a live connection now; `idle`: none needed lately; `down`: unreachable,
    redialled with back-off."""

    id: str
    addresses: list[str]
    relay_url: str | None
    connected: bool
    last_seen: float
    state: Literal["connected", "idle", "down"]


class DiskStatus(BaseModel):
    """The blob store's content and the room left on the filesystem that holds it."""

    store_bytes: int
    store_blobs: int
    free_bytes: int
    total_bytes: int


class NodeStatus(BaseModel):
    id: str
    cluster_id: str
    addresses: list[str]
    relay_url: str | None
    api_url: str
    uptime_s: float
    members: list[MemberStatus]
    refused_connections: int
    gossip: GossipStats | None
    jobs: WorkerStatus
    disk: DiskStatus | None = None  # filled by `GET /status` (reading the store takes a while)


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
    """A one-time dashboard login code (`GET /login?code=...`), good for `expires_in` seconds."""

    code: str
    expires_in: float


class BlobEntry(BlobInfo):
    """A blob as `GET /blobs` lists it: `jobs` are the jobs holding it (by their tags)."""

    jobs: list[str] = []
