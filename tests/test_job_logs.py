"""Live job logs (#13.4) between in-process nodes: what a running job writes reaches its origin's
followers while it runs, the rest comes from its output blobs once it ended, the origin's buffer
stays bounded whatever the lease holder sends, and nobody else can add to it."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import trio

from p2pnode.jobs import model
from p2pnode.jobs.logs import BUFFER_CHARS, JobLogs, LogBuffer, read
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from p2pnode.jobs.worker import _read_chunk
from tests.test_jobs_hardening import api_client, running_on, wait_for

MODULES = Path(__file__).resolve().parent / "modules"
HOLD = MODULES / "hold.wat"
"""Prints a line to stdout and one to stderr, then waits for `release()`."""


def release(worker, job_id: str, attempt: int = 1) -> None:
    """Let `hold.wat` finish: the file it waits for, in the run's /tmp on the worker."""
    tmp = worker.settings.data_dir / "work" / f"{job_id}-{attempt}" / "scratch" / "tmp"
    (tmp / "release").write_bytes(b"")


async def cluster(start_node, members: int = 1):
    origin = await start_node(max_jobs=0)
    others = [await start_node(join=origin.join_ticket()) for _ in range(members)]
    return origin, others


async def held_job(origin, worker) -> model.Job:
    job = await origin.jobs.submit_files(JobSubmission(module=HOLD, args=[], max_attempts=1))
    await running_on(worker, job.id)
    return job


def texts(events: list[dict]) -> dict[str, str]:
    joined = {"stdout": "", "stderr": ""}
    for event in events:
        if "stream" in event:
            joined[event["stream"]] += event["text"]
    return joined


async def test_follow_shows_output_while_the_job_runs_then_the_rest(start_node) -> None:
    origin, (worker,) = await cluster(start_node)
    job = await held_job(origin, worker)
    events: list[dict] = []
    seen_hello = trio.Event()

    async def follow() -> None:
        async with api_client(origin, timeout=60) as client:
            url = f"/jobs/{job.id}/logs"
            async with client.stream("GET", url, params={"follow": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    events.append(json.loads(line))
                    if "hello from the guest" in texts(events)["stdout"]:
                        seen_hello.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await seen_hello.wait()
            assert origin.jobs.store.get(job.id).state == JobState.RUNNING
            release(worker, job.id)
    # Each byte exactly once: live while it ran, nothing repeated from the output blobs.
    assert texts(events) == {"stdout": "hello from the guest\n", "stderr": "waiting for release\n"}
    assert events[-1] == {"state": "succeeded"}
    assert len(origin.jobs.logs) == 0  # the buffer went with the job

    async with api_client(origin) as client:  # once it ended: all of it, from the outputs
        whole = await client.get(f"/jobs/{job.id}/logs")
        only_err = await client.get(f"/jobs/{job.id}/logs", params={"stream": "stderr"})
        missing = await client.get("/jobs/job_01M8CRH8D5H83H6EVKWEVXEHTJ/logs")
    lines = [json.loads(line) for line in whole.text.splitlines()]
    assert texts(lines) == texts(events)
    assert texts([json.loads(line) for line in only_err.text.splitlines()])["stdout"] == ""
    assert missing.status_code == 404


async def test_a_workflow_shows_its_stderr_live_and_its_logs_once_ended(start_node) -> None:
    """A workflow's stdout is its result, so only its stderr is live; once ended, the logs."""
    origin, (worker,) = await cluster(start_node)
    job = await origin.jobs.submit_files(JobSubmission(module=HOLD, max_attempts=1))
    await running_on(worker, job.id)
    async with api_client(origin, timeout=60) as client:
        url = f"/jobs/{job.id}/logs"
        events: list[dict] = []
        async with client.stream("GET", url, params={"follow": True}) as response:
            async for line in response.aiter_lines():
                events.append(json.loads(line))
                if len(events) == 1:
                    assert events[0] == {"stream": "stderr", "text": "waiting for release\n"}
                    assert origin.jobs.store.get(job.id).state == JobState.RUNNING
                    release(worker, job.id)
        assert texts(events) == {"stdout": "", "stderr": "waiting for release\n"}
        assert events[-1] == {"state": "failed"}  # "hello from the guest" is no JSON result
        ended = await client.get(url)
    assert texts([json.loads(line) for line in ended.text.splitlines()]) == {
        "stdout": "",
        "stderr": "waiting for release\n",
    }


async def test_a_flood_stays_bounded_and_only_the_lease_holder_is_heard(start_node) -> None:
    origin, (worker, other) = await cluster(start_node, members=2)
    job = await held_job(origin, worker)
    lease = origin.jobs.store.get(job.id).lease
    assert lease is not None and lease.token

    def chunk(offset: int, text: str) -> model.LogChunk:
        return model.LogChunk(
            job_id=job.id,
            lease_token=lease.token,
            stream="stdout",
            offset=offset,
            size=len(text),
            text=text,
        )

    forged = await other.jobs._client.ask(other.peer_addr(origin.id), chunk(0, "not mine\n"))
    assert isinstance(forged, model.RenewRefused)

    big = "x" * model.MAX_LOG_CHUNK
    to_origin = worker.peer_addr(origin.id)
    for index in range(3 * BUFFER_CHARS // len(big)):
        reply = await worker.jobs._client.ask(to_origin, chunk(index * len(big), big))
        assert isinstance(reply, model.Ack)
    assert origin.jobs.logs.buffer(job.id).held <= BUFFER_CHARS

    async with api_client(origin) as client:
        response = await client.get(f"/jobs/{job.id}/logs")
    events = [json.loads(line) for line in response.text.splitlines()]
    assert "not mine" not in response.text
    assert "chunks of live output dropped" in events[0]["note"]
    assert len(texts(events)["stdout"]) <= BUFFER_CHARS
    assert events[-1] == {"state": "running"}
    release(worker, job.id)
    await wait_for(lambda: origin.jobs.store.get(job.id).state.terminal, "the job to end")
    assert len(origin.jobs.logs) == 0


async def test_what_a_buffer_holds_is_bounded_in_memory_not_in_characters() -> None:
    # Forged chunks of 16384 characters outside the BMP: 64 KiB of memory each.
    tracemalloc.start()
    try:
        buffer = LogBuffer(limit=1 << 20)
        for index in range(100):
            text = f"{index:05}" + "\U0001f600" * (model.MAX_LOG_CHUNK - 5)
            buffer.append(1, model.LogChunk.model_validate(
                {"job_id": "job_01M8CRH8D5H83H6EVKWEVXEHTJ", "lease_token": "0" * 32,
                 "stream": "stdout", "offset": 0, "size": 0, "text": text}
            ))  # fmt: skip
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert buffer.held <= 1 << 20
    assert held < 1.2 * (1 << 20)  # 5.7 MiB when the text was counted by its length


async def test_a_reader_is_told_what_was_dropped_and_keeps_up() -> None:
    buffer = LogBuffer(limit=1000)

    def add(text: str) -> None:
        buffer.append(1, model.LogChunk.model_validate(
            {"job_id": "job_01M8CRH8D5H83H6EVKWEVXEHTJ", "lease_token": "0" * 32,
             "stream": "stderr", "offset": 0, "size": len(text), "text": text}
        ))  # fmt: skip

    for index in range(20):
        add(f"{index:03}" * 100)
    assert buffer.held <= 1000
    got = [item async for item in read(buffer, follow=False)]
    assert got[0] == 20 - len(got[1:])
    assert [piece.text[:3] for piece in got[1:]] == [
        f"{i:03}" for i in range(20 - len(got) + 1, 20)
    ]

    async def closer() -> None:
        add("last")
        buffer.close()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            followed = []
            nursery.start_soon(closer)
            async for item in read(buffer, follow=True):
                followed.append(item)
    assert not isinstance(followed[-1], int) and followed[-1].text == "last"


def test_a_chunk_ends_between_characters(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    path.write_bytes("é".encode() * model.MAX_LOG_CHUNK)  # two bytes each
    assert _read_chunk(path, 0) == "é".encode() * (model.MAX_LOG_CHUNK // 2)
    path.write_bytes(b"ab\xe2\x82")  # a euro sign cut short: held back until it is whole
    assert _read_chunk(path, 0) == b"ab"
    path.write_bytes(b"ab\xe2\x82\xac")
    assert _read_chunk(path, 0) == "ab€".encode()
    assert _read_chunk(tmp_path / "none", 0) == b""


def test_all_jobs_together_stay_within_the_total() -> None:
    """Each job's 1 MiB bound alone lets memory grow with the number of running jobs: the
    buffers share one total, and the first jobs to fill up shrink when more start."""
    logs = JobLogs(limit=10_000, total=30_000)
    ids = [f"job_01M8CRH8D5H83H6EVKWEVXEHT{index}" for index in range(10)]

    def add(job_id: str) -> None:
        logs.append(job_id, 1, model.LogChunk.model_validate(
            {"job_id": job_id, "lease_token": "0" * 32, "stream": "stdout", "offset": 0,
             "size": 2000, "text": "x" * 2000}
        ))  # fmt: skip
        assert logs.held == sum(logs.buffer(i).held for i in ids[: len(logs)])
        assert logs.held <= 30_000

    for job_id in ids[:2]:
        for _ in range(10):
            add(job_id)
    assert logs.buffer(ids[0]).held > 3_000  # alone, a job keeps up to its own limit
    for job_id in ids[2:]:
        for _ in range(3):
            add(job_id)
    assert all(logs.buffer(job_id).held <= 3_000 for job_id in ids)
    before = logs.held
    logs.ended(ids[0])
    assert logs.held < before and len(logs) == 9
