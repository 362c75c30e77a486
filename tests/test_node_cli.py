"""Scenario: real node processes joining by ticket, refusing strangers, restarting, and stopping
cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tickets
from p2pnode.membership import JOIN_ALPN, JoinError, Membership, join
from p2pnode.net.addr import PeerAddr
from tests.conftest import bind_loopback
from tests.nodeproc import NodeProcess, run_cli, run_start, start_args, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def node_a(tmp_path: Path):
    node = NodeProcess(tmp_path / "a")
    yield node
    node.kill()


def member_ids(node: NodeProcess) -> set[str]:
    return {m["id"] for m in node.status()["members"]}


def test_two_nodes_join_and_list_each_other(node_a: NodeProcess, tmp_path: Path) -> None:
    node_b = NodeProcess(tmp_path / "b", "--join", node_a.ticket)
    try:
        assert member_ids(node_a) == {node_b.id}
        assert member_ids(node_b) == {node_a.id}
        assert node_a.status()["cluster_id"] == node_b.status()["cluster_id"]
        info = json.loads((tmp_path / "b" / "node.json").read_text())
        assert info["id"] == node_b.id and info["api_url"] == node_b.api
        assert (tmp_path / "b" / "secret.key").stat().st_mode & 0o777 == 0o600

        # A restarted member keeps its identity and rejoins without the ticket.
        code, err = node_b.stop()
        assert code == 0 and "Traceback" not in err
        node_b = NodeProcess(tmp_path / "b")
        assert member_ids(node_b) == {node_a.id}
        assert member_ids(node_a) == {node_b.id}
    finally:
        node_b.kill()


def test_status_tells_a_member_that_is_down_from_one_that_is_idle(tmp_path: Path) -> None:
    """`status` shows each member's state as `member ls` does: a dead member is down (redialled
    with back-off), not merely "not connected" like one that had nothing to say lately."""
    fast = {"P2PNODE_CONNECT_TIMEOUT": "2"}
    a = NodeProcess(tmp_path / "a", env=fast)
    b = NodeProcess(tmp_path / "b", "--join", a.ticket, env=fast)
    try:
        wait_for(lambda: a.status()["members"][0]["connected"], "a to be connected to b")
        b.stop(signal.SIGKILL)
        wait_for(lambda: a.status()["members"][0]["state"] == "down", "b to be down")
        assert f"  {b.id[:16]}  down " in a.cli("status").stdout
    finally:
        a.kill()
        b.kill()


def test_a_join_ticket_can_stay_off_the_command_line(node_a: NodeProcess, tmp_path: Path) -> None:
    """A node's command line is readable by every local account (ps, /proc) for as long as it
    runs, and a join ticket holds the cluster's secret: it may come on stdin (`--join -`) or in
    P2PNODE_JOIN instead, and on the command line it draws a note saying so."""
    piped = subprocess.Popen(
        [sys.executable, "-m", "p2pnode", *start_args(tmp_path / "b", "--join", "-")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert piped.stdin and piped.stdout and piped.stderr
    try:
        piped.stdin.write(f"{node_a.ticket}\n")
        piped.stdin.close()
        printed = [piped.stdout.readline() for _ in range(3)]
        assert printed[2].startswith("join ticket: "), printed
        node_b = printed[0].split()[-1]
        assert node_a.ticket not in Path(f"/proc/{piped.pid}/cmdline").read_text()
        assert node_b in member_ids(node_a)
    finally:
        piped.kill()
        piped.wait()
        piped.stdout.close()
        piped.stderr.close()
    node_c = NodeProcess(tmp_path / "c", env={"P2PNODE_JOIN": node_a.ticket})
    try:
        assert node_a.ticket not in Path(f"/proc/{node_c.proc.pid}/cmdline").read_text()
        assert member_ids(node_a) == {node_b, node_c.id}
        code, err = node_c.stop()
        assert code == 0 and "command line" not in err, err
    finally:
        node_c.kill()
    node_d = NodeProcess(tmp_path / "d", "--join", node_a.ticket)
    code, err = node_d.stop()
    assert "every local account can read it" in err and node_a.ticket not in err, err


def test_fresh_ticket_from_running_node(node_a: NodeProcess) -> None:
    ticket = tickets.parse_join(node_a.cli("ticket").stdout)
    assert ticket.node.node_id.hex() == node_a.id
    assert ticket.node.direct_addresses, "a relay-less ticket must carry direct addresses"


def test_the_ticket_example_for_a_second_node_works_as_printed(tmp_path: Path) -> None:
    """`ticket -h` shows how to ask the walkthrough's second node (`--data worker`, port 3021):
    run where that folder is, the example prints that node's ticket, not a refused token."""
    worker = NodeProcess(tmp_path / "worker")
    try:
        help_text = run_cli("ticket", "-h").stdout
        example = next(line.split() for line in help_text.splitlines() if "--api" in line)
        assert example[0] == "p2pnode"
        argv = [arg.replace("127.0.0.1:3021", worker.api) for arg in example[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PNODE_")}
        result = subprocess.run(
            [sys.executable, "-m", "p2pnode", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert tickets.parse_join(result.stdout).node.node_id.hex() == worker.id
    finally:
        worker.kill()


def test_a_flawless_probe_is_not_logged_every_30_s(node_a: NodeProcess, tmp_path: Path) -> None:
    """A node probes FLAWLESS_URL at start and every 30 s (and calls it for every Flawless job):
    the HTTP client's line per request would fill the node's log with no news. Here the URL is
    another node's API, an HTTP server that answers the probe (401)."""
    node_b = NodeProcess(tmp_path / "b", env={"FLAWLESS_URL": node_a.api})
    code, err = node_b.stop()  # its first probe is answered before it prints its id
    assert code == 0 and "HTTP Request" not in err, err


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-5],
        lambda t: t[:20] + ("a" if t[20] != "a" else "b") + t[21:],
        lambda t: "p2pblob" + t[7:],
        lambda t: "hello",
    ],
)
def test_mangled_ticket_is_one_clear_line_and_exit_2(
    node_a: NodeProcess, tmp_path: Path, mangle
) -> None:
    result = run_cli(
        "start", "--data", str(tmp_path / "c"), "--join", mangle(node_a.ticket), check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid join ticket:"), result.stderr


def test_sigint_stops_cleanly(node_a: NodeProcess) -> None:
    code, err = node_a.stop(signal.SIGINT)
    assert code == 0
    assert "Traceback" not in err


def test_cli_without_node_says_so() -> None:
    result = run_cli("--api", "http://127.0.0.1:9", "status", check=False)
    assert result.returncode == 1
    assert (
        result.stderr.strip() == "error: no p2pnode answering at http://127.0.0.1:9"
        " (start one with `p2pnode start`, or pass --api)"
    )


async def test_stranger_with_wrong_secret_is_refused(node_a: NodeProcess, tmp_path: Path) -> None:
    """A peer with the right address but a forged secret never becomes a member."""
    real = tickets.parse_join(node_a.ticket)
    stranger = await bind_loopback([JOIN_ALPN])
    try:
        forged = Membership(tmp_path / "stranger", stranger.id().to_bytes().hex())
        forged.cluster = forged.cluster.model_copy(update={"cluster_id": real.cluster_id.hex()})
        connection = await stranger.connect(
            PeerAddr.from_ticket(real.node).to_endpoint(), JOIN_ALPN
        )
        with pytest.raises(JoinError, match="wrong join secret"):
            await join(forged, connection, PeerAddr.from_endpoint(stranger.addr(), None))
    finally:
        await stranger.close()
    assert node_a.status()["members"] == []


def test_taken_api_port_is_one_clear_line(node_a: NodeProcess, tmp_path: Path) -> None:
    port = node_a.api.rsplit(":", 1)[1]
    result = run_cli(
        "start",
        "--data",
        str(tmp_path / "c"),
        "--http-port",
        port,
        "--bind",
        "127.0.0.1:0",
        "--relay",
        "disabled",
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: cannot listen on http://127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr


def test_second_node_on_the_same_data_folder_is_refused(
    node_a: NodeProcess, tmp_path: Path
) -> None:
    """Two nodes on one folder would share an identity, a job database and a blob store."""
    before = node_a.status()
    result = run_start(tmp_path / "a")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'a'} is in use by another running node; stop it first, "
        "or start this one with another --data"
    ]
    assert node_a.status()["id"] == before["id"]  # the running node is untouched
    node_a.stop()
    restarted = NodeProcess(tmp_path / "a")  # the lock went with the process
    try:
        assert restarted.status()["id"] == before["id"]
    finally:
        restarted.kill()
