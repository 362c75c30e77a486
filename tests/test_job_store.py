"""Job records and the SQLite job store: lifecycle, leases, cross-process claims, durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from p2pnode.jobs.control import MAX_CONTROL_FRAME
from p2pnode.jobs.model import (
    MAX_HISTORY,
    MAX_LOG_CHARS,
    MAX_RESULT_BYTES,
    BlobRef,
    ClaimGrant,
    ClaimRequest,
    Job,
    JobSpec,
    JobState,
    Limits,
    Renew,
    Report,
    ReportAck,
    ReportRefused,
    Requirements,
    control_message,
)
from p2pnode.jobs.store import ClaimRefused, JobStore, LeaseRefused, Refused

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "0" * 64
OTHER = "f" * 64
W1 = "1" * 64
W2 = "2" * 64
BASE = 1.0  # back-off base in these tests


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def blob(n: int = 0) -> BlobRef:
    return BlobRef(hash=f"{n:064x}", size=10, root=f"{n + 1:064x}", providers=[ORIGIN])


def spec(**kw: object) -> JobSpec:
    return JobSpec.model_validate({"module": blob(), "input": {"n": 1}, **kw})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock):
    with JobStore(tmp_path / "jobs.db", clock=clock, backoff_base=BASE, backoff_cap=4.0) as s:
        yield s


def test_submit_get_list(store: JobStore, clock: FakeClock) -> None:
    jobs = []
    for i in range(3):
        jobs.append(store.submit(ORIGIN, spec(workflow=f"wf{i}")))
        clock.advance(1)
    flawless = store.submit(ORIGIN, spec(requirements=Requirements(executor="flawless")))

    first = jobs[0]
    assert first.id.startswith("job_") and len(first.id) == 30
    assert first.state is JobState.PENDING and first.attempts == 0 and first.lease is None
    assert store.get(first.id) == first
    assert store.get("job_" + "0" * 26) is None
    assert [j.id for j in store.list()] == [flawless.id, *(j.id for j in reversed(jobs))]
    assert len(store.list(limit=2)) == 2
    assert store.list(state=JobState.CLAIMED) == []
    assert store.list(origin=OTHER) == []
    assert [j.id for j in store.claimable(["wasi"])] == [j.id for j in jobs]
    assert [j.id for j in store.claimable(["flawless"])] == [flawless.id]
    assert store.claimable([]) == []
    assert store.live_ids() == {j.id for j in [*jobs, flawless]}
    assert store.live_ids(origin=OTHER) == set()


def test_lifecycle_success(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec())
    claimed = store.claim(job.id, W1, lease_s=10)
    assert claimed.state is JobState.CLAIMED and claimed.attempts == 1 and claimed.worker == W1
    assert claimed.lease is not None and claimed.lease.worker == W1
    token = claimed.lease.token
    assert len(token) == 32

    with pytest.raises(ClaimRefused, match="job already claimed"):
        store.claim(job.id, W2, lease_s=10)
    with pytest.raises(LeaseRefused, match="lease expired"):
        store.mark_running(job.id, "0" * 32)

    assert store.mark_running(job.id, token).state is JobState.RUNNING
    assert store.mark_running(job.id, token).state is JobState.RUNNING  # idempotent
    clock.advance(1)
    done = store.complete(
        job.id, token, ok=True, result={"y": 2}, logs="hi", outputs={"out.txt": blob(7)}
    )
    assert done.state is JobState.SUCCEEDED and done.result == {"y": 2}
    assert done.outputs == {"out.txt": blob(7)} and done.logs == "hi"
    assert done.lease is None and done.finished_at == clock.now
    assert store.get(job.id) == done
    assert [e.state for e in done.history] == ["pending", "claimed", "running", "succeeded"]

    with pytest.raises(LeaseRefused, match="job already succeeded"):
        store.complete(job.id, token, ok=True)
    with pytest.raises(ClaimRefused, match="job already succeeded"):
        store.claim(job.id, W2, lease_s=10)
    assert store.live_ids() == set()


def test_updated_at_strictly_increases(store: JobStore) -> None:
    job = store.submit(ORIGIN, spec())
    claimed = store.claim(job.id, W1, lease_s=10)
    assert claimed.lease is not None
    renewed = store.renew(job.id, claimed.lease.token, lease_s=10)
    assert job.updated_at < claimed.updated_at < renewed.updated_at


def test_renew_keeps_lease(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec())
    lease = store.claim(job.id, W1, lease_s=10).lease
    assert lease is not None
    for _ in range(5):
        clock.advance(8)
        assert store.expire_leases() == []
        renewed = store.renew(job.id, lease.token, lease_s=10)
        assert renewed.lease is not None and renewed.lease.expires_at == clock.now + 10
    assert store.get(job.id).state is JobState.CLAIMED  # type: ignore[union-attr]
    clock.advance(10)  # exactly at expiry: lapsed
    with pytest.raises(LeaseRefused, match="lease expired"):
        store.renew(job.id, lease.token, lease_s=10)


def test_lease_expiry_backoff_and_late_report(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec())
    first = store.claim(job.id, W1, lease_s=5).lease
    assert first is not None
    store.mark_running(job.id, first.token)
    clock.advance(4)
    assert store.expire_leases() == []
    clock.advance(2)
    # Lapsed but not yet swept: already refused.
    with pytest.raises(LeaseRefused, match="lease expired"):
        store.complete(job.id, first.token, ok=True, result=1)

    [lapsed] = store.expire_leases()
    assert lapsed.id == job.id and lapsed.state is JobState.PENDING
    assert lapsed.attempts == 1 and lapsed.lease is None
    assert lapsed.not_before == clock.now + BASE
    assert store.get(job.id) == lapsed
    assert store.expire_leases() == []

    with pytest.raises(LeaseRefused, match="lease expired"):
        store.complete(job.id, first.token, ok=True, result=1)
    with pytest.raises(LeaseRefused, match="lease expired"):
        store.renew(job.id, first.token, lease_s=5)
    with pytest.raises(ClaimRefused, match="backing off"):
        store.claim(job.id, W2, lease_s=5)
    assert store.claimable(["wasi"]) == []

    clock.advance(BASE)
    assert [j.id for j in store.claimable(["wasi"])] == [job.id]
    second = store.claim(job.id, W2, lease_s=5)
    assert second.attempts == 2 and second.worker == W2
    assert second.lease is not None and second.lease.token != first.token
    with pytest.raises(LeaseRefused, match="lease expired"):
        store.complete(job.id, first.token, ok=True, result=1)
    assert store.complete(job.id, second.lease.token, ok=True, result=2).result == 2


def test_attempts_exhausted_by_expiry(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec(max_attempts=2))
    store.claim(job.id, W1, lease_s=5)
    clock.advance(5)
    [j] = store.expire_leases()
    assert j.state is JobState.PENDING
    clock.advance(BASE)
    store.claim(job.id, W1, lease_s=5)
    clock.advance(5)
    [j] = store.expire_leases()
    assert j.state is JobState.FAILED and j.attempts == 2
    assert j.finished_at == clock.now and j.error and "lease expired" in j.error
    with pytest.raises(ClaimRefused, match="job already failed"):
        store.claim(job.id, W1, lease_s=5)


def test_failing_report_retried_then_failed(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec(max_attempts=4))
    delays = []
    for _ in range(3):
        lease = store.claim(job.id, W1, lease_s=5).lease
        assert lease is not None
        j = store.complete(job.id, lease.token, ok=False, error="boom", logs="trace")
        assert j.state is JobState.PENDING and j.error == "boom" and j.logs == "trace"
        delays.append(j.not_before - clock.now)
        clock.advance(j.not_before - clock.now)
    assert delays == [1.0, 2.0, 4.0]
    assert store.backoff(10) == 4.0  # capped

    lease = store.claim(job.id, W1, lease_s=5).lease
    assert lease is not None
    j = store.complete(job.id, lease.token, ok=False, error="boom again")
    assert j.state is JobState.FAILED and j.attempts == 4 and j.error == "boom again"
    assert j.finished_at == clock.now


def test_cancel(store: JobStore) -> None:
    pending = store.submit(ORIGIN, spec())
    running = store.submit(ORIGIN, spec())
    done = store.submit(ORIGIN, spec())

    assert store.cancel(pending.id).state is JobState.CANCELLED
    assert store.cancel(pending.id).state is JobState.CANCELLED  # idempotent
    with pytest.raises(ClaimRefused, match="job cancelled"):
        store.claim(pending.id, W1, lease_s=5)

    lease = store.claim(running.id, W1, lease_s=5).lease
    assert lease is not None
    store.mark_running(running.id, lease.token)
    cancelled = store.cancel(running.id)
    assert cancelled.lease is None and cancelled.finished_at is not None
    with pytest.raises(LeaseRefused, match="job cancelled"):
        store.renew(running.id, lease.token, lease_s=5)
    with pytest.raises(LeaseRefused, match="job cancelled"):
        store.complete(running.id, lease.token, ok=True)
    assert store.expire_leases() == []

    lease = store.claim(done.id, W1, lease_s=5).lease
    assert lease is not None
    store.complete(done.id, lease.token, ok=True)
    with pytest.raises(Refused, match="job already succeeded"):
        store.cancel(done.id)
    with pytest.raises(Refused, match="unknown job"):
        store.cancel("job_" + "0" * 26)


def test_lease_token_is_redacted_outside_the_store(store: JobStore) -> None:
    job = store.submit(ORIGIN, spec())
    claimed = store.claim(job.id, W1, lease_s=5)
    assert claimed.lease is not None
    token = claimed.lease.token
    assert token not in claimed.model_dump_json()
    assert token not in repr(claimed)
    assert store.get(job.id).lease.token == token  # type: ignore[union-attr]

    grant = ClaimGrant(job=claimed, lease_token=token, lease_expires_in=5)
    parsed = control_message.validate_json(grant.model_dump_json())
    assert isinstance(parsed, ClaimGrant) and parsed.lease_token == token
    assert parsed.job.lease is not None and parsed.job.lease.token == ""


def test_unreadable_and_cached_rows_never_stop_the_store(
    tmp_path: Path, clock: FakeClock, caplog
) -> None:
    """Rows an older version cached from gossip are dropped on open; a row that no longer parses
    is quarantined on open (logged once), so no read, sweep or claim ever meets it."""
    path = tmp_path / "jobs.db"
    with JobStore(path, clock=clock) as store:
        good = store.submit(ORIGIN, spec())
    bad_id, cached_id = "job_" + "1" * 26, "job_" + "2" * 26
    db = sqlite3.connect(path)
    with db:
        for job_id, local, body in [
            (bad_id, 1, '{"id": 1}'),
            (cached_id, 0, good.model_dump_json()),
        ]:
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, 'running', 'wasi', 0, ?, 0, 0, ?)",
                (job_id, ORIGIN, local, clock() - 1, body),
            )
    db.close()
    with JobStore(path, clock=clock) as store:
        assert [j.id for j in store.list()] == [good.id]
        assert store.get(bad_id) is None and store.get(cached_id) is None
        assert store.expire_leases() == []
        assert store.expire_leases() == []
        with pytest.raises(ClaimRefused, match="unknown job"):
            store.claim(bad_id, W1, lease_s=5)
    assert sum(bad_id in r.getMessage() for r in caplog.records) == 1  # quarantined on open


def test_release_hands_the_job_back_at_once(store: JobStore, clock: FakeClock) -> None:
    job = store.submit(ORIGIN, spec())
    claimed = store.claim(job.id, W1, lease_s=5)
    token = claimed.lease.token  # type: ignore[union-attr]
    with pytest.raises(LeaseRefused):
        store.release(job.id, "0" * 32)
    released = store.release(job.id, token)
    assert released.state is JobState.PENDING and released.attempts == 0 and released.lease is None
    assert [j.id for j in store.claimable(["wasi"])] == [job.id]
    with pytest.raises(LeaseRefused):
        store.renew(job.id, token, lease_s=5)  # the old lease is gone

    again = store.claim(job.id, W2, lease_s=5)
    store.complete(job.id, again.lease.token, ok=False, error="boom")  # type: ignore[union-attr]
    with pytest.raises(ClaimRefused) as refused:
        store.claim(job.id, W1, lease_s=5)
    assert refused.value.retry_after == pytest.approx(BASE)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "a\\b", "a\x00b", "x" * 129])
def test_artifact_names_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        spec(artifacts={name: blob()})
    if name in ("a/b", "a\\b", "x" * 129):
        return  # legal output names: outputs are relative paths (tests/test_exec_outputs.py)
    with pytest.raises(ValidationError):
        Report(job_id="job_" + "0" * 26, lease_token="0" * 32, ok=True, outputs={name: blob()})


def test_artifact_names_accepted() -> None:
    names = ["input.txt", "a..b", ".hidden", "x" * 128, "data-1_2.bin"]
    assert list(spec(artifacts={n: blob() for n in names}).artifacts) == names


def test_model_bounds() -> None:
    with pytest.raises(ValidationError):
        BlobRef(hash="zz" * 32, size=1, root="0" * 64)
    with pytest.raises(ValidationError):
        ClaimRequest(job_id="job_1", worker=W1)
    with pytest.raises(ValidationError):
        spec(requirements={"executor": "docker"})
    assert Limits() == Limits(time_s=60, memory_bytes=256 * 1024 * 1024, fuel=10**12)

    huge = "x" * (MAX_LOG_CHARS * 2)
    report = Report(job_id="job_" + "0" * 26, lease_token="0" * 32, ok=False, logs=huge)
    assert len(report.logs) == MAX_LOG_CHARS and report.logs.startswith("[truncated]")

    job = Job(id="job_" + "0" * 26, origin=ORIGIN, spec=spec(), created_at=0, updated_at=0)
    for i in range(MAX_HISTORY * 2):
        job.record(i, "n" * 1000)
    assert len(job.history) == MAX_HISTORY and job.history[-1].at == MAX_HISTORY * 2 - 1
    assert len(job.history[0].note) == 200


def test_control_messages_round_trip() -> None:
    job_id = "job_" + "0" * 26
    messages = [
        ClaimRequest(job_id=job_id, worker=W1),
        Renew(job_id=job_id, lease_token="a" * 32),
        Report(
            job_id=job_id, lease_token="a" * 32, ok=True, result=[1, "x"], outputs={"o": blob()}
        ),
        ReportAck(),
        ReportRefused(reason="lease expired"),
    ]
    for msg in messages:
        assert control_message.validate_json(msg.model_dump_json()) == msg
    with pytest.raises(ValidationError):
        control_message.validate_json(json.dumps({"type": "nope"}))
    # A newer node's field is ignored (tolerant reader: README "Upgrades and compatibility").
    assert control_message.validate_json(json.dumps({"type": "report_ack", "x": 1})) == ReportAck()


def _python(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-c", textwrap.dedent(code), *args], text=True, env=env, cwd=ROOT, **kw
    )


CLAIMER = """
    import json, sys
    from pathlib import Path
    from p2pnode.jobs.store import ClaimRefused, JobStore
    store = JobStore(Path(sys.argv[1]))
    ids = json.loads(sys.argv[2])
    if int(sys.argv[3]) % 2:
        ids.reverse()
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    won = []
    for job_id in ids:
        try:
            won.append(store.claim(job_id, sys.argv[4], lease_s=60).id)
        except ClaimRefused:
            pass
    print(json.dumps(won), flush=True)
"""


def test_claim_exactly_once_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with JobStore(path) as store:
        ids = [store.submit(ORIGIN, spec()).id for _ in range(40)]

    workers = [f"{i + 1:064x}" for i in range(6)]
    procs = []
    for i, worker in enumerate(workers):
        args = (str(path), json.dumps(ids), str(i), worker)
        procs.append(_python(CLAIMER, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    won = {}
    for worker, p in zip(workers, procs, strict=True):
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0
        won[worker] = json.loads(out)

    granted = [job_id for ids_won in won.values() for job_id in ids_won]
    assert sorted(granted) == sorted(ids)  # every job granted, none twice
    with JobStore(path) as store:
        for worker, job_ids in won.items():
            for job_id in job_ids:
                job = store.get(job_id)
                assert job is not None and job.state is JobState.CLAIMED
                assert job.worker == worker and job.attempts == 1


SUBMITTER = """
    import sys
    from pathlib import Path
    from p2pnode.jobs.model import BlobRef, JobSpec
    from p2pnode.jobs.store import JobStore
    store = JobStore(Path(sys.argv[1]))
    spec = JobSpec(module=BlobRef(hash="0" * 64, size=1, root="1" * 64))
    while True:
        print(store.submit("0" * 64, spec).id, flush=True)
"""


def test_submitted_jobs_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    proc = _python(SUBMITTER, str(path), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    printed = [proc.stdout.readline().strip() for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with JobStore(path) as store:
        for job_id in printed:
            job = store.get(job_id)
            assert job is not None and job.state is JobState.PENDING


def test_report_result_is_bounded() -> None:
    """A worker's report carries at most MAX_RESULT_BYTES of result; the frame limit is sized for
    it."""
    fits = Report(
        job_id="job_" + "1" * 26,
        lease_token="0" * 32,
        ok=True,
        result="x" * (MAX_RESULT_BYTES - 2),
        logs="\x00" * MAX_LOG_CHARS,
    )
    assert len(fits.model_dump_json()) < MAX_CONTROL_FRAME
    with pytest.raises(ValidationError, match="exceeds"):
        Report(
            job_id="job_" + "1" * 26, lease_token="0" * 32, ok=True, result="x" * MAX_RESULT_BYTES
        )


def test_the_oldest_claimable_jobs_are_found_without_sorting_every_pending_one(
    store: JobStore,
) -> None:
    """A claim (and every report that takes the next job) asks for the oldest claimable jobs:
    with a backlog, sorting all pending jobs each time cost a millisecond per 2,000 of them."""
    store.submit_many(ORIGIN, [(f"job_{n:026d}", spec()) for n in range(20)])
    queries: list[str] = []
    store._db.set_trace_callback(queries.append)
    oldest = store.claimable_ids(["wasi"], 3, origin=ORIGIN)
    newest = store.list(JobState.PENDING, 1, origin=ORIGIN)
    store._db.set_trace_callback(None)
    assert [job_id for job_id, _ in oldest] == [f"job_{n:026d}" for n in range(3)]
    assert [job.id for job in newest] == [f"job_{19:026d}"]
    for sql in queries:
        plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "TEMP B-TREE" not in plan, (sql, plan)
