"""What a node says about itself: node.json, `GET /status` and `GET /members`.

Below the node, which fills these in, so it needs nothing from the API; `api/schemas.py`
re-exports them as part of the vocabulary the server and the CLI share.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from p2pnode.gossip.stats import GossipStats
from p2pnode.ids import NodeIdField
from p2pnode.jobs.model import WorkerStatus


class NodeInfo(BaseModel):
    """What `p2pnode start` writes to node.json, so scripts can find the node: public facts only
    (the join ticket carries the cluster secret; `p2pnode ticket` asks the node for one)."""

    id: NodeIdField
    api_url: str
    pid: int


class MemberStatus(BaseModel):
    """`connected`: a live connection now; `idle`: none needed lately; `down`: unreachable,
    redialled with back-off."""

    id: NodeIdField
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
    id: NodeIdField
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
