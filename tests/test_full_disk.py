"""On a real full filesystem (a 64 KiB tmpfs filled to the last byte; needs root): a failed write
leaves no temporary file; a host refuses a join with the reason (one log line, no traceback) and
admits no one; a shutdown's last member-list flush is one warning, not a crash."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from p2pnode.fsutil import create_once, write_atomic
from p2pnode.membership import JOIN_ALPN, JoinError, JoinLimiter, Membership, handle_join, join
from p2pnode.net.addr import PeerAddr
from p2pnode.net.peerlog import PeerLog
from tests.conftest import accept_connection, bind_loopback
from tests.nodeproc import NodeProcess
from tests.test_blob_cli import add_blob

EXAMPLES = Path(__file__).parents[1] / "examples"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "64k") as mount:
        yield mount


def fill(folder: Path) -> None:
    """Write until the filesystem has not one byte left."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    with open(folder / "filler", "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


@pytest.mark.parametrize("write", [write_atomic, create_once])
def test_a_failed_write_leaves_no_temporary_file(
    small_disk: Path, write: Callable[[Path, bytes], None]
) -> None:
    fill(small_disk)
    with pytest.raises(OSError) as failed:
        write(small_disk / "state.json", b"x" * 8192)
    assert failed.value.errno == errno.ENOSPC
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


async def test_a_full_host_refuses_the_join_and_says_why(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host_ep, joiner_ep = await bind_loopback([JOIN_ALPN]), await bind_loopback([JOIN_ALPN])
    try:
        host = Membership(small_disk, host_ep.id().to_bytes().hex())
        joiner_id = joiner_ep.id().to_bytes().hex()
        joiner = Membership(tmp_path / "joiner", joiner_id)
        fill(small_disk)
        limiter = JoinLimiter(PeerLog(logging.getLogger("test")))

        async def serve() -> None:
            connection = await accept_connection(host_ep)
            await handle_join(host, limiter, connection, await connection.accept_bi())

        caplog.set_level(logging.INFO, "p2pnode.membership")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                connection = await joiner_ep.connect(host_ep.addr(), JOIN_ALPN)
                with pytest.raises(JoinError, match="refused to admit us: the host's disk is full"):
                    await join(
                        joiner,
                        connection,
                        PeerAddr.from_endpoint(joiner_ep.addr(), None),
                        host.cluster,
                    )
    finally:
        await joiner_ep.close()
        await host_ep.close()
    assert not host.is_member(joiner_id)
    assert limiter.retry_after(joiner_id) == 0  # the host's disk is not the joiner's fault
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith(f"refused join from {joiner_id[:10]}: cannot write")
    assert "No space left on device" in record.getMessage()
    assert sorted(p.name for p in small_disk.iterdir()) == ["cluster.json", "filler"]


async def test_the_last_flush_on_a_full_disk_is_one_warning(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    membership = Membership(small_disk, "aa" * 32)
    membership.admit(PeerAddr(node_id="bb" * 32, direct_addresses=["127.0.0.1:1"]))
    fill(small_disk)
    membership.seen("bb" * 32)
    with trio.move_on_after(0):
        await membership.flush_periodically(every=3600)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith("could not write members.json on shutdown: ")


@pytest.mark.slow
def test_a_full_node_answers_507_and_the_cli_exits_1(tmp_path: Path) -> None:
    """Not bad input (400, exit 2): the request was fine, the node's disk is not. Alike for an
    upload, a job's module and a blob fetched by ticket."""
    (tmp_path / "big").write_bytes(os.urandom(256 * 1024))
    provider = NodeProcess(tmp_path / "provider")
    with tmpfs(tmp_path / "disk", "8m") as disk:
        node = NodeProcess(disk / "data")
        try:
            _, ticket = add_blob(provider, tmp_path / "big")
            fill(disk)
            for args, says in (
                (["blob", "add", str(tmp_path / "big")], "the node's disk is full: "),
                (
                    ["job", "submit", "--module", str(EXAMPLES / "echo.wat")],
                    "the node's disk is full: ",
                ),
                (["blob", "get", ticket, "-o", str(tmp_path / "out")], "blob "),  # checked ahead
            ):
                result = node.cli(*args, check=False)
                assert result.returncode == 1, args
                assert result.stderr.startswith(f"error: {says}"), args
                assert result.stderr.count("\n") == 1, args
            assert "more than the 0 bytes free" in result.stderr
        finally:
            node.kill()
            provider.kill()
