"""The heartbeat every node gossips, and the worker view built from it.

Light on purpose (pydantic and `jobs.model` only): the API serves `WorkerView` and the CLI reads it.
A heartbeat is small and bounded whatever the node runs, so it always fits an envelope. Nodes
of several versions read each other's (see `model._Message` for the policy): unknown fields are
ignored, and so are offers of executor kinds this version does not know.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field

from p2pnode.ids import NodeIdField
from p2pnode.jobs.model import Executor, JobId, known_executor
from p2pnode.labels import Labels

HEARTBEAT_INTERVAL_S = 3.0
MISSED_BEFORE_DOWN = 3
DOWN_AFTER_S = HEARTBEAT_INTERVAL_S * MISSED_BEFORE_DOWN
MAX_RUNNING_LISTED = 64
"""A heartbeat names at most this many running jobs (the count is in the slots)."""

WorkerState = Literal["ready", "busy", "draining", "down"]


class ExecutorOffer(BaseModel):
    kind: Executor
    answers: bool
    """Its last probe succeeded: the node takes jobs of this kind."""


def _known_kinds(offers: object) -> object:
    """Drop offers of executor kinds this version does not know: a newer node lists every kind
    it has, and one kind we cannot run must not make the rest of its heartbeat unreadable (the
    node would look absent). Other malformed offers still fail the heartbeat."""
    if not isinstance(offers, list):
        return offers
    return [o for o in offers if not isinstance(o, dict) or known_executor(o.get("kind"))]


ExecutorOffers = Annotated[list[ExecutorOffer], BeforeValidator(_known_kinds)]


class Heartbeat(BaseModel):
    """What a node offers and how loaded it is; believed only from the node it names."""

    KIND: ClassVar[str] = "node.heartbeat"
    node_id: NodeIdField
    sent_at: float = Field(allow_inf_nan=False)
    executors: ExecutorOffers = Field(max_length=16)
    slots_total: int = Field(ge=0)
    slots_free: int = Field(ge=0)
    running: list[JobId] = Field(max_length=MAX_RUNNING_LISTED)
    labels: Labels = {}
    draining: bool = False
    """It claims no new job (`p2pnode drain`), finishing the ones it runs."""
    version: str = Field(max_length=64)
    uptime_s: float = Field(ge=0, allow_inf_nan=False)

    def answers(self, kind: str) -> bool:
        """Takes jobs of `kind`: the executor answers and there are slots to run it in."""
        return self.slots_total > 0 and any(e.kind == kind and e.answers for e in self.executors)


class WorkerView(Heartbeat):
    """A node's latest heartbeat as this node sees it. `age_s`: since it was sent (as far as this
    node can tell); `down` after `MISSED_BEFORE_DOWN` missed heartbeats; `draining`: it says so;
    `busy`: no free slot."""

    state: WorkerState
    age_s: float
    other_version: bool = False
    """It runs another version of p2pnode than this node (an upgrade is under way: README
    "Upgrades and compatibility")."""
