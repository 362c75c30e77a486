"""Scenario: joins that fail change nothing, and restarted nodes keep their port and tickets
(real processes)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import tickets
from tests.nodeproc import NodeProcess, run_start, wait_for

pytestmark = pytest.mark.slow


def port_of(ticket: str) -> int:
    return int(tickets.parse_join(ticket).node.direct_addresses[0].rpartition(":")[2])


def member_ids(node: NodeProcess) -> set[str]:
    return {m["id"] for m in node.status()["members"]}


def test_failed_join_keeps_cluster_and_members(tmp_path: Path) -> None:
    origin = NodeProcess(tmp_path / "origin")
    other = NodeProcess(tmp_path / "other")
    worker = NodeProcess(tmp_path / "worker", "--join", origin.ticket)
    try:
        foreign_ticket = other.ticket
        other.stop()
        worker.stop()
        cluster_file, members_file = (
            tmp_path / "worker" / "cluster.json",
            tmp_path / "worker" / "members.json",
        )
        cluster_before = cluster_file.read_bytes()

        result = run_start(
            tmp_path / "worker", "--join", foreign_ticket, env={"P2PNODE_CONNECT_TIMEOUT": "1"}
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("error: could not join through"), (
            result.stderr
        )
        # The origin may have said hello meanwhile (a fresher last_seen); who the members are is
        # unchanged.
        assert cluster_file.read_bytes() == cluster_before
        assert set(json.loads(members_file.read_text())["members"]) == {origin.id}

        worker = NodeProcess(tmp_path / "worker")
        assert worker.status()["cluster_id"] == origin.status()["cluster_id"]
        assert member_ids(worker) == {origin.id}
    finally:
        for node in (origin, other, worker):
            node.kill()


def test_restart_keeps_port_so_old_ticket_still_joins(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "a")
    newcomer = None
    try:
        old_ticket = node.ticket
        node.stop()
        node = NodeProcess(tmp_path / "a")
        assert port_of(node.ticket) == port_of(old_ticket)
        newcomer = NodeProcess(tmp_path / "b", "--join", old_ticket)
        assert member_ids(newcomer) == {node.id}
    finally:
        node.kill()
        if newcomer is not None:
            newcomer.kill()


def test_taken_port_falls_back_and_members_learn_the_new_address(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a")
    b = NodeProcess(tmp_path / "b", "--join", a.ticket)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        old_port = port_of(b.ticket)
        b.stop()
        squatter.bind(("127.0.0.1", old_port))
        b = NodeProcess(tmp_path / "b")
        new_port = port_of(b.ticket)
        assert new_port != old_port
        # b greeted a on restart: a now knows where b moved.

        def moved() -> bool:
            (known,) = a.status()["members"]
            return (
                f"127.0.0.1:{new_port}" in known["addresses"]
                and f"127.0.0.1:{old_port}" not in known["addresses"]
            )

        wait_for(moved, "a to learn b's new port")
        code, err = b.stop()
        notes = [line for line in err.splitlines() if "of the last run is not available" in line]
        assert code == 0 and len(notes) == 1 and ".rs:" not in notes[0], err
    finally:
        squatter.close()
        a.kill()
        b.kill()
