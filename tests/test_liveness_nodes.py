"""Scenario: real node processes losing a peer (kill -9) and getting it back: liveness, redial,
restart."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FAST = {"P2PNODE_CONNECT_TIMEOUT": "2"}


def member(node: NodeProcess, node_id: str) -> dict:
    (found,) = [m for m in node.status()["members"] if m["id"] == node_id]
    return found


def claim_delay(job: dict) -> float:
    """Seconds from submission to the first claim, from the origin's job history."""
    at = {event["note"].split(" ")[0]: event["at"] for event in job["history"]}
    return at["attempt"] - at["submitted"]


def test_killed_peer_turns_down_within_seconds_and_is_logged_once(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a", env=FAST)
    b = NodeProcess(tmp_path / "b", "--join", a.ticket, env=FAST)
    try:
        wait_for(lambda: member(a, b.id)["connected"], "a to be connected to b")
        b.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not member(a, b.id)["connected"], "a to notice b is gone", timeout=30)
        noticed = time.monotonic() - killed
        assert noticed < 8, f"a still thought b connected {noticed:.1f} s after it died"
        wait_for(lambda: member(a, b.id)["state"] == "down", "b to be down")

        b = NodeProcess(tmp_path / "b", env=FAST)
        wait_for(lambda: member(a, b.id)["state"] != "down", "a to see b back")
        code, err = a.stop()
        assert code == 0
        lines = [line for line in err.splitlines() if b.id[:10] in line]
        assert sum(f"member {b.id[:10]} lost" in line for line in lines) == 1, err
        assert sum(f"member {b.id[:10]} is back" in line for line in lines) == 1, err
        assert not [
            line
            for line in err.splitlines()
            if ".rs:" in line or "Traceback" in line or line.startswith(" ")
        ], err
    finally:
        a.kill()
        b.kill()


def test_restarted_origin_gets_new_jobs_claimed_within_2s(tmp_path: Path) -> None:
    origin = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
    worker = NodeProcess(tmp_path / "worker", "--join", origin.ticket)
    try:
        first = origin.cli(
            "job", "submit", "--module", str(EXAMPLES / "echo.wat"), "--input", "1", "--wait"
        ).stdout
        assert (
            json.loads(first.splitlines()[-1]) == 1
        )  # the worker holds a cached connection to the origin now
        origin.stop(signal.SIGKILL)
        origin = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
        job_id = origin.cli(
            "job", "submit", "--module", str(EXAMPLES / "echo.wat"), "--input", "2"
        ).stdout.strip()
        assert origin.cli("job", "wait", job_id).returncode == 0
        job = json.loads(origin.cli("job", "show", job_id, "--json").stdout)
        assert job["worker"] == worker.id
        assert claim_delay(job) <= 2.0, job["history"]
    finally:
        origin.kill()
        worker.kill()
