"""Scenario (#13.4): `p2pnode job logs --follow` on the origin shows a line the module prints
while it still runs on another node, and ends when the job does."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

HOLD = Path(__file__).resolve().parent / "modules" / "hold.wat"


@pytest.fixture
def nodes(tmp_path: Path):
    origin = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
    try:
        worker = NodeProcess(tmp_path / "worker", "--join", origin.ticket)
    except BaseException:
        origin.kill()
        raise
    yield origin, worker
    worker.kill()
    origin.kill()


def test_job_logs_follow_shows_a_line_while_the_job_runs(nodes) -> None:
    origin, worker = nodes
    submitted = origin.cli("job", "submit", "--module", str(HOLD), "--command", "--attempts", "1")
    job_id = submitted.stdout.strip()
    follow = subprocess.Popen(
        [sys.executable, "-m", "p2pnode", "--api", origin.api, "--data", str(origin.data_dir)]
        + ["job", "logs", job_id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    try:
        ready, _, _ = select.select([follow.stdout], [], [], 60)
        assert ready, "no output from `job logs --follow` within 60 s"
        assert follow.stdout.readline() == "hello from the guest\n"
        shown = json.loads(origin.cli("job", "show", job_id, "--json").stdout)
        assert shown["state"] == "running"
        run_tmp = worker.data_dir / "work" / f"{job_id}-1" / "scratch" / "tmp"
        (run_tmp / "release").write_bytes(b"")
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert out == ""
    assert err == "waiting for release\n"
    whole = origin.cli("job", "logs", job_id, "--stderr")
    assert whole.stdout == "waiting for release\n"
