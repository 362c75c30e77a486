"""The jobs hot path does no work twice: a job costs its origin one claim, one report and one
announcement, and an uploaded binary module is neither stored again nor compiled again for every
job that uses it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import iroh
import pytest
import trio
import trio.testing

from p2pnode.blobs import store as blob_store
from p2pnode.executors.wasm import load_module_bytes
from p2pnode.ids import NodeId
from p2pnode.jobs import control as control_module
from p2pnode.jobs import model, service
from p2pnode.jobs.announcements import JobAnnounced
from p2pnode.jobs.control import (
    MAX_CONTROL_FRAME,
    ControlClient,
    ControlError,
    ControlServer,
    control_message,
)
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from p2pnode.jobs.store import ClaimRefused, JobStore
from p2pnode.jobs.worker import Worker
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr, remote_node_id
from p2pnode.net.framing import FrameError, recv_model, send_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def job_spec(origin: str) -> model.JobSpec:
    return model.JobSpec(
        module=model.BlobRef(hash="a" * 64, size=10, root="b" * 64, providers=[origin])
    )


def origin_control(
    store: JobStore, admit: Callable[[str, model.Job], None] = lambda *_: None
) -> ControlServer:
    """The origin's control server over `store`, with nothing wired but placement."""

    async def changed(job: model.Job) -> None:
        pass

    return ControlServer(store, 30.0, changed, lambda *_: None, lambda *_: None, admit)


async def test_a_job_costs_its_origin_one_claim_and_one_report(start_node, monkeypatch) -> None:
    """The claim starts the job: no `Started` round trip, and the history still shows both
    steps."""
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    asked: list[str] = []
    answer = origin.jobs.control.answer

    async def counting(peer: str, request: model.ControlMessage) -> model.ControlMessage:
        asked.append(request.type)
        return await answer(peer, request)

    monkeypatch.setattr(origin.jobs.control, "answer", counting)
    published: list[str] = []
    publish = origin.jobs._gossip.publish
    monkeypatch.setattr(
        origin.jobs._gossip, "publish", lambda m: published.append(type(m).__name__) or publish(m)
    )
    job = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=7))
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED, done
    assert asked == ["claim_request", "report"]
    assert published == ["JobAnnounced"]  # its worker is done: nobody to tell that it ended
    states = [e.state for e in done.history]  # running may repeat: a compile note
    assert states[:3] == [JobState.PENDING, JobState.CLAIMED, JobState.RUNNING], states
    assert states[-1] is JobState.SUCCEEDED
    assert done.worker == worker.id


async def test_an_uploaded_binary_module_is_its_own_blob_and_listed_once(
    start_node, monkeypatch
) -> None:
    node = await start_node(max_jobs=0)
    listed: list[bytes] = []
    list_workflows = service.list_workflows

    def counting(wasm: bytes) -> list[str]:
        listed.append(wasm)
        return list_workflows(wasm)

    monkeypatch.setattr(service, "list_workflows", counting)
    blob = await node.blobs.store.add_bytes(load_module_bytes(EXAMPLES / "echo.wat"))
    blobs = len(await node.blobs.store.list())
    jobs = [
        await node.jobs.submit_files(JobSubmission(module_blob=blob.hash, input=n))
        for n in range(3)
    ]
    assert {job.spec.module.hash for job in jobs} == {blob.hash}
    assert len(listed) == 1
    assert len(await node.blobs.store.list()) == blobs
    held = {model.tag_job(tag): h for tag, h in (await node.blobs.tags()).items()}
    assert all(held[job.id] == blob.hash for job in jobs)  # each job holds the module


async def test_a_scratch_export_is_checked_but_not_fsynced(tmp_path, monkeypatch) -> None:
    """A worker's copy of a job input lives as long as the run: a crash loses nothing worth an
    fsync (each costs milliseconds on a busy disk)."""
    store = blob_store.BlobStore(tmp_path / "blobs")
    info = await store.add_bytes(b"module bytes")
    synced: list[int] = []
    fsync = blob_store.os.fsync
    monkeypatch.setattr(blob_store.os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    await store.export(info.hash, tmp_path / "copy", durable=False)
    assert (tmp_path / "copy").read_bytes() == b"module bytes"
    assert synced == []
    await store.export(info.hash, tmp_path / "kept")
    assert len(synced) == 2


async def test_a_claim_for_a_taken_job_gets_the_oldest_claimable_one_instead(tmp_path) -> None:
    """Exactly once still: the substitute is claimed like any job, and once nothing is pending the
    refusal says so, so the worker drops the announcements it queued before."""
    origin, first, second = "0" * 64, "1" * 64, "2" * 64
    spec = job_spec(origin)

    with JobStore(tmp_path / "jobs.db") as store:
        control = origin_control(store)
        older, newer = store.submit(origin, spec), store.submit(origin, spec)

        granted = await control.answer(first, model.ClaimRequest(job_id=older.id, worker=first))
        assert isinstance(granted, model.ClaimGrant) and granted.job.id == older.id
        plain = await control.answer(second, model.ClaimRequest(job_id=older.id, worker=second))
        assert isinstance(plain, model.ClaimRefused) and not plain.none_pending
        request = model.ClaimRequest(job_id=older.id, worker=second, instead=["wasi"])
        instead = await control.answer(second, request)
        assert isinstance(instead, model.ClaimGrant) and instead.job.id == newer.id
        assert instead.job.worker == second
        another = model.ClaimRequest(job_id=older.id, worker=second, instead=["wasi"])
        refused = await control.answer(second, another)  # a new request, not a repeat
        assert isinstance(refused, model.ClaimRefused) and refused.none_pending
        assert {j.worker for j in store.list()} == {first, second}


class _IdleOrigin:
    """An origin with nothing pending: it records each claim and refuses it. While `first` is
    being claimed, it announces `again` anew (the job is pending once more)."""

    def __init__(self, worker: Worker, again: str) -> None:
        self.worker, self.again = worker, again
        self.claims: list[str] = []

    async def ask(self, origin: PeerAddr, request: model.ControlMessage) -> model.ControlMessage:
        assert isinstance(request, model.ClaimRequest)
        if not self.claims:
            self.worker.heard(self.again)
        self.claims.append(request.job_id)
        return model.ClaimRefused(reason="job already claimed", none_pending=True)


async def test_announcements_queued_before_the_origin_went_idle_are_dropped_unless_heard_again(
    tmp_path, mock_clock
) -> None:
    origin = "0" * 64
    spec = job_spec(origin)

    def announced(n: int) -> JobAnnounced:
        job = model.Job(
            id=model.new_job_id(n), origin=origin, spec=spec, created_at=n, updated_at=n
        )
        return JobAnnounced(job=job.summary(), origin_addr=PeerAddr(node_id=origin))

    first, stale, again = announced(1), announced(2), announced(3)
    worker = Worker(
        "1" * 64, {}, None, None, lambda _: None, tmp_path, 1, {}, tmp_path / "drain", Metrics()
    )  # type: ignore[arg-type]
    worker._control = control = _IdleOrigin(worker, again.job.id)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        async with worker._limiter:  # the one slot is busy: the announcements queue, in order
            for announcement in (first, stale, again):
                nursery.start_soon(worker.consider, announcement)
                await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1)
    assert control.claims == [first.job.id, again.job.id]


async def test_the_job_granted_instead_is_one_placement_admits(tmp_path) -> None:
    origin, first, second = "0" * 64, "1" * 64, "2" * 64
    spec = job_spec(origin)

    with JobStore(tmp_path / "jobs.db") as store:
        older, newer = store.submit(origin, spec), store.submit(origin, spec)

        def admit(worker: str, job: model.Job) -> None:
            if worker == second and job.id == newer.id:
                raise ClaimRefused("the job requires workers with gpu=yes")

        control = origin_control(store, admit)
        await control.answer(first, model.ClaimRequest(job_id=older.id, worker=first))
        request = model.ClaimRequest(job_id=older.id, worker=second, instead=["wasi"])
        refused = await control.answer(second, request)
        assert isinstance(refused, model.ClaimRefused) and not refused.none_pending
        assert store.get(newer.id).state is JobState.PENDING


async def test_a_claim_fills_the_workers_free_slots_in_one_round_trip(tmp_path) -> None:
    """Up to `more` further jobs, oldest first, each leased like the first; placement still
    decides, and a repeat of the claim gets the same leases."""
    origin, worker = "0" * 64, "1" * 64
    with JobStore(tmp_path / "jobs.db") as store:
        jobs = [store.submit(origin, job_spec(origin)) for _ in range(5)]
        banned = jobs[2].id

        def admit(_worker: str, job: model.Job) -> None:
            if job.id == banned:
                raise ClaimRefused("the job requires workers with gpu=yes")

        control = origin_control(store, admit)
        request = model.ClaimRequest(job_id=jobs[0].id, worker=worker, instead=["wasi"], more=2)
        grant = await control.answer(worker, request)
        assert isinstance(grant, model.ClaimGrant)
        granted = [grant.job, *(more.job for more in grant.more)]
        assert [job.id for job in granted] == [jobs[0].id, jobs[1].id, jobs[3].id]
        tokens = {grant.lease_token, *(more.lease_token for more in grant.more)}
        assert len(tokens) == 3
        for job in granted:
            stored = store.get(job.id)
            assert stored is not None and stored.lease is not None
            assert stored.state is JobState.CLAIMED and stored.lease.worker == worker
            assert stored.lease.token in tokens and stored.attempts == 1
        assert store.get(banned).state is JobState.PENDING  # type: ignore[union-attr]
        again = await control.answer(worker, request)
        assert again == grant.model_copy(update={"lease_expires_in": again.lease_expires_in})


async def run_queued(origin, spec: model.JobSpec, count: int) -> list[model.Job]:
    """`count` jobs of `spec`, all submitted before any is claimed, run to success."""
    jobs = [await origin.jobs.submit(spec) for _ in range(count)]
    with trio.fail_after(30):
        done = [await origin.jobs.wait(job.id) for job in jobs]
    assert all(job is not None and job.state is JobState.SUCCEEDED for job in done), done
    return jobs


async def test_a_worker_with_free_slots_takes_the_waiting_jobs_in_one_claim(
    start_node, monkeypatch
) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket(), max_jobs=4)
    first = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=0))
    with trio.fail_after(30):
        await origin.jobs.wait(first.id)
        while worker.jobs.worker._limiter.borrowed_tokens:  # its run is cleaned up: 4 free slots
            await trio.sleep(0.01)
    answer = origin.jobs.control.answer
    grants: list[int] = []

    async def counting(peer: str, request: model.ControlMessage) -> model.ControlMessage:
        reply = await answer(peer, request)
        if isinstance(reply, model.ClaimGrant):
            grants.append(1 + len(reply.more))
        return reply

    monkeypatch.setattr(origin.jobs.control, "answer", counting)
    await run_queued(origin, first.spec, 4)
    assert grants == [4]


class _Granting:
    """An origin that records the time of each claim and grants it."""

    def __init__(self) -> None:
        self.claimed_at: list[float] = []

    async def ask(self, origin: PeerAddr, request: model.ControlMessage) -> model.ControlMessage:
        assert isinstance(request, model.ClaimRequest)
        self.claimed_at.append(trio.current_time())
        return model.ClaimRefused(reason="job already claimed")


async def test_a_worker_leaves_an_announced_job_to_the_one_asked_first_for_a_moment(
    tmp_path, mock_clock
) -> None:
    mock_clock.autojump_threshold = 0  # time passes only when everything waits for it
    origin, me, other = "0" * 64, "1" * 64, "2" * 64
    worker = Worker(
        me, {}, None, None, lambda _: None, tmp_path, 1, {}, tmp_path / "drain", Metrics()
    )  # type: ignore[arg-type]
    worker._control = control = _Granting()  # type: ignore[assignment]
    job = model.Job(
        id=model.new_job_id(1), origin=origin, spec=job_spec(origin), created_at=1, updated_at=1
    )
    for first, delay in ((me, 0.0), (None, 0.0), (other, model.DEFER_TO_FIRST_S)):
        control.claimed_at.clear()
        announcement = JobAnnounced(
            job=job.summary(), origin_addr=PeerAddr(node_id=origin), first=first
        )
        start = trio.current_time()
        await worker.consider(announcement)
        assert control.claimed_at == [start + delay]


async def test_a_report_may_take_the_next_job_for_the_slot_it_frees(tmp_path) -> None:
    """Granted like a claim (oldest first, leased, started); a repeat of the report gets the
    same acknowledgement and grant, and applies nothing twice."""
    origin, worker = "0" * 64, "1" * 64
    with JobStore(tmp_path / "jobs.db") as store:
        control = origin_control(store)
        done, waiting = (
            store.submit(origin, job_spec(origin)),
            store.submit(origin, job_spec(origin)),
        )
        grant = await control.answer(worker, model.ClaimRequest(job_id=done.id, worker=worker))
        assert isinstance(grant, model.ClaimGrant)
        report = model.Report(
            job_id=done.id, lease_token=grant.lease_token, ok=True, result=1, next=["wasi"]
        )
        ack = await control.answer(worker, report)
        assert isinstance(ack, model.ReportAck) and ack.grant is not None
        assert ack.grant.job.id == waiting.id and ack.grant.job.state is JobState.RUNNING
        again = await control.answer(worker, report)
        assert isinstance(again, model.ReportAck) and again.grant is not None
        assert again.grant.lease_token == ack.grant.lease_token
        assert store.get(waiting.id).attempts == 1  # type: ignore[union-attr]
        last = model.Report(
            job_id=waiting.id, lease_token=ack.grant.lease_token, ok=True, next=["wasi"]
        )
        assert await control.answer(worker, last) == model.ReportAck()  # nothing waits


async def test_a_busy_worker_takes_its_next_job_with_each_report(start_node, monkeypatch) -> None:
    origin = await start_node(max_jobs=0)
    await start_node(join=origin.join_ticket(), max_jobs=1)
    first = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=0))
    with trio.fail_after(30):
        await origin.jobs.wait(first.id)
    answer = origin.jobs.control.answer
    granted_with_report: list[str] = []

    async def counting(peer: str, request: model.ControlMessage) -> model.ControlMessage:
        reply = await answer(peer, request)
        if isinstance(reply, model.ReportAck) and reply.grant is not None:
            granted_with_report.append(reply.grant.job.id)
        return reply

    monkeypatch.setattr(origin.jobs.control, "answer", counting)
    jobs = await run_queued(origin, first.spec, 3)
    assert granted_with_report == [jobs[1].id, jobs[2].id]


async def test_a_known_module_blob_is_held_without_listing_its_tags_again(
    start_node, monkeypatch
) -> None:
    """Describing a blob lists all its tags, one per job that used it: done for every submit, it
    cost more with each job (0.8 ms of CPU at 1,000 tags, 3 ms at 5,000, measured)."""
    node = await start_node(max_jobs=0)
    blob = await node.blobs.store.add_bytes(load_module_bytes(EXAMPLES / "echo.wat"))
    described: list[str] = []
    info = node.blobs.store.info

    async def counting(blob_hash: str) -> blob_store.BlobInfo:
        described.append(blob_hash)
        return await info(blob_hash)

    monkeypatch.setattr(node.blobs.store, "info", counting)
    jobs = [
        await node.jobs.submit_files(JobSubmission(module_blob=blob.hash, input=n))
        for n in range(3)
    ]
    assert described == [blob.hash]
    held = {model.tag_job(tag) for tag, h in (await node.blobs.tags()).items() if h == blob.hash}
    assert held == {job.id for job in jobs}
    assert all(job.spec.module.hash == blob.hash for job in jobs)
    await node.blobs.store.remove(blob.hash, force=True)  # gone, whatever the node remembers
    with pytest.raises(service.SubmissionError, match="upload it first"):
        await node.jobs.submit_files(JobSubmission(module_blob=blob.hash, input=3))


async def test_a_worker_places_no_module_file_its_runner_has_compiled(
    start_node, monkeypatch
) -> None:
    """A run from the compile cache needs no module file: placing one (a verified copy of the
    blob, made and removed for every job) was the worker's largest file work for a small job.
    A module gone from the cache meanwhile fails that attempt, and the retry places it."""
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket(), max_jobs=1)
    placed: list[str] = []
    materialize = worker.blobs.materialize

    async def counting(blob_hash: str, *args: object, **kwargs: object) -> object:
        placed.append(blob_hash)
        return await materialize(blob_hash, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.blobs, "materialize", counting)
    jobs = []
    for n in range(2):
        jobs.append(
            await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=n))
        )
        with trio.fail_after(30):
            await origin.jobs.wait(jobs[-1].id)
    assert placed == [jobs[0].spec.module.hash]  # the first job's, to compile; not the second's
    assert all(job.state is JobState.SUCCEEDED for job in origin.jobs.store.list())


async def test_a_claim_of_several_jobs_and_a_report_with_the_next_are_one_commit_each(
    tmp_path,
) -> None:
    """A commit is the store's largest cost per change: a claim that fills three slots, and a
    report that takes the next job, each commit once."""
    origin, worker = "0" * 64, "1" * 64
    with JobStore(tmp_path / "jobs.db") as store:
        control = origin_control(store)
        jobs = [store.submit(origin, job_spec(origin)) for _ in range(4)]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        claim = model.ClaimRequest(
            job_id=jobs[0].id, worker=worker, start=True, instead=["wasi"], more=2
        )
        grant = await control.answer(worker, claim)
        assert isinstance(grant, model.ClaimGrant) and len(grant.more) == 2
        assert statements.count("COMMIT") == 1
        statements.clear()
        report = model.Report(
            job_id=jobs[0].id, lease_token=grant.lease_token, ok=True, next=["wasi"]
        )
        ack = await control.answer(worker, report)
        assert isinstance(ack, model.ReportAck) and ack.grant is not None
        assert ack.grant.job.id == jobs[3].id
        assert statements.count("COMMIT") == 1
        store._db.set_trace_callback(None)
        assert [store.get(j.id).state for j in jobs] == [  # type: ignore[union-attr]
            JobState.SUCCEEDED,
            JobState.RUNNING,
            JobState.RUNNING,
            JobState.RUNNING,
        ]


async def test_a_run_folder_is_emptied_and_reused_by_the_next_run(start_node) -> None:
    """Making and removing a run's half dozen folders cost more file system calls than the rest
    of a small job; an emptied folder is renamed for the next run instead, with nothing of the
    run before left in it."""
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket(), max_jobs=1)
    work = worker.settings.data_dir / "work"
    command = JobSubmission(module=EXAMPLES / "command.wat", args=["0", "x"])  # writes /out files
    first = await origin.jobs.submit_files(command)
    with trio.fail_after(30):
        done = await origin.jobs.wait(first.id)
    assert done is not None and done.state is JobState.SUCCEEDED and done.outputs, done
    [spare] = await recycled(work)
    assert sorted(p.relative_to(spare).as_posix() for p in spare.rglob("*")) == [
        "in",
        "out",
        "scratch",
        "scratch/streams",
    ]
    inode = spare.stat().st_ino
    second = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=2))
    with trio.fail_after(30):
        done = await origin.jobs.wait(second.id)
    assert done is not None and done.result == 2
    [spare] = await recycled(work)
    assert spare.stat().st_ino == inode  # the same folder served both runs


async def recycled(work: Path) -> list[Path]:
    """The work folder's entries once the last run's folder is back among the spares (the
    worker does that after its report, so after the job has ended)."""
    with trio.fail_after(10):
        while not all(p.name.startswith(".spare-") for p in work.iterdir()):
            await trio.sleep(0.01)
    return list(work.iterdir())


async def counted_streams(
    start_node, monkeypatch, one_reply_per_stream: bool = False
) -> tuple[object, list[object], list[str]]:
    """An origin (answering one request per stream, as older ones did, if asked) with a worker
    of one slot, and the streams and requests the origin gets from then on."""
    origin = await start_node(max_jobs=0)
    control = origin.jobs.control
    streams: list[object] = []
    requests: list[str] = []
    handle_stream, answer = control.handle_stream, control.answer

    async def older(connection: iroh.Connection, bi: iroh.BiStream) -> None:
        request = await recv_model(bi.recv(), control_message, MAX_CONTROL_FRAME)
        await send_model(bi.send(), await control.answer(remote_node_id(connection), request))
        await bi.send().finish()

    async def counting_streams(connection: iroh.Connection, bi: iroh.BiStream) -> None:
        streams.append(bi)
        await (older if one_reply_per_stream else handle_stream)(connection, bi)

    async def counting_requests(peer: str, request: model.ControlMessage) -> model.ControlMessage:
        requests.append(request.type)
        return await answer(peer, request)

    monkeypatch.setattr(control, "handle_stream", counting_streams)  # before the worker dials
    monkeypatch.setattr(control, "answer", counting_requests)
    await start_node(join=origin.join_ticket(), max_jobs=1)
    for n in range(4):
        await run_echo(origin, n)
    return origin, streams, requests


async def run_echo(origin, n: int) -> None:
    job = await origin.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=n))
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED, done


async def test_a_worker_sends_its_requests_on_streams_it_keeps_open(
    start_node, monkeypatch
) -> None:
    """Opening a stream per request cost more calls through the bindings than the request."""
    _, streams, requests = await counted_streams(start_node, monkeypatch)
    assert len(requests) >= 8 and len(streams) <= 2, (requests, len(streams))


async def test_an_origin_that_ends_each_stream_after_a_reply_still_answers_all(
    start_node, monkeypatch
) -> None:
    """As older origins do: the worker finds its kept stream ended and asks on a new one."""
    _, streams, requests = await counted_streams(start_node, monkeypatch, True)
    assert len(streams) == len(requests)


async def test_a_report_reads_its_job_once_and_only_its_lease_holder_may_send_it(
    tmp_path,
) -> None:
    """Whether the peer holds the lease is checked on the record the report applies to (it was
    read twice: 0.05-0.1 ms of the origin's CPU per request); another member with the token, or
    with an unknown job, is told the lease expired."""
    origin, worker, other = "0" * 64, "1" * 64, "2" * 64
    with JobStore(tmp_path / "jobs.db") as store:
        control = origin_control(store)
        job = store.submit(origin, job_spec(origin))
        grant = await control.answer(worker, model.ClaimRequest(job_id=job.id, worker=worker))
        assert isinstance(grant, model.ClaimGrant)
        report = model.Report(job_id=job.id, lease_token=grant.lease_token, ok=True, result=1)
        refused = await control.answer(other, report)
        assert refused == model.ReportRefused(reason="lease expired")
        unknown = report.model_copy(update={"job_id": model.new_job_id()})
        assert await control.answer(worker, unknown) == model.ReportRefused(reason="lease expired")
        assert store.get(job.id).state is JobState.CLAIMED  # type: ignore[union-attr]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        assert await control.answer(worker, report) == model.ReportAck()
        store._db.set_trace_callback(None)
        assert sum("FROM jobs WHERE id" in sql for sql in statements) == 1, statements


async def test_an_origin_ends_a_kept_stream_left_idle_and_the_worker_asks_on_a_new_one(
    start_node, monkeypatch
) -> None:
    """A member's idle streams must not pile up at the origin (they waited for ever)."""
    monkeypatch.setattr(control_module, "STREAM_IDLE_S", 0.2)
    origin = await start_node(max_jobs=0)
    control = origin.jobs.control
    opened, ended = [], []
    handle_stream = control.handle_stream

    async def counting(connection: iroh.Connection, bi: iroh.BiStream) -> None:
        opened.append(bi)
        await handle_stream(connection, bi)
        ended.append(bi)

    monkeypatch.setattr(control, "handle_stream", counting)
    await start_node(join=origin.join_ticket(), max_jobs=1)
    for n in range(2):
        await run_echo(origin, n)
        with trio.fail_after(30):  # the origin ends the streams the worker left idle
            while not (opened and len(ended) == len(opened)):
                await trio.sleep(0.01)
    assert len(opened) >= 2  # the second job came on a stream opened after the first ended


async def test_a_slow_origin_is_asked_once_not_again_on_every_kept_stream() -> None:
    """A timeout is the origin's state, not the stream's: asking again on each of the kept
    streams waited 10 s per stream (up to ~170 s for one request)."""
    asked: list[object] = []
    connection = object()

    class SlowChannel:
        def __init__(self) -> None:
            self.connection = connection
            self.idle_since = trio.current_time()

        async def exchange(self, request: model.ControlMessage) -> model.ControlMessage:
            asked.append(self)
            raise FrameError("no answer within 10 s")

        async def close(self) -> None:
            pass

    async def request(addr, alpn, exchange, *, idempotent: bool) -> model.ControlMessage:
        return await exchange(connection)

    client = ControlClient(request)
    origin = PeerAddr(node_id=NodeId("a" * 64), relay_url=None, direct_addresses=[])
    client._idle[origin.node_id] = [SlowChannel() for _ in range(3)]  # type: ignore[misc]
    with pytest.raises(ControlError, match="no answer within 10 s"):
        await client.ask(origin, model.Renew(job_id=model.new_job_id(), lease_token="e3" * 16))
    assert len(asked) == 1
