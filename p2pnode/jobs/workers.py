"""Heartbeats: send ours every few seconds, keep the latest of every node, say who is up.

Each node's heartbeat replaces its previous one: the sender retires the envelope of the last one,
and so does every receiver when a newer one arrives, so gossip holds one heartbeat per node and
catch-up never replays a node's history. A heartbeat is believed only from the node it names.

The table also places this node's jobs (`admit`, asked by the origin side of the control
protocol): a worker must have the labels a job requires, by its own signed heartbeat, and a busy
worker's claim is deferred once, briefly, while an idle worker that could run the job exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import get_args

import trio
from pydantic import ValidationError

import p2pnode
from p2pnode.gossip.service import Received
from p2pnode.ids import EnvelopeId, NodeId
from p2pnode.jobs import model
from p2pnode.jobs.heartbeat import (
    DOWN_AFTER_S,
    HEARTBEAT_INTERVAL_S,
    MAX_RUNNING_LISTED,
    ExecutorOffer,
    Heartbeat,
    WorkerState,
    WorkerView,
)
from p2pnode.jobs.service import Gossip
from p2pnode.jobs.store import ClaimRefused
from p2pnode.jobs.worker import Worker

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW_S = 60.0
"""Clocks may differ this much (as gossip allows); a heartbeat older than that on arrival (caught
up from a node long gone) counts as that much older."""
PREFER_IDLE_S = 1.0
"""How long a busy worker's claim waits while an idle one may take the job (then it gets it)."""
MAX_DEFERRED = 1024
DEFERRAL_KEPT_S = 10 * PREFER_IDLE_S
"""How long a deferral is remembered once more than `MAX_DEFERRED` are: a deferred worker comes
back after `PREFER_IDLE_S` plus however late its timer and round trip are (seconds under load),
and must find its deferral then, or it is deferred again and may give up on the job."""


@dataclass(frozen=True)
class _Latest:
    heartbeat: Heartbeat
    envelope_id: EnvelopeId
    received_at: float  # trio clock, backdated for a heartbeat that arrived stale


def heartbeat_of(
    node_id: NodeId, worker: Worker, offered: Collection[str], started: float
) -> Heartbeat:
    """This node's heartbeat now: every executor kind, whether it answers, and the worker's load."""
    now = time.time()
    return Heartbeat(
        node_id=node_id,
        sent_at=now,
        executors=[
            ExecutorOffer(kind=kind, answers=kind in offered) for kind in get_args(model.Executor)
        ],
        slots_total=worker.max_jobs,
        slots_free=max(worker.max_jobs - len(worker.running), 0),
        running=sorted(worker.running)[:MAX_RUNNING_LISTED],
        labels=worker.labels,
        draining=worker.draining,
        version=p2pnode.__version__,
        uptime_s=max(now - started, 0.0),
    )


class Workers:
    """The latest heartbeat of every node, this one included."""

    def __init__(self, node_id: NodeId, gossip: Gossip, beat: Callable[[], Heartbeat]) -> None:
        self.id = node_id
        self._gossip = gossip
        self._beat = beat
        self._latest: dict[str, _Latest] = {}
        self._turn = 0
        """Counts `first_claimer` answers, to take the idle workers in turn."""
        self._deferred: dict[tuple[str, str], float] = {}
        """(job id, busy worker) -> when its claim was first deferred for an idle worker"""
        # From now: nothing gossip hears before `run` is lost.
        self._events = gossip.subscribe(kinds=(Heartbeat.KIND,))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_gossip)
            self.send_heartbeat()
            task_status.started()
            while True:
                await trio.sleep(HEARTBEAT_INTERVAL_S)
                self.send_heartbeat()

    def workers(self) -> list[WorkerView]:
        return [
            WorkerView(
                **dict(heartbeat),
                state=state,
                age_s=age,
                other_version=heartbeat.version != p2pnode.__version__,
            )
            for heartbeat, state, age in self._states()
        ]

    def version_of(self, node_id: NodeId) -> str | None:
        """The p2pnode version a node's last heartbeat named (for a dial it failed: `Dialer`)."""
        latest = self._latest.get(node_id)
        return latest.heartbeat.version if latest is not None else None

    def _states(self) -> list[tuple[Heartbeat, WorkerState, float]]:
        """Every node's latest heartbeat, its state and age, by node id: what `workers` shows,
        without building views (placement asks on every claim and announcement)."""
        now = trio.current_time()
        states = []
        for node_id in sorted(self._latest):
            latest = self._latest[node_id]
            age = max(now - latest.received_at, 0.0)
            heartbeat = latest.heartbeat
            state: WorkerState = (
                "down"
                if age > DOWN_AFTER_S
                else "draining"
                if heartbeat.draining
                else "busy"
                if heartbeat.slots_free == 0
                else "ready"
            )
            states.append((heartbeat, state, age))
        return states

    def waiting_for(self, job: model.Job) -> str | None:
        """Why a pending job waits, when this node can tell: no live worker offers its executor,
        none of those has the labels it requires, or all that could run it are draining."""
        if job.state != model.JobState.PENDING:
            return None
        requirements = job.spec.requirements
        live = [w for w in self.workers() if w.state != "down" and w.answers(requirements.executor)]
        if not live:
            return f"no live worker offers the {requirements.executor} executor" + _SEE
        able = [w for w in live if requirements.admits(w.labels)]
        if not able:
            wanted = ", ".join(str(r) for r in requirements.labels)
            return f"no live worker has {wanted}" + _SEE
        if all(w.state == "draining" for w in able):
            return "every worker that could run it is draining" + _SEE
        return None

    def first_claimer(self, job: model.Job) -> NodeId | None:
        """The worker to ask first to claim `job`, in turn among those that could run it and
        have a free slot, the idle ones if any (as `admit` prefers them); None when there is
        none: every worker may claim at once."""
        requirements = job.spec.requirements
        able = [
            w
            for w, state, _ in self._states()
            if state == "ready"
            and requirements.admits(w.labels)
            and w.answers(requirements.executor)
        ]
        if not able:
            return None
        self._turn += 1
        idle = [w for w in able if _idle(w, "ready")] or able
        return NodeId(idle[self._turn % len(idle)].node_id)

    def admit(self, worker: NodeId, job: model.Job) -> None:
        """Let `worker` claim the pending `job`, or raise `ClaimRefused`. Its labels are the ones
        its own heartbeat states; a busy worker waits `PREFER_IDLE_S` once if an idle worker
        that could run the job is up, and is granted the job after that if it is still there."""
        requirements = job.spec.requirements
        latest = self._latest.get(worker)
        if requirements.labels:
            if latest is None:
                raise ClaimRefused(
                    "the origin has not heard this worker's heartbeat yet",
                    retry_after=HEARTBEAT_INTERVAL_S,
                )
            if not requirements.admits(latest.heartbeat.labels):
                wanted = ", ".join(str(r) for r in requirements.labels)
                raise ClaimRefused(f"the job requires workers with {wanted}")
        if latest is None or latest.heartbeat.slots_free >= latest.heartbeat.slots_total:
            return  # idle, or not heard of yet: nothing to prefer it to
        now = trio.current_time()
        key = (job.id, worker)
        first = self._deferred.get(key)
        if first is not None and now - first >= PREFER_IDLE_S:
            del self._deferred[key]
            return
        if not any(
            w.node_id != worker
            and _idle(w, state)
            and requirements.admits(w.labels)
            and w.answers(requirements.executor)
            for w, state, _ in self._states()
        ):
            return
        if first is None:
            first = self._deferred[key] = now
            self._forget_old_deferrals(now)
        raise ClaimRefused(
            "an idle worker may take it first", retry_after=first + PREFER_IDLE_S - now
        )

    def _forget_old_deferrals(self, now: float) -> None:
        """Deferred workers that never came back (they took another job, or stopped)."""
        if len(self._deferred) > MAX_DEFERRED:
            for key, at in list(self._deferred.items()):
                if now - at > DEFERRAL_KEPT_S:
                    del self._deferred[key]

    def send_heartbeat(self) -> None:
        """Gossip this node's heartbeat now: every few seconds, and at once when it drains."""
        heartbeat = self._beat()
        try:
            envelope_id = self._gossip.publish(heartbeat)
        except ValueError as exc:  # bounded by its model; this is a last line of defence
            log.warning("could not send a heartbeat: %s", exc)
            return
        self._record(heartbeat, envelope_id, trio.current_time())

    def _record(self, heartbeat: Heartbeat, envelope_id: EnvelopeId, received_at: float) -> None:
        last = self._latest.get(heartbeat.node_id)
        if last is not None and heartbeat.sent_at <= last.heartbeat.sent_at:
            self._gossip.retire(envelope_id)  # an older one, late: ours is newer
            return
        if last is not None:
            self._gossip.retire(last.envelope_id)
        self._latest[heartbeat.node_id] = _Latest(heartbeat, envelope_id, received_at)

    async def _follow_gossip(self) -> None:
        async for event in self._events:
            if not isinstance(event, Received) or event.kind != Heartbeat.KIND:
                continue
            try:
                heartbeat = Heartbeat.model_validate(event.payload)
            except ValidationError as exc:
                log.warning("ignored a malformed heartbeat: %s", exc.errors()[0]["msg"])
                continue
            if heartbeat.node_id != event.origin:
                log.warning(
                    "ignored a heartbeat for %s signed by %s",
                    heartbeat.node_id[:10],
                    event.origin[:10],
                )
                self._gossip.retire(event.envelope_id)
                continue
            if heartbeat.node_id == self.id:
                continue
            stale_by = max(time.time() - heartbeat.sent_at - MAX_CLOCK_SKEW_S, 0.0)
            self._record(heartbeat, event.envelope_id, trio.current_time() - stale_by)


_SEE = " (see `p2pnode workers`)"


def _idle(heartbeat: Heartbeat, state: WorkerState) -> bool:
    return state == "ready" and heartbeat.slots_free == heartbeat.slots_total
