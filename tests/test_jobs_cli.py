"""Scenario: jobs across node processes — submit on an origin, run on workers, survive kills."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.nodeproc import NodeProcess, submit_job

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODULES = Path(__file__).resolve().parent / "modules"
FAST_LEASE = {"P2PNODE_LEASE": "2"}
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def nodes():
    started: list[NodeProcess] = []

    def start(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(data_dir, *args, env={**FAST_LEASE, **(env or {})})
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


def show(node: NodeProcess, job_id: str) -> dict:
    """The job record, straight from the API (the CLI's `job show --json` is tested once below)."""
    return httpx.get(f"{node.api}/jobs/{job_id}", headers=node.headers).json()


def wait(node: NodeProcess, job_id: str) -> dict:
    while (
        job := httpx.post(
            f"{node.api}/jobs/{job_id}/wait",
            params={"timeout": 30},
            headers=node.headers,
            timeout=40,
        ).json()
    )["state"] not in TERMINAL:
        pass
    return job


def wait_until(predicate, what: str, timeout: float = 60.0):
    """Poll a condition about another process until it holds (bounded; not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_job_with_artifact_runs_on_worker_and_outputs_come_back(nodes, tmp_path: Path) -> None:
    origin = nodes(tmp_path / "a", "--max-jobs", "0")
    worker = nodes(tmp_path / "b", "--join", origin.ticket)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\njumps over the lazy dog\n")
    job_id = submit_job(
        origin, "--module", str(EXAMPLES / "wordcount.wat"), "--artifact", f"text={text}", "--wait"
    )
    job = json.loads(origin.cli("job", "show", job_id, "--json").stdout)
    assert job["state"] == "succeeded", job
    assert job["result"] == {"words": 9}
    assert job["worker"] == worker.id
    origin.cli("job", "get", job_id, "-o", str(tmp_path / "out"))
    assert (tmp_path / "out" / "count.txt").read_text().strip() == "9"


def test_three_workers_run_every_job_exactly_once(nodes, tmp_path: Path) -> None:
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    workers = [nodes(tmp_path / f"w{i}", "--join", origin.ticket) for i in range(3)]
    jobs = [
        submit_job(origin, "--module", str(EXAMPLES / "echo.wat"), "--input", json.dumps({"n": i}))
        for i in range(12)
    ]
    for i, job_id in enumerate(jobs):
        record = wait(origin, job_id)
        assert record["result"] == {"n": i}
        assert record["attempts"] == 1 and record["state"] == "succeeded", record
    executed = [w.status()["jobs"]["executed"] for w in workers]
    assert sum(executed) == len(jobs), executed


def test_killed_worker_job_reruns_elsewhere(nodes, tmp_path: Path) -> None:
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    doomed = nodes(tmp_path / "doomed", "--join", origin.ticket)
    job_id = submit_job(origin, "--module", str(MODULES / "slow.wat"), "--fuel", str(10**12))
    wait_until(
        lambda: show(origin, job_id)["state"] == "running", "the job to run on the first worker"
    )
    assert show(origin, job_id)["worker"] == doomed.id
    doomed.stop(signal.SIGKILL)
    rescuer = nodes(tmp_path / "rescuer", "--join", origin.ticket)
    assert origin.cli("job", "wait", job_id).stdout.strip() == json.dumps({"done": 1})
    record = show(origin, job_id)
    assert (
        record["state"] == "succeeded"
        and record["worker"] == rescuer.id
        and record["attempts"] == 2
    )


def test_origin_killed_and_restarted_loses_no_job(nodes, tmp_path: Path) -> None:
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    jobs = [
        submit_job(origin, "--module", str(EXAMPLES / "echo.wat"), "--input", str(i))
        for i in range(5)
    ]
    origin.stop(signal.SIGKILL)
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    listed = origin.cli("job", "ls").stdout
    assert all(job_id in listed for job_id in jobs)
    nodes(tmp_path / "worker", "--join", origin.ticket)
    for i, job_id in enumerate(jobs):
        assert wait(origin, job_id)["result"] == i


@pytest.mark.parametrize(
    ("module", "extra", "reason"),
    [
        (EXAMPLES / "fail.wat", [], "unreachable"),
        (EXAMPLES / "spin.wat", ["--fuel", "100000"], "out of fuel"),
    ],
)
def test_bad_modules_fail_with_a_reason(
    nodes, tmp_path: Path, module: Path, extra: list[str], reason: str
) -> None:
    node = nodes(tmp_path / "solo", "--max-jobs", "1")
    job_id = submit_job(node, "--module", str(module), "--attempts", "1", *extra)
    result = node.cli("job", "wait", job_id, check=False)
    assert result.returncode == 1
    record = show(node, job_id)
    assert record["state"] == "failed" and reason in record["error"], record


def test_bad_module_is_refused_at_submit(nodes, tmp_path: Path) -> None:
    node = nodes(tmp_path / "solo", "--max-jobs", "1")
    for args in (
        ["--module", str(MODULES / "malformed.wasm")],
        ["--module", str(EXAMPLES / "echo.wat"), "--workflow", "nope"],
    ):
        result = node.cli("job", "submit", *args, check=False)
        assert result.returncode != 0 and result.stdout == ""
        assert (
            result.stderr.startswith("error: cannot use module") and result.stderr.count("\n") == 1
        ), result.stderr
    assert node.cli("job", "ls").stdout == ""


def test_large_input_runs_and_the_origin_restarts_after_kill(nodes, tmp_path: Path) -> None:
    """A 70 KB input is no poison: it runs, and after kill -9 the origin starts and lists every
    job, even with a row in its store that no version can read."""
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    big = {"data": "x" * 70_000}
    (tmp_path / "big.json").write_text(json.dumps(big))
    jobs = [
        submit_job(origin, "--module", str(EXAMPLES / "echo.wat"), "--input", input_)
        for input_ in (f"@{tmp_path / 'big.json'}", "1")
    ]
    origin.stop(signal.SIGKILL)
    with sqlite3.connect(tmp_path / "origin" / "jobs.sqlite") as db:
        db.execute(
            "INSERT INTO jobs VALUES ('job_0', ?, 1, 'pending', 'wasi', 0, NULL, 0, 0, 'garbage')",
            (origin.id,),
        )
    db.close()
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    listed = origin.cli("job", "ls").stdout
    assert all(job_id in listed for job_id in jobs), listed
    nodes(tmp_path / "worker", "--join", origin.ticket)
    assert wait(origin, jobs[0])["result"] == big
    assert wait(origin, jobs[1])["result"] == 1


def test_stopped_worker_hands_its_job_back(nodes, tmp_path: Path) -> None:
    """SIGTERM: the running job is pending again before the worker exits, its attempt not counted
    (the 30 s lease has not lapsed), and the next worker runs it."""
    long_lease = {"P2PNODE_LEASE": "30"}
    origin = nodes(tmp_path / "origin", "--max-jobs", "0", env=long_lease)
    worker = nodes(tmp_path / "worker", "--join", origin.ticket, env=long_lease)
    job_id = submit_job(origin, "--module", str(MODULES / "slow.wat"), "--fuel", str(10**12))
    wait_until(lambda: show(origin, job_id)["state"] == "running", "the job to run")
    stopping = time.monotonic()
    code, err = worker.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err, err
    assert time.monotonic() - stopping < 10  # "bounded to a few seconds"
    record = show(origin, job_id)
    assert record["state"] == "pending" and record["attempts"] == 0, record
    rescuer = nodes(tmp_path / "rescuer", "--join", origin.ticket, env=long_lease)
    record = wait(origin, job_id)
    assert (
        record["state"] == "succeeded"
        and record["attempts"] == 1
        and record["worker"] == rescuer.id
    ), record
