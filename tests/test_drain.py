"""Drain (issue 13.2) and label placement (13.3) with real node processes: a drained worker
claims nothing new but finishes its running job, other workers take the new ones, the drain
survives a restart, and undrain resumes; a job requiring a label runs only where it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from p2pnode.jobs import model
from p2pnode.jobs.announcements import JobAnnounced
from p2pnode.jobs.control import ControlClient
from p2pnode.jobs.worker import Worker
from p2pnode.metrics import Metrics
from p2pnode.net.addr import PeerAddr
from tests.nodeproc import NodeProcess, submit_job, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GATE = Path(__file__).resolve().parent / "modules" / "gate.wat"
"""Runs until the file `release` appears in its /in folder on the worker."""
PATIENT = 120.0


@pytest.fixture
def nodes():
    started: list[NodeProcess] = []

    def start(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> NodeProcess:
        node = NodeProcess(data_dir, *args, env=env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()


def gated(node: NodeProcess, *args: str) -> str:
    return submit_job(node, "--module", str(GATE), "--command", "--time-limit", "600", *args)


def show(node: NodeProcess, job_id: str) -> dict:
    return httpx.get(f"{node.api}/jobs/{job_id}", headers=node.headers).json()


def states(node: NodeProcess) -> dict[str, str]:
    return {w["node_id"]: w["state"] for w in json.loads(node.cli("workers", "--json").stdout)}


def open_gate(worker: NodeProcess, job_id: str) -> None:
    """Let a gated job end: the file it waits for, in its artifacts folder on the worker."""
    (worker.data_dir / "work" / f"{job_id}-1" / "in" / "release").write_text("go")


@pytest.mark.slow
def test_drain_finishes_the_running_job_and_claims_nothing_until_undrained(
    nodes, tmp_path: Path
) -> None:
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    first = nodes(tmp_path / "first", "--join", origin.ticket, "--label", "name=first")
    other = nodes(tmp_path / "other", "--join", origin.ticket)
    wait_for(lambda: len(states(origin)) == 3, "three workers", PATIENT)
    running = gated(origin, "--require", "name=first")
    wait_for(lambda: show(origin, running)["state"] == "running", "the gated job to run", PATIENT)

    drain = subprocess.Popen(
        [sys.executable, "-m", "p2pnode", "--api", first.api, "--data", str(first.data_dir)]
        + ["drain", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: states(origin)[first.id] == "draining", "draining everywhere", PATIENT)
        later = gated(origin, "--require", "name=first")
        anyone = submit_job(origin, "--module", str(EXAMPLES / "echo.wat"), "--input", "7")
        assert origin.cli("job", "wait", anyone).stdout.strip() == "7"
        assert show(origin, anyone)["worker"] == other.id
        waiting = show(origin, later)
        assert waiting["state"] == "pending", waiting
        assert waiting["waiting_for"].startswith("every worker that could run it is draining")
        assert drain.poll() is None, drain.communicate()  # `--wait`: the gated job still runs
        open_gate(first, running)
        out, err = drain.communicate(timeout=PATIENT)
    finally:
        drain.kill()
    assert drain.returncode == 0 and out.strip() == "drained: no job runs here", err
    assert show(origin, running)["state"] == "succeeded"

    first.stop()
    first = nodes(tmp_path / "first", "--label", "name=first")  # a restart keeps the drain
    assert "draining  claims no new job" in first.cli("status").stdout
    assert first.status()["jobs"]["draining"] is True
    assert show(origin, later)["state"] == "pending"

    first.cli("undrain")
    wait_for(lambda: show(origin, later)["state"] == "running", "the held job to run", PATIENT)
    assert show(origin, later)["worker"] == first.id

    handed = first.cli("drain", "--release", "--wait").stdout  # its job goes back, unfinished
    assert handed.strip() == "drained: no job runs here"
    record = show(origin, later)
    assert record["state"] == "pending" and record["attempts"] == 0, record
    assert record["history"][-1]["note"].startswith("handed back by")
    first.cli("undrain")
    wait_for(lambda: show(origin, later)["state"] == "running", "the job to run again", PATIENT)
    open_gate(first, later)
    assert origin.cli("job", "wait", later).stdout.strip() == json.dumps({"exit_code": 0})
    assert states(origin)[first.id] != "draining"


@pytest.mark.slow
def test_a_job_requiring_a_label_runs_only_on_the_labelled_worker(nodes, tmp_path: Path) -> None:
    origin = nodes(tmp_path / "origin", "--max-jobs", "0")
    plain = nodes(tmp_path / "plain", "--join", origin.ticket)
    wait_for(lambda: len(states(origin)) == 2, "the plain worker", PATIENT)
    echo = ["--module", str(EXAMPLES / "echo.wat")]
    for_gpu = submit_job(origin, *echo, "--input", "1", "--require", "gpu=yes")
    not_gpu = submit_job(origin, *echo, "--input", "2", "--require", "gpu!=yes")
    assert origin.cli("job", "wait", not_gpu).stdout.strip() == "2"
    waiting = show(origin, for_gpu)
    assert waiting["state"] == "pending" and waiting["spec"]["requirements"]["labels"] == [
        {"key": "gpu", "op": "=", "value": "yes"}
    ]
    assert waiting["waiting_for"].startswith("no live worker has gpu=yes")
    shown = origin.cli("job", "show", for_gpu).stdout
    assert "requires  gpu=yes\nwaiting   no live worker has gpu=yes" in shown

    gpu = nodes(
        tmp_path / "gpu", "--join", origin.ticket, env={"P2PNODE_LABELS": "gpu=yes,zone=eu"}
    )
    assert origin.cli("job", "wait", for_gpu).stdout.strip() == "1"
    assert show(origin, for_gpu)["worker"] == gpu.id
    assert show(origin, not_gpu)["worker"] == plain.id
    listed = {line.split()[0]: line for line in origin.cli("workers").stdout.splitlines()}
    assert listed[gpu.id].endswith("gpu=yes,zone=eu") and listed[plain.id].endswith("  -")


def test_bad_labels_and_requirements_are_one_error_line(tmp_path: Path) -> None:
    from tests.nodeproc import run_cli, run_start

    for args, env in (
        (("--label", "gpu"), None),
        (("--label", "bad key=1"), None),
        ((), {"P2PNODE_LABELS": "gpu=y es"}),
    ):
        result = run_start(tmp_path / "n", *args, env=env)
        assert result.returncode == 2, result
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
    for requirement in ("=yes", "gpu=y es", "a" * 64):
        result = run_cli(
            "--api", "http://127.0.0.1:9", "job", "submit", "--module", str(GATE),
            "--require", requirement, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result
        assert result.stderr.startswith("error: --require: requirement"), result.stderr


ORIGIN = "11" * 32


class RefusingOrigin:
    """A job's origin that refuses every claim (once `answering` is set), recording each."""

    def __init__(self) -> None:
        self.asked: list[model.ControlMessage] = []
        self.answering = trio.Event()
        self.answering.set()

    async def answer(self, _peer: str, request: model.ControlMessage) -> model.ClaimRefused:
        self.asked.append(request)
        await self.answering.wait()
        return model.ClaimRefused(reason="taken")


def worker_of(origin: RefusingOrigin, data_dir: Path) -> Worker:
    """A worker whose claims go to `origin`, never dialled; it never gets to run anything."""

    async def no_dialling(_addr: PeerAddr, _alpn: bytes, _exchange: object) -> model.Ack:
        raise AssertionError("not dialled: the origin answers locally")

    control = ControlClient(no_dialling)
    control.answer_locally(ORIGIN, origin)
    executors: dict = {"wasi": None}
    return Worker(
        "22" * 32,
        executors,
        None,
        control,
        lambda _: None,
        data_dir,
        1,
        {},
        data_dir / "draining",
        Metrics(),
    )


def announcement() -> JobAnnounced:
    return JobAnnounced(
        job=model.JobSummary(
            id=model.new_job_id(),
            origin=ORIGIN,
            state=model.JobState.PENDING,
            requirements=model.Requirements(),
            attempts=0,
            input_bytes=0,
            artifact_bytes=0,
            result_bytes=0,
            updated_at=0.0,
        ),
        origin_addr=PeerAddr(node_id=ORIGIN),
    )


async def test_a_draining_worker_holds_what_it_hears_and_claims_it_once_undrained(
    tmp_path: Path,
) -> None:
    origin = RefusingOrigin()
    drained = worker_of(origin, tmp_path)
    drained.drain()
    heard = announcement()
    await drained.consider(heard)
    assert origin.asked == [] and (tmp_path / "draining").exists()
    assert worker_of(origin, tmp_path).draining  # the flag outlives the process

    held = drained.undrain()
    assert held == [heard] and not worker_of(origin, tmp_path).draining
    await drained.consider(held[0])
    assert [type(m) for m in origin.asked] == [model.ClaimRequest]


async def test_a_drain_waits_for_a_claim_already_on_its_way(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    origin = RefusingOrigin()
    origin.answering = trio.Event()
    worker = worker_of(origin, tmp_path)
    nursery.start_soon(worker.consider, announcement())
    await trio.testing.wait_all_tasks_blocked()
    assert len(origin.asked) == 1  # the claim is out, unanswered
    worker.drain()
    idle = trio.Event()

    async def drain_wait() -> None:
        await worker.wait_idle()
        idle.set()

    nursery.start_soon(drain_wait)
    await trio.testing.wait_all_tasks_blocked()
    assert not idle.is_set()  # it may yet be granted: not idle
    origin.answering.set()
    with trio.fail_after(10):
        await idle.wait()
