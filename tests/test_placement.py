"""Placement at the origin (issue 13.3): the origin side of the control protocol admits a claim
only from a worker whose own heartbeat has the labels the job requires, and prefers idle workers
without starving busy ones. A real job store and control server; heartbeats fed as gossip would,
and trio's mock clock, so nothing depends on timing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pnode.gossip.service import Received
from p2pnode.jobs import model
from p2pnode.jobs.control import ControlServer
from p2pnode.jobs.heartbeat import Heartbeat
from p2pnode.jobs.store import ClaimRefused, JobStore
from p2pnode.jobs.workers import MAX_DEFERRED, PREFER_IDLE_S, Workers
from p2pnode.labels import LabelRequirement
from tests.test_workers import LocalGossip, heartbeat

ORIGIN, PLAIN, GPU, BUSY, IDLE = ("11" * 32, "22" * 32, "33" * 32, "44" * 32, "55" * 32)
MODULE = model.BlobRef(hash="aa" * 32, size=1, root="aa" * 32)


class Origin:
    """A job origin whose worker table has heard the given heartbeats."""

    def __init__(self, tmp_path: Path, table: Workers) -> None:
        self.store = JobStore(tmp_path / "jobs.sqlite")

        async def changed(_job: model.Job) -> None:
            pass

        self.control = ControlServer(
            self.store, 15.0, changed, lambda *_: None, lambda *_: None, table.admit
        )

    def submit(self, *requirements: str) -> str:
        labels = [LabelRequirement.parse(r) for r in requirements]
        spec = model.JobSpec(module=MODULE, requirements=model.Requirements(labels=labels))
        return self.store.submit(ORIGIN, spec).id

    async def claim(self, job_id: str, worker: str) -> model.ControlMessage:
        return await self.control.answer(worker, model.ClaimRequest(job_id=job_id, worker=worker))


async def origin_hearing(nursery: trio.Nursery, tmp_path: Path, *beats: Heartbeat) -> Origin:
    gossip = LocalGossip()
    table = Workers(ORIGIN, gossip, lambda: heartbeat(ORIGIN, time.time(), slots=0))
    await nursery.start(table.run)
    for beat in beats:
        payload = beat.model_dump(mode="json")
        await gossip.send.send(Received(Heartbeat.KIND, payload, beat.node_id, beat.node_id))
    await trio.testing.wait_all_tasks_blocked()
    return Origin(tmp_path, table)


def refused(reply: model.ControlMessage) -> tuple[str, float | None]:
    assert isinstance(reply, model.ClaimRefused), reply
    return reply.reason, reply.retry_after


async def test_the_origin_admits_only_workers_whose_heartbeat_has_the_labels(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    now = time.time()
    origin = await origin_hearing(
        nursery,
        tmp_path,
        heartbeat(PLAIN, now, labels={"gpu": "no"}),
        heartbeat(GPU, now, labels={"gpu": "yes", "zone": "eu"}),
    )
    job = origin.submit("gpu=yes", "zone", "arch!=arm64")
    assert refused(await origin.claim(job, PLAIN)) == (
        "the job requires workers with gpu=yes, zone, arch!=arm64",
        None,
    )
    stranger = "66" * 32  # no heartbeat heard yet: asked to come back, not turned away
    reason, retry_after = refused(await origin.claim(job, stranger))
    assert "heartbeat" in reason and retry_after is not None and retry_after > 0
    granted = await origin.claim(job, GPU)
    assert isinstance(granted, model.ClaimGrant) and granted.job.worker == GPU
    plain_job = origin.submit()
    assert isinstance(await origin.claim(plain_job, stranger), model.ClaimGrant)


async def test_a_busy_worker_defers_to_an_idle_one_once_and_is_never_starved(
    nursery: trio.Nursery, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    now = time.time()
    origin = await origin_hearing(
        nursery,
        tmp_path,
        heartbeat(BUSY, now, slots=2, free=1, labels={"pool": "a"}),
        heartbeat(IDLE, now, slots=2, labels={"pool": "b"}),
    )
    taken_by_idle = origin.submit()
    assert refused(await origin.claim(taken_by_idle, BUSY)) == (
        "an idle worker may take it first",
        PREFER_IDLE_S,
    )
    assert isinstance(await origin.claim(taken_by_idle, IDLE), model.ClaimGrant)

    left_alone = origin.submit()
    assert refused(await origin.claim(left_alone, BUSY))[1] == PREFER_IDLE_S
    mock_clock.jump(PREFER_IDLE_S / 2)
    assert refused(await origin.claim(left_alone, BUSY))[1] == pytest.approx(PREFER_IDLE_S / 2)
    mock_clock.jump(PREFER_IDLE_S / 2)
    granted = await origin.claim(left_alone, BUSY)  # nobody idle took it: the busy one gets it
    assert isinstance(granted, model.ClaimGrant) and granted.job.worker == BUSY

    only_busy_fits = origin.submit("pool=a")  # the idle worker could not run it: no deferral
    assert isinstance(await origin.claim(only_busy_fits, BUSY), model.ClaimGrant)


async def test_a_busy_worker_back_a_little_late_finds_its_deferral_in_a_burst(
    nursery: trio.Nursery, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Many deferrals at once (a burst) must not forget one whose worker is due back: forgotten,
    it was deferred anew each time it came back, until it gave up on the job."""
    now = time.time()
    origin = await origin_hearing(
        nursery, tmp_path, heartbeat(BUSY, now, slots=2, free=1), heartbeat(IDLE, now, slots=2)
    )
    admit = origin.control._admit

    def job() -> model.Job:
        spec = model.JobSpec(module=MODULE)
        return model.Job(
            id=model.new_job_id(), origin=ORIGIN, spec=spec, created_at=0, updated_at=0
        )

    mine = job()
    with pytest.raises(ClaimRefused):
        admit(BUSY, mine)
    mock_clock.jump(PREFER_IDLE_S * 1.1)  # its timer and round trip took a little longer
    for _ in range(MAX_DEFERRED + 1):  # the rest of the burst, deferred meanwhile
        with pytest.raises(ClaimRefused):
            admit(BUSY, job())
    admit(BUSY, mine)  # granted: it waited its turn


async def test_announcements_ask_the_workers_that_could_run_a_job_first_in_turn(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Idle ones in turn, else those with a free slot; none (everyone claims) when all are full
    or none has the labels."""
    now = time.time()
    third = "77" * 32
    origin = await origin_hearing(
        nursery,
        tmp_path,
        heartbeat(BUSY, now, slots=2, free=1, labels={"pool": "a"}),
        heartbeat(IDLE, now, slots=2, labels={"pool": "b"}),
        heartbeat(third, now, slots=2, labels={"pool": "b"}),
        heartbeat(GPU, now, slots=2, free=0, labels={"gpu": "yes"}),
    )
    table = origin.control._admit.__self__  # type: ignore[attr-defined]

    def first(*requirements: str) -> str | None:
        job = origin.store.get(origin.submit(*requirements))
        assert job is not None
        return table.first_claimer(job)

    assert {first(), first()} == {IDLE, third}  # in turn, the busy one left out
    assert first("pool=a") == BUSY  # the only one that could: a free slot will do
    assert first("gpu=yes") is None  # no free slot: every worker may claim at once
    assert first("zone=eu") is None
