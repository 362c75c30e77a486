"""A control request is applied once however often it arrives (issue 12.2, the 20-second stall).

When a cached connection to the origin fails mid-request (gossip drops a neighbour that is not
keeping up and closes every connection to it), `Dialer.request` sends the request again on a
fresh connection, also when the origin had already applied it. A repeated claim used to be
refused as "already claimed" (or answered with another job), so the job sat claimed by a worker
that never ran it until the lease lapsed and the retry back-off passed: 15 + 1 + 5 s. Now the
origin answers a repeat with what it did the first time.
"""

from __future__ import annotations

from pathlib import Path

import trio

from p2pnode.jobs import model
from p2pnode.jobs.control import ControlServer
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from p2pnode.jobs.store import JobStore
from tests.test_jobs_perf import job_spec, origin_control

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ORIGIN, WORKER, OTHER = "0" * 64, "1" * 64, "2" * 64


async def test_a_repeated_claim_gets_the_same_lease_and_a_repeated_report_the_same_ack(
    tmp_path: Path,
) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        control = origin_control(store)
        asked, spare = (
            store.submit(ORIGIN, job_spec(ORIGIN)),
            store.submit(ORIGIN, job_spec(ORIGIN)),
        )
        claim = model.ClaimRequest(job_id=asked.id, worker=WORKER, start=True, instead=["wasi"])
        first = await control.answer(WORKER, claim)
        again = await control.answer(WORKER, claim)
        assert isinstance(first, model.ClaimGrant) and isinstance(again, model.ClaimGrant)
        assert (again.job.id, again.lease_token) == (asked.id, first.lease_token)
        assert 0 < again.lease_expires_in <= first.lease_expires_in
        assert store.get(asked.id).attempts == 1  # type: ignore[union-attr]
        assert store.get(spare.id).state is JobState.PENDING  # type: ignore[union-attr]

        # Another peer sending the same request id learns nothing of the lease.
        stolen = claim.model_copy(update={"worker": OTHER})
        taken = await control.answer(OTHER, stolen)
        assert isinstance(taken, model.ClaimGrant) and taken.job.id == spare.id

        report = model.Report(job_id=asked.id, lease_token=first.lease_token, ok=True, result=1)
        assert isinstance(await control.answer(WORKER, report), model.ReportAck)
        assert isinstance(await control.answer(WORKER, report), model.ReportAck)
        done = store.get(asked.id)
        assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 1
        # The lease is over: a claim repeated now is a new claim (and the job is done).
        late = await control.answer(WORKER, claim)
        assert isinstance(late, model.ClaimRefused), late


async def test_a_claim_whose_reply_was_lost_runs_the_job_at_once(start_node, monkeypatch) -> None:
    """The worker's connection to the origin closes after the origin granted the claim and
    before the grant arrived (as gossip closes it); the worker's retry gets the same grant and
    runs the job now, not after the lease (60 s here) lapses."""
    origin = await start_node(max_jobs=0, lease_s=60.0)
    worker = await start_node(join=origin.join_ticket())
    warm = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=1))
    with trio.fail_after(30):  # the worker's connection to the origin is cached from now on
        assert (await origin.jobs.wait(warm.id)).state is JobState.SUCCEEDED  # type: ignore[union-attr]

    answer = origin.jobs.control.answer
    lost: list[str] = []

    async def reply_lost(peer: str, request: model.ControlMessage) -> model.ControlMessage:
        reply = await answer(peer, request)
        if isinstance(request, model.ClaimRequest) and not lost:
            lost.append(request.job_id)
            worker.dialer.forget(origin.id)  # what gossip does to a neighbour it drops
        return reply

    monkeypatch.setattr(origin.jobs.control, "answer", reply_lost)
    job = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=2))
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert lost == [job.id]
    assert done is not None and done.state is JobState.SUCCEEDED, done
    assert done.attempts == 1 and done.result == 2


async def test_a_repeated_log_chunk_is_kept_once(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        kept: list[str] = []
        control = ControlServer(
            store,
            30.0,
            _nothing,
            lambda *_: None,
            lambda _, c: kept.append(c.text),
            lambda *_: None,
        )
        job = store.submit(ORIGIN, job_spec(ORIGIN))
        grant = await control.answer(WORKER, model.ClaimRequest(job_id=job.id, worker=WORKER))
        assert isinstance(grant, model.ClaimGrant)
        chunk = model.LogChunk(
            job_id=job.id, lease_token=grant.lease_token, stream="stdout", offset=0, size=3,
            text="hi\n",
        )  # fmt: skip
        assert isinstance(await control.answer(WORKER, chunk), model.Ack)
        assert isinstance(await control.answer(WORKER, chunk), model.Ack)
        assert kept == ["hi\n"]


async def _nothing(_job: model.Job) -> None:
    pass
