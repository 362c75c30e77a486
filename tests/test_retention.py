"""Retention (#13.8): `job rm` and the retention setting release exactly the blobs a job holds
(by its tags), so GC reclaims them while a person's pin or another job's hold keeps a blob."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

import p2pnode.node
from p2pnode.api.app import serve_node_api
from p2pnode.config import Settings
from p2pnode.jobs.model import (
    INLINE_INPUT_BYTES,
    JobState,
    job_id_time,
    job_tag,
    new_job_id,
    tag_job,
)
from p2pnode.jobs.service import JobSubmission, SubmissionError
from p2pnode.node import Node
from tests.test_api_files import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SLOW = Path(__file__).resolve().parent / "modules" / "slow.wat"


async def run_job(node, submission: JobSubmission):
    job = await node.jobs.submit_files(submission)
    with trio.fail_after(60):
        done = await node.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    return done


async def wait_for(condition, what: str) -> None:
    with trio.fail_after(30):
        while not condition():
            await trio.sleep(0.05)


def held_blobs(job) -> set[str]:
    return {
        job.spec.module.hash,
        *(ref.hash for ref in job.spec.artifacts.values()),
        *(ref.hash for ref in job.outputs.values()),
        *([job.spec.input_blob.hash] if job.spec.input_blob else []),
    }


def test_job_tags_name_their_job() -> None:
    job_id = new_job_id(1_700_000_000.123)
    assert abs(job_id_time(job_id) - 1_700_000_000.123) < 0.001
    assert tag_job(job_tag(job_id, "artifact/a/b")) == job_id
    assert tag_job("job/not-a-job/module") is None
    assert tag_job("mine") is None


async def test_job_rm_frees_its_blobs_for_gc_but_keeps_pins_and_other_jobs(
    start_node, tmp_path: Path
) -> None:
    node = await start_node(max_jobs=1)
    (tmp_path / "mine.txt").write_text("a person's file, pinned")
    (tmp_path / "own.txt").write_text("an artifact only this job holds")
    pinned = await node.blobs.add(tmp_path / "mine.txt")
    first = await run_job(
        node,
        JobSubmission(
            module=EXAMPLES / "command.wat",
            args=["0", "hello"],
            artifacts={"own": tmp_path / "own.txt"},
            artifact_blobs={"mine": pinned.hash},
        ),
    )
    second = await run_job(
        node,
        JobSubmission(module=EXAMPLES / "command.wat", args=["0", "again"]),
    )
    big = await run_job(
        node, JobSubmission(module=EXAMPLES / "echo.wat", input="x" * (INLINE_INPUT_BYTES + 1))
    )
    assert first.outputs and first.spec.module.hash == second.spec.module.hash
    assert big.spec.input_blob is not None
    await wait_for(
        lambda: all(node.blobs.store.has(ref.hash) for ref in first.outputs.values()),
        "the outputs to be collected",
    )

    listed = await cli(node, "blob", "ls")
    assert listed.returncode == 0, listed.stderr
    listing = listed.stdout.decode().splitlines()
    (own_row,) = [line for line in listing if line.startswith(first.spec.artifacts["own"].hash)]
    assert own_row.split()[2:] == ["-", first.id]
    (mine_row,) = [line for line in listing if line.startswith(pinned.hash)]
    assert mine_row.split()[2:] == ["pinned", first.id]

    for job in (first, big):
        removed = await cli(node, "job", "rm", job.id)
        assert (removed.returncode, removed.stdout) == (0, f"removed {job.id}\n".encode())
    shown = await cli(node, "job", "show", first.id)
    assert shown.returncode != 0 and first.id in shown.stderr.decode()

    freed = set((await node.collect_garbage()).removed)
    kept = {b.hash for b in await node.blobs.store.list()}
    only_first = held_blobs(first) - held_blobs(second) - {pinned.hash}
    assert first.spec.artifacts["own"].hash in only_first
    assert only_first | {big.spec.input_blob.hash} <= freed
    assert {pinned.hash, *held_blobs(second)} <= kept
    assert not (await node.blobs.store.info(pinned.hash)).tags


async def test_job_rm_refuses_a_running_job_unless_forced(start_node) -> None:
    node = await start_node(max_jobs=1)
    job = await node.jobs.submit_files(
        JobSubmission(module=SLOW, limits={"fuel": 10**12}, max_attempts=1)
    )
    await wait_for(lambda: job.id in node.jobs.worker.running, "the job to run")
    refused = await cli(node, "job", "rm", job.id)
    stderr = refused.stderr.decode()
    assert refused.returncode == 1
    assert stderr.startswith(f"error: cannot remove job {job.id}: job is ")
    assert "--force" in stderr and len(stderr.splitlines()) == 1
    assert node.jobs.store.get(job.id) is not None

    forced = await cli(node, "job", "rm", "--force", job.id)
    assert forced.returncode == 0, forced.stderr
    assert node.jobs.store.get(job.id) is None
    await wait_for(lambda: not node.jobs.worker.running, "the run to stop")


@pytest.fixture
async def clocked_node(tmp_path: Path, nursery, monkeypatch):
    """A node whose job store reads a clock the test moves, its retention pass every 50 ms."""
    monkeypatch.setattr(p2pnode.node, "RETENTION_INTERVAL_S", 0.05)
    offset = [0.0]
    settings = Settings(
        data_dir=tmp_path / "node",
        http_port=0,
        bind="127.0.0.1:0",
        relay="disabled",
        flawless_url="http://127.0.0.1:9",
        job_retention_days=0.001,  # 86.4 s
    )
    node = Node(settings, serve_node_api, clock=lambda: time.time() + offset[0])
    await nursery.start(lambda task_status: node.run(task_status=task_status))
    return node, offset


async def test_retention_removes_only_old_finished_jobs(
    clocked_node, tmp_path: Path, monkeypatch
) -> None:
    node, offset = clocked_node
    for name in ("old", "live", "new", "mine"):
        (tmp_path / f"{name}.txt").write_text(f"{name} artifact")
    pinned = await node.blobs.add(tmp_path / "mine.txt")
    old = await run_job(
        node,
        JobSubmission(
            module=EXAMPLES / "echo.wat",
            input=1,
            artifacts={"a": tmp_path / "old.txt"},
            artifact_blobs={"mine": pinned.hash},
        ),
    )
    live = await node.jobs.submit_files(  # nobody offers flawless here: it stays pending
        JobSubmission(
            module=EXAMPLES / "echo.wat",
            executor="flawless",
            artifacts={"a": tmp_path / "live.txt"},
        )
    )
    steps: list[str] = []  # what retention did to the old job, in order
    drop_tag, delete = node.blobs.drop_tag, node.jobs.store.delete

    async def dropping(tag: str) -> None:
        steps.append("tag" if tag_job(tag) == old.id else "other tag")
        await drop_tag(tag)

    def deleting(job_id: str) -> None:
        steps.append("row" if job_id == old.id else "other row")
        delete(job_id)

    monkeypatch.setattr(node.blobs, "drop_tag", dropping)
    monkeypatch.setattr(node.jobs.store, "delete", deleting)
    offset[0] = 100.0
    new = await run_job(
        node,
        JobSubmission(module=EXAMPLES / "echo.wat", input=2, artifacts={"a": tmp_path / "new.txt"}),
    )

    await wait_for(lambda: node.jobs.store.get(old.id) is None, "retention to remove the old job")
    # Its tags go before its row: a job gone from the store has let go of its blobs.
    assert [s for s in steps if s in ("tag", "row")][-1] == "row" and "tag" in steps
    assert node.jobs.store.get(live.id).state == JobState.PENDING
    assert node.jobs.store.get(new.id).state == JobState.SUCCEEDED
    freed = set((await node.collect_garbage()).removed)
    assert freed == {old.spec.artifacts["a"].hash}
    kept = {b.hash for b in await node.blobs.store.list()}
    assert {pinned.hash, old.spec.module.hash} <= kept  # a pin, and the other jobs' module
    assert {live.spec.artifacts["a"].hash, new.spec.artifacts["a"].hash} <= kept


async def test_retention_drops_old_tags_of_jobs_this_node_does_not_store(clocked_node) -> None:
    """A worker's outputs of another origin's job, or a submission that never completed."""
    node, offset = clocked_node
    old = await node.blobs.store.add_bytes(
        b"an old output", tag=job_tag(new_job_id(time.time()), "output/stdout")
    )
    offset[0] = 100.0
    recent = await node.blobs.store.add_bytes(
        b"a recent output", tag=job_tag(new_job_id(node.jobs.store.now()), "output/stdout")
    )
    with trio.fail_after(30):
        while (await node.blobs.store.info(old.hash)).tags:
            await trio.sleep(0.05)
    assert (await node.collect_garbage()).removed == [old.hash]
    assert (await node.blobs.store.info(recent.hash)).tags == recent.tags


async def test_retention_drops_tags_of_jobs_dated_in_the_future(clocked_node) -> None:
    """Another origin chose the id: one dated a year ahead would otherwise be held forever."""
    node, _ = clocked_node
    future = await node.blobs.store.add_bytes(
        b"a forged output", tag=job_tag(new_job_id(time.time() + 365 * 86400), "output/stdout")
    )
    with trio.fail_after(30):
        while (await node.blobs.store.info(future.hash)).tags:
            await trio.sleep(0.05)
    assert (await node.collect_garbage()).removed == [future.hash]


async def test_a_refused_submission_releases_what_it_tagged(start_node, tmp_path: Path) -> None:
    node = await start_node(max_jobs=0)
    (tmp_path / "a.txt").write_text("added, then the submission is refused")
    with pytest.raises(SubmissionError, match="is not on this node"):
        await node.jobs.submit_files(
            JobSubmission(
                module=EXAMPLES / "echo.wat",
                artifacts={"a": tmp_path / "a.txt"},
                artifact_blobs={"b": "ab" * 32},
            )
        )
    assert node.jobs.store.list() == []
    assert [b.tags for b in await node.blobs.store.list()] == [(), ()]  # module and artifact
    assert len((await node.collect_garbage()).removed) == 2


async def test_a_job_submitted_from_the_cli_frees_its_uploads_when_removed(
    start_node, tmp_path: Path
) -> None:
    """The CLI uploads a job's files unpinned: GC spares them until the job holds them, and
    `job rm` then frees them."""
    node = await start_node(max_jobs=1)
    (tmp_path / "text.txt").write_text("one two three\n")
    submitted = await cli(
        node,
        "job",
        "submit",
        "--module",
        str(EXAMPLES / "wordcount.wat"),
        "--artifact",
        f"text={tmp_path / 'text.txt'}",
        "--wait",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.decode().split()[0]
    job = node.jobs.store.get(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert not any(b.pinned for b in await node.blobs.store.list())
    assert (await node.collect_garbage()).removed == []  # held by the job

    assert (await cli(node, "job", "rm", job_id)).returncode == 0
    freed = set((await node.collect_garbage()).removed)
    assert {job.spec.module.hash, job.spec.artifacts["text"].hash} <= freed
    assert await node.blobs.store.list() == []


async def test_gc_spares_an_unpinned_upload_until_a_job_holds_it(api, node) -> None:
    uploaded = (
        await api.put(
            "/blobs",
            content=b"for a job about to be submitted",
            params={"pin": False},
            headers={"Content-Type": "application/octet-stream"},
        )
    ).json()["blob"]
    assert (await node.collect_garbage()).removed == []
    node.blobs.held(uploaded["hash"])
    assert (await node.collect_garbage()).removed == [uploaded["hash"]]
