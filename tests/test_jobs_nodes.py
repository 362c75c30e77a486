"""Jobs between in-process nodes: the `flawless` executor end to end (against the test's fake
Flawless, which serves the documented HTTP API), and cancellation of a running job."""

from __future__ import annotations

from pathlib import Path

import trio

from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from tests.fake_flawless import fake_flawless  # noqa: F401  (fixture)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def wait_for_executor(node, kind: str) -> None:
    with trio.fail_after(20):
        while kind not in node.jobs.worker.executors:
            await trio.sleep(0.05)


async def test_flawless_job_runs_on_the_worker_with_flawless(start_node, fake_flawless) -> None:  # noqa: F811
    url, state = fake_flawless
    origin = await start_node(max_jobs=0, flawless_url="http://127.0.0.1:9")
    plain = await start_node(join=origin.join_ticket(), flawless_url="http://127.0.0.1:9")
    flawless = await start_node(join=origin.join_ticket(), flawless_url=url)
    await wait_for_executor(flawless, "flawless")
    assert "flawless" not in plain.jobs.worker.executors

    job = await origin.jobs.submit_files(
        JobSubmission(
            module=EXAMPLES / "echo.wat",
            workflow="echo",
            input={"hello": "flawless"},
            executor="flawless",
        )
    )
    with trio.fail_after(30):
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    assert done.result == {"hello": "flawless"}
    assert done.worker == flawless.id
    assert [r.endpoint for r in state.requests if r.endpoint != "version"] == ["deploy", "start"]
    assert plain.jobs.worker.executed == 0


async def test_dead_flawless_fails_the_attempt_with_a_reason(start_node, fake_flawless) -> None:  # noqa: F811
    url, state = fake_flawless
    node = await start_node(flawless_url=url)
    await wait_for_executor(node, "flawless")
    state.misbehave["start"] = "http_500"
    job = await node.jobs.submit_files(
        JobSubmission(
            module=EXAMPLES / "echo.wat",
            workflow="echo",
            input=1,
            executor="flawless",
            max_attempts=1,
        )
    )
    with trio.fail_after(30):
        done = await node.jobs.wait(job.id)
    assert done is not None and done.state == JobState.FAILED
    assert "500" in (done.error or ""), done.error


async def test_cancelled_running_job_is_abandoned_by_its_worker(start_node) -> None:
    """Cancelling on the origin refuses the worker's next renewal, and the worker stops the run."""
    origin = await start_node(max_jobs=0, lease_s=1.5)
    worker = await start_node(join=origin.join_ticket(), lease_s=1.5)
    job = await origin.jobs.submit_files(
        JobSubmission(
            module=Path(__file__).parent / "modules" / "slow.wat",
            limits={"fuel": 10**12},
            max_attempts=1,
        )
    )
    with trio.fail_after(30):
        while job.id not in worker.jobs.worker.running:
            await trio.sleep(0.05)
    cancelled = await origin.jobs.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED
    with trio.fail_after(30):
        while worker.jobs.worker.running:
            await trio.sleep(0.05)
    assert worker.jobs.worker.executed == 0  # abandoned, not finished
    assert origin.jobs.store.get(job.id).state == JobState.CANCELLED
