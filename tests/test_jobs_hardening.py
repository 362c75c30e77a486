"""Jobs between in-process nodes: large inputs and results, limits, announcements bound to their
origin, cancels pushed to the worker, outputs stored under a live lease, modules checked at
submit, and submitting by blob."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
import trio
from pydantic import ValidationError

from p2pnode.jobs import model
from p2pnode.jobs.announcements import JobAnnounced, JobFinished
from p2pnode.jobs.model import JobState, tag_job
from p2pnode.jobs.service import SWEEP_INTERVAL_S, JobSubmission
from p2pnode.jobs.worker import Worker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODULES = Path(__file__).resolve().parent / "modules"


def api_client(node, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=node.api_url,
        timeout=timeout,
        headers={"Authorization": f"Bearer {node.api_token}"},
    )


async def upload(client: httpx.AsyncClient, path: Path) -> str:
    """Put a file into the node's store the way the CLI does; returns its hash."""
    response = await client.put(
        "/blobs", content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    return response.json()["blob"]["hash"]


async def wait_for(predicate, what: str, timeout: float = 30.0):
    with trio.fail_after(timeout):
        while not (value := predicate()):
            await trio.sleep(0.02)
    return value


async def running_on(worker, job_id: str) -> None:
    await wait_for(lambda: job_id in worker.jobs.worker.running, f"job {job_id} to run")


async def test_large_input_runs_and_large_result_and_outputs_come_home(start_node) -> None:
    """A 100 KB input travels as a blob; the 100 KB result is acknowledged and the outputs
    collected."""
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    payload = {"data": "x" * 100_000}
    job = await origin.jobs.submit_files(JobSubmission(module=MODULES / "tee.wat", input=payload))
    assert job.spec.input is None and job.spec.input_blob is not None
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    assert done.result == payload and done.worker == worker.id
    output = done.outputs["input.json"]
    await wait_for(lambda: origin.blobs.store.has(output.hash), "the output to be collected")


async def test_an_origin_collects_no_more_outputs_than_its_limit(start_node, caplog) -> None:
    """A member reporting outputs must not fill the origin's disk: over the origin's own
    output limit (0 MiB here) they stay with the worker, one warning says so."""
    origin = await start_node(max_jobs=0, max_job_output_mib=0)
    await start_node(join=origin.join_ticket())
    job = await origin.jobs.submit_files(
        JobSubmission(module=MODULES / "tee.wat", input={"data": "x" * 1000})
    )
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    warned = await wait_for(
        lambda: [r for r in caplog.records if "left the outputs of job" in r.getMessage()],
        "the warning",
    )
    assert job.id in warned[0].getMessage()
    assert not origin.blobs.store.has(done.outputs["input.json"].hash)


async def test_input_up_to_the_limit_runs_over_it_is_413_and_result_over_the_limit_fails(
    start_node, tmp_path: Path
) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    text = tmp_path / "text"
    text.write_text("a b")
    async with api_client(origin, timeout=60) as client:
        body = {
            "module_blob": await upload(client, EXAMPLES / "wordcount.wat"),
            "artifact_blobs": {"text": await upload(client, text)},
        }
        response = await client.post(
            "/jobs", json={**body, "input": "x" * (model.MAX_INPUT_BYTES + 1)}
        )
        assert response.status_code == 413
        detail = response.json()["detail"]
        assert "exceeds" in detail and "\n" not in detail
        assert origin.jobs.store.list() == []
        response = await client.post(
            "/jobs", json={**body, "input": "x" * (model.MAX_INPUT_BYTES - 2)}
        )
    assert response.status_code == 200, response.text
    job = model.Job.model_validate(response.json())
    assert job.spec.input_blob is not None and job.spec.input_blob.size == model.MAX_INPUT_BYTES
    with trio.fail_after(60):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.result == {"words": 2} and done.worker == worker.id, done

    big = "y" * (model.MAX_RESULT_BYTES + 1)
    job = await origin.jobs.submit_files(
        JobSubmission(module=MODULES / "tee.wat", input=big, max_attempts=1)
    )
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.FAILED
    assert "exceeds" in (done.error or "") and "/out" in (done.error or ""), done.error


async def test_forged_job_end_and_announcement_from_a_third_member_are_ignored(
    start_node, caplog
) -> None:
    origin = await start_node(max_jobs=0, lease_s=30)
    worker = await start_node(join=origin.join_ticket(), lease_s=30)
    third = await start_node(join=origin.join_ticket(), max_jobs=0)
    job = await origin.jobs.submit_files(
        JobSubmission(module=MODULES / "slow.wat", limits={"fuel": 10**12}, max_attempts=1)
    )
    await running_on(worker, job.id)
    record = origin.jobs.store.get(job.id)
    assert record is not None
    caplog.set_level(logging.WARNING)
    third.gossip.publish(
        JobFinished(job=record.summary().model_copy(update={"state": JobState.CANCELLED}))
    )
    third.gossip.publish(JobAnnounced(job=record.summary(), origin_addr=third.addr()))

    def ignored(what: str) -> int:
        return sum(what in r.getMessage() and job.id in r.getMessage() for r in caplog.records)

    # Both the origin and the worker hear the forgeries (the third member does not hear itself).
    await wait_for(lambda: ignored("ignored the end of job") == 2, "the forged end to be ignored")
    await wait_for(
        lambda: ignored("ignored an announcement of job") == 2,
        "the forged announcement to be ignored",
    )
    assert job.id in worker.jobs.worker.running
    assert origin.jobs.store.get(job.id).state == JobState.RUNNING  # type: ignore[union-attr]
    await origin.jobs.cancel(job.id)


async def _no_push(worker: str, job_id: str) -> None:
    pass


@pytest.mark.parametrize("path", ["pushed", "gossiped"])
async def test_cancel_stops_the_run_on_the_worker_within_a_second(start_node, path: str) -> None:
    """The origin tells the worker directly, and its gossiped end says it too: either alone stops
    the run at once, without waiting for the next lease renewal (every 10 s here)."""
    origin = await start_node(max_jobs=0, lease_s=30)
    worker = await start_node(join=origin.join_ticket(), lease_s=30)
    if path == "pushed":
        worker.jobs.on_finished = lambda finished, signer: None
    else:
        origin.jobs._stop_run = _no_push
    job = await origin.jobs.submit_files(
        JobSubmission(module=MODULES / "slow.wat", limits={"fuel": 10**12}, max_attempts=1)
    )
    await running_on(worker, job.id)
    await origin.jobs.cancel(job.id)
    await wait_for(lambda: not worker.jobs.worker.running, "the run to stop", timeout=1.0)
    assert worker.jobs.worker.executed == 0


async def test_outputs_are_stored_while_the_lease_is_renewed(start_node, monkeypatch) -> None:
    """Storing outputs that takes longer than a lease must not lose the job."""
    lease_s = 1.5
    origin = await start_node(max_jobs=0, lease_s=lease_s)
    worker = await start_node(join=origin.join_ticket(), lease_s=lease_s)
    store_outputs = Worker._store_outputs

    async def slow_store_outputs(self, job_, result):
        # A slow disk: the lease the job had when storing began runs out (and the origin's sweep
        # has had its chance) before the outputs are stored.
        lease = origin.jobs.store.get(job.id).lease
        await wait_for(
            lambda: time.time() > lease.expires_at + 2 * SWEEP_INTERVAL_S,
            "the first lease to run out",
        )
        return await store_outputs(self, job_, result)

    monkeypatch.setattr(Worker, "_store_outputs", slow_store_outputs)
    job = await origin.jobs.submit_files(
        JobSubmission(module=MODULES / "tee.wat", input={"n": 1}, max_attempts=1)
    )
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 1 and done.worker == worker.id


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"module": MODULES / "malformed.wasm"}, "cannot use module blob"),
        (
            {"module": EXAMPLES / "echo.wat", "workflow": "nope"},
            "no workflow 'nope' (available: main)",
        ),
        ({"module_blob": "ab" * 32}, "the module blob abab"),
    ],
)
async def test_bad_module_is_refused_at_submit(start_node, fields: dict, message: str) -> None:
    node = await start_node(max_jobs=0)
    async with api_client(node) as client:
        if "module" in fields:
            fields = dict(fields)
            fields["module_blob"] = await upload(client, fields.pop("module"))
        response = await client.post("/jobs", json=fields)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail, detail
    assert node.jobs.store.list() == []


async def test_submit_by_blob(start_node) -> None:
    """A WAT module blob is assembled at submit; artifact blobs are referenced as they are."""
    node = await start_node(max_jobs=1)
    wat = await node.blobs.store.add_bytes((EXAMPLES / "wordcount.wat").read_bytes())
    text = await node.blobs.store.add_bytes(b"one two three\n")
    job = await node.jobs.submit_files(
        JobSubmission(module_blob=wat.hash, artifact_blobs={"text": text.hash})
    )
    assert job.spec.module.hash != wat.hash  # the assembled binary
    assert job.spec.artifacts["text"].hash == text.hash
    blobs = await node.blobs.store.list()
    held = {b.hash for b in blobs if any(tag_job(t) == job.id for t in b.tags)}
    assert {wat.hash, text.hash} <= held  # held by the job's tags (#13.8), no longer pinned
    with trio.fail_after(30):
        done = await node.jobs.wait(job.id)
    assert done is not None and done.result == {"words": 3}, done


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"module": "/x.wat", "module_blob": "ab" * 32},
        {"module": "/x.wat", "artifacts": {"a": "/a"}, "artifact_blobs": {"a": "ab" * 32}},
        {"module": "/x.wat", "modules": "/y.wat"},
        {"module_blob": "AB" * 32},
    ],
)
def test_submission_shape_is_checked(fields: dict) -> None:
    with pytest.raises(ValidationError):
        JobSubmission.model_validate(fields)


async def test_a_job_backing_off_does_not_hold_a_worker_slot(start_node) -> None:
    """A failed attempt's retry is considered at once (not at the re-announce 30 s later), and with
    one slot, a job waiting out its retry back-off (5 s) must not keep another job waiting."""
    node = await start_node(max_jobs=1)
    failing = await node.jobs.submit_files(
        JobSubmission(module=EXAMPLES / "fail.wat", max_attempts=2)
    )
    await wait_for(
        lambda: node.jobs.store.get(failing.id).not_before > 0, "the first attempt to fail"
    )
    await wait_for(
        lambda: failing.id in node.jobs.worker._considering, "the worker to wait for the retry"
    )
    other = await node.jobs.submit_files(JobSubmission(module=EXAMPLES / "echo.wat", input=1))
    with trio.fail_after(30):
        done = await node.jobs.wait(other.id)
    retried = node.jobs.store.get(failing.id)
    assert done is not None and done.state == JobState.SUCCEEDED
    assert retried is not None and retried.attempts == 1, "the other job waited for the back-off"
