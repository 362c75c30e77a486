"""What the local API accepts and returns: the one vocabulary the server and the CLI share.

Light on purpose (pydantic and the layers' own light models only), so a CLI call imports no server,
transport or runtime code.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field
from pydantic_core import ErrorDetails

from p2pnode.api.blob_schemas import BlobAdded as BlobAdded  # re-exported: one vocabulary
from p2pnode.api.blob_schemas import BlobEntry as BlobEntry
from p2pnode.api.blob_schemas import BlobFetchRequest as BlobFetchRequest
from p2pnode.api.blob_schemas import Done as Done
from p2pnode.api.blob_schemas import ExportRequest as ExportRequest
from p2pnode.api.blob_schemas import FetchEvent as FetchEvent
from p2pnode.api.blob_schemas import PathRequest as PathRequest
from p2pnode.api.blob_schemas import Request as Request
from p2pnode.ids import NodeIdField
from p2pnode.jobs.model import Job, JobId, JobState, LogStream
from p2pnode.jobs.submission import MAX_BATCH_JOBS
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


class ErrorReply(BaseModel):
    """Every error answer: one line for a person."""

    detail: str


def invalid_request(errors: Sequence[ErrorDetails], within: tuple[str | int, ...] = ()) -> str:
    """A 422's detail: one line naming the first bad part, e.g. `invalid blob_hash: String should
    match ...`. A `loc` starts with the request's part (body, path, query), named only when it is
    the whole location; `within` is prepended, for a model checked before it is sent (the CLI)."""
    first = errors[0]
    loc = (*within, *first["loc"])
    where = ".".join(str(part) for part in loc[1:]) or str(loc[0])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return " ".join(f"invalid {where}: {first['msg']}{more}".split())


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


class JobsSubmitted(BaseModel):
    """`POST /jobs/batch`'s answer: the new jobs' ids, in the order they were given."""

    ids: list[JobId]


class JobsWait(BaseModel):
    """`POST /jobs/wait`: the jobs to wait for, and for how long at most (seconds)."""

    ids: list[JobId] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    timeout: float = Field(30.0, ge=0, le=600)
