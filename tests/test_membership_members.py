"""Scenario: `member ls`, `member rm` and their API on real node processes; a removed member
stays refused."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.nodeproc import NodeProcess, run_start, wait_for

pytestmark = pytest.mark.slow


def test_member_ls_and_rm_refuse_the_removed_node_for_good(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a")
    b = NodeProcess(tmp_path / "b", "--join", a.ticket)
    try:
        (listed,) = json.loads(a.cli("member", "ls", "--json").stdout)
        assert listed["id"] == b.id and listed["state"] in {"connected", "idle"}
        assert set(listed) >= {"id", "addresses", "connected", "last_seen", "state"}
        assert b.id in a.cli("member", "ls").stdout

        bad = a.cli("member", "rm", "b0b", check=False)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
            "error: invalid member id 'b0b': expected the 64 hex digits `p2pnode member ls` shows"
        ]
        assert httpx.delete(f"{a.api}/members/{'0' * 64}", headers=a.headers).status_code == 404
        assert httpx.delete(f"{a.api}/members/not-an-id", headers=a.headers).status_code == 422

        removed = a.cli("member", "rm", b.id)
        assert removed.stdout.strip() == f"removed {b.id}"
        assert "refuses it" in removed.stderr
        assert httpx.get(f"{a.api}/members", headers=a.headers).json() == []
        wait_for(lambda: b.id[:16] not in json.dumps(a.status()["members"]), "a to drop b")

        # The refusal is persisted: a restarted `a` still refuses b's handshake and b's connections.
        a.stop()
        a = NodeProcess(tmp_path / "a")
        b.stop()
        again = run_start(tmp_path / "b", "--join", a.ticket)
        assert again.returncode == 1
        assert (
            again.stderr.strip()
            .splitlines()[-1]
            .endswith("refused to admit us: this node removed you from its members")
        )
        b = NodeProcess(tmp_path / "b")  # still lists `a`, which refuses its greeting
        wait_for(
            lambda: [m["state"] for m in b.status()["members"]] == ["down"],
            "b to find itself refused",
        )
        assert a.status()["members"] == []
        _, err = b.stop()
        assert sum(f"member {a.id[:10]} lost" in line for line in err.splitlines()) == 1, err
        assert f"member {a.id[:10]} is back" not in err
    finally:
        a.kill()
        b.kill()
