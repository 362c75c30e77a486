"""What the local API accepts and returns: the one vocabulary the server and the CLI share.

Light on purpose (pydantic and the layers' own light models only), so a CLI call imports no server,
transport or runtime code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, StringConstraints

from p2pnode.blobs.model import BlobInfo, FetchProgress
from p2pnode.gossip.stats import GossipStats
from p2pnode.jobs.model import WorkerStatus


class Health(BaseModel):
    ok: bool
    id: str
    version: str


class JoinTicketReply(BaseModel):
    ticket: str


class PathRequest(BaseModel):
    path: Path


class BlobAdded(BaseModel):
    blob: BlobInfo
    ticket: str


class BlobFetchRequest(BaseModel):
    ticket: str


class FetchEvent(BaseModel):
    """One line of a fetch's NDJSON stream: progress, then a final `blob` or `error`."""

    progress: FetchProgress | None = None
    blob: BlobInfo | None = None
    error: str | None = None


class Done(BaseModel):
    ok: bool = True


class NodeInfo(BaseModel):
    """What `p2pnode start` prints and writes to node.json, so scripts and the CLI can find the node."""

    id: str
    ticket: str
    api_url: str
    pid: int


NodeId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A node id as the API and CLI take it: the 64 hex digits of its public key."""


class MemberStatus(BaseModel):
    """`connected`: a live connection now; `idle`: none needed lately; `down`: unreachable, redialled with back-off."""

    id: str
    addresses: list[str]
    relay_url: str | None
    connected: bool
    last_seen: float
    state: Literal["connected", "idle", "down"]


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
