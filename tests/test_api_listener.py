"""The CLI and the listener at --api: the API token goes only to a loopback listener of this user
(a real listener of another account, uid `nobody`, gets nothing; the real node still answers),
and a node killed mid-request is named as such."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from p2pnode.api.listener import ForeignListener, check_listener
from tests.nodeproc import NodeProcess, run_cli, submit_job, wait_for

EXAMPLES = Path(__file__).parents[1] / "examples"

NOBODY = 65534

root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a listener as another uid"
)


def listen_as_nobody(host: str, out: int) -> None:
    """The forked child: become `nobody`, listen on `host`, report the port, then every byte it
    receives on its one connection."""
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as server:
        server.bind((host, 0))
        server.listen()
        os.write(out, f"{server.getsockname()[1]}\n".encode())
        connection, _ = server.accept()
        while chunk := connection.recv(65536):
            os.write(out, chunk)


@pytest.fixture(params=["127.0.0.1", "::1"])
def stranger(request: pytest.FixtureRequest) -> Iterator[tuple[str, BinaryIO]]:
    """A listener of uid `nobody` on a loopback port (a forked child, since this user's Python
    may be unreadable to `nobody`); yields the API address and a pipe of what it was sent."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            listen_as_nobody(request.param, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as received:
        try:
            port = received.readline().decode().strip()
            host = f"[{request.param}]" if ":" in request.param else request.param
            yield f"{host}:{port}", received
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


@root_only
def test_a_listener_of_another_uid_gets_no_token(
    stranger: tuple[str, BinaryIO],
) -> None:
    api, received = stranger
    port = api.rpartition(":")[2]
    result = run_cli("--api", api, "--api-token", "s3cret-token", "status", check=False)
    assert received.read() == b""  # the CLI hung up without sending a byte
    assert result.returncode == 1
    assert result.stderr == (
        f"error: http://{api}: port {port} is held by uid {NOBODY}, not by you "
        f"(uid {os.getuid()}); not sending it the API token (is the node running?)\n"
    )


@root_only
@pytest.mark.parametrize("source", ["sock_diag", "/proc/net"])
def test_both_sources_name_the_owner(
    stranger: tuple[str, BinaryIO], source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc/net/tcp{,6} is the fallback where netlink is missing (here: made to be)."""
    if source == "/proc/net":
        monkeypatch.delattr(socket, "AF_NETLINK")
    host, _, port = stranger[0].rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port))) as connection:
        with pytest.raises(ForeignListener, match=f"port {port} is held by uid {NOBODY}, not"):
            check_listener(connection.getpeername()[:2])


@pytest.mark.slow
def test_the_node_of_this_user_still_gets_the_token(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data")
    try:
        assert node.cli("status").stdout.startswith(f"node      {node.id}\n")
    finally:
        node.kill()


def api_connected(port: int) -> bool:
    """Some process holds an established TCP connection to `port` on loopback (the CLI's)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rpartition(":")[2], 16) == port:
                return True
    return False


@pytest.mark.slow
def test_a_node_killed_mid_request_is_named_as_such(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data")
    try:
        # No worker offers Flawless here: the job stays pending and `job wait` long-polls.
        job_id = submit_job(node, "--module", str(EXAMPLES / "echo.wat"), "--executor", "flawless")
        waiting = subprocess.Popen(
            [sys.executable, "-m", "p2pnode", "--api", node.api, "--data", str(node.data_dir)]
            + ["job", "wait", job_id],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: api_connected(int(node.api.rpartition(":")[2])), "the CLI's long poll")
    finally:
        node.kill()
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 1
    assert stderr.count("error:") == 1  # after, perhaps, the line saying what the job waits for
    assert stderr.splitlines()[-1] == (
        f"error: the node at {node.api} closed the connection mid-request (did it stop?)"
    )
