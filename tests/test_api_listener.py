"""The CLI's API token goes only to a loopback listener of this user: a real listener of another
account (uid `nobody`) gets nothing, and the real node still answers."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.nodeproc import NodeProcess, run_cli

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


@pytest.mark.slow
def test_the_node_of_this_user_still_gets_the_token(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data")
    try:
        assert node.cli("status").stdout.startswith(f"node      {node.id}\n")
    finally:
        node.kill()
