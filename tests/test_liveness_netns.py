"""Liveness on a real network: three node processes in network namespaces on one bridge
(`shared/tools/netlab.sh`), a node's bridge port cut and healed, an origin killed and restarted.

Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NETLAB = next(
    (
        p / "shared/tools/netlab.sh"
        for p in Path(__file__).resolve().parents
        if (p / "shared/tools/netlab.sh").exists()
    ),
    None,
)


class Lab:
    """One netlab instance of its own name, so parallel runs do not meet."""

    def __init__(self, size: int) -> None:
        self.env = {**os.environ, "LAB": f"pn{os.getpid() % 100000}", "NET": "10.78.0"}
        self.run("up", str(size))

    def run(self, *args: str) -> str:
        assert NETLAB is not None
        return subprocess.run(
            ["bash", str(NETLAB), *args], env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()

    def node(self, i: int, data_dir: Path, *extra: str) -> NodeProcess:
        prefix = ("ip", "netns", "exec", f"{self.env['LAB']}-{i}")
        return NodeProcess(
            data_dir,
            *extra,
            bind=f"{self.run('ip', str(i))}:0",
            prefix=prefix,
            env={"P2PNODE_CONNECT_TIMEOUT": "2"},
        )


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if NETLAB is None or shutil.which("ip") is None:
        pytest.skip("needs shared/tools/netlab.sh and iproute2")
    lab = Lab(3)
    try:
        yield lab
    finally:
        lab.run("down")


def member(node: NodeProcess, node_id: str) -> dict:
    (found,) = [m for m in node.status()["members"] if m["id"] == node_id]
    return found


def test_cut_peer_is_not_connected_within_seconds_and_returns_after_heal(
    lab: Lab, tmp_path: Path
) -> None:
    nodes = [lab.node(1, tmp_path / "n1")]
    try:
        nodes += [lab.node(i, tmp_path / f"n{i}", "--join", nodes[0].ticket) for i in (2, 3)]
        one, _, three = nodes
        wait_for(lambda: member(one, three.id)["connected"], "node 1 to be connected to node 3")
        lab.run("cut", "3")
        cut = time.monotonic()
        wait_for(
            lambda: not member(one, three.id)["connected"], "node 1 to notice the cut", timeout=40
        )
        noticed = time.monotonic() - cut
        assert noticed < 8, f"node 1 still said connected {noticed:.1f} s into the cut"
        wait_for(lambda: member(one, three.id)["state"] == "down", "node 3 to be down")
        lab.run("heal", "3")
        wait_for(lambda: member(one, three.id)["state"] != "down", "node 3 to be back", timeout=40)
    finally:
        for node in nodes:
            node.kill()


def test_restarted_origin_gets_new_jobs_claimed_within_2s(lab: Lab, tmp_path: Path) -> None:
    origin = lab.node(1, tmp_path / "origin", "--max-jobs", "0")
    workers: list[NodeProcess] = []
    try:
        workers = [lab.node(i, tmp_path / f"w{i}", "--join", origin.ticket) for i in (2, 3)]
        for n in range(4):  # both workers hold connections to the origin
            origin.cli(
                "job", "submit", "--module", str(EXAMPLES / "echo.wat"), "--input", str(n), "--wait"
            )
        origin.stop(signal.SIGKILL)
        origin = lab.node(1, tmp_path / "origin", "--max-jobs", "0")
        delays = []
        for n in range(3):
            job_id = origin.cli(
                "job", "submit", "--module", str(EXAMPLES / "echo.wat"), "--input", str(n)
            ).stdout.strip()
            origin.cli("job", "wait", job_id)
            job = json.loads(origin.cli("job", "show", job_id, "--json").stdout)
            at = {event["note"].split(" ")[0]: event["at"] for event in job["history"]}
            delays.append(at["attempt"] - at["submitted"])
        assert max(delays) <= 2.0, delays
    finally:
        origin.kill()
        for worker in workers:
            worker.kill()
