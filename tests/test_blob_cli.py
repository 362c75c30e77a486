"""Scenario: blobs between node processes through the CLI, kill -9 and resume, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import trio

from p2pnode.blobs.store import BlobStore
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

STANDALONE_ENV = {"P2PNODE_RELAY": "disabled", "P2PNODE_BIND": "127.0.0.1:0"}


@pytest.fixture
def provider(tmp_path: Path):
    node = NodeProcess(tmp_path / "a")
    yield node
    node.kill()


def add_blob(node: NodeProcess, path: Path) -> tuple[str, str]:
    out = dict(
        line.split(": ", 1)
        for line in node.cli("blob", "add", str(path)).stdout.strip().splitlines()
    )
    return out["hash"].strip(), out["ticket"].strip()


def test_add_on_one_node_fetch_on_another(provider: NodeProcess, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    (tmp_path / "in.bin").write_bytes(data)
    blob_hash, ticket = add_blob(provider, tmp_path / "in.bin")
    assert blob_hash == blake3.blake3(data).hexdigest()
    worker = NodeProcess(tmp_path / "b")  # not a member: the ticket's capability is what lets it in
    try:
        result = worker.cli("blob", "get", ticket, "-o", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == data
        assert "(100%)" in result.stderr  # piped: plain progress lines
        assert blob_hash in worker.cli("blob", "ls").stdout
    finally:
        worker.kill()
    listing = provider.cli("blob", "ls").stdout
    assert blob_hash in listing and "pinned" in listing
    refused = provider.cli("blob", "rm", blob_hash, check=False)
    assert refused.returncode == 1 and "pinned" in refused.stderr
    provider.cli("blob", "unpin", blob_hash)
    assert "removed 1 blobs" in provider.cli("blob", "gc").stdout
    assert blob_hash not in provider.cli("blob", "ls").stdout


def standalone_get(ticket: str, out: Path, store: Path) -> subprocess.Popen[str]:
    env = {**os.environ, **STANDALONE_ENV, "IROH_BLOBS_PATH": str(store), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2pnode",
            "--api",
            "http://127.0.0.1:9",
            "blob",
            "get",
            ticket,
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def partial_blocks(store_dir: Path, blob_hash: str) -> int:
    async def read() -> int:
        store = await BlobStore.open(store_dir)
        try:
            progress = await store.partial_progress(blob_hash)
            for info in await store.list():  # never a blob whose bytes don't hash to its name
                assert await store.verify(info.hash)
            return progress.blocks_done if progress else 0
        finally:
            store.close()

    return trio.run(read)


def test_kill_9_mid_fetch_resumes(provider: NodeProcess, tmp_path: Path) -> None:
    size = 96 << 20
    with open(tmp_path / "big.bin", "wb") as f:
        f.write(os.urandom(size))
    blob_hash, ticket = add_blob(provider, tmp_path / "big.bin")
    store, out = tmp_path / "fetcher-store", tmp_path / "big.out"
    done_before = 0
    for _ in range(3):
        fetch = standalone_get(ticket, out, store)
        for line in fetch.stderr:  # type: ignore[union-attr]
            if " MB (" in line and not line.startswith(f"blob {blob_hash[:12]}: 0.0"):
                break
        fetch.send_signal(signal.SIGKILL)
        fetch.communicate()
        done = partial_blocks(store, blob_hash)
        assert done >= done_before, "a resumed fetch lost verified blocks"
        done_before = done
    assert done_before > 0
    fetch = standalone_get(ticket, out, store)
    _, err = fetch.communicate(timeout=120)
    assert fetch.returncode == 0, err
    first = next(line for line in err.splitlines() if " MB (" in line)
    assert not first.startswith(f"blob {blob_hash[:12]}: 0.0 "), f"did not resume: {first}"
    with open(out, "rb") as f:
        assert blake3.blake3(f.read()).hexdigest() == blob_hash


def test_fetch_errors_are_one_line(provider: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "in.bin").write_bytes(b"hello")
    _, ticket = add_blob(provider, tmp_path / "in.bin")
    env_run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "p2pnode", "--api", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            **STANDALONE_ENV,
            "IROH_BLOBS_PATH": str(tmp_path / "s"),
            "P2PNODE_CONNECT_TIMEOUT": "1",
        },
    )
    bad = env_run("blob", "get", ticket[:-3], "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: invalid blob ticket:")
    no_dir = env_run("blob", "get", ticket, "-o", str(tmp_path / "missing" / "x"))
    assert no_dir.returncode == 1 and "does not exist" in no_dir.stderr
    provider.stop()
    gone = env_run("blob", "get", ticket, "-o", str(tmp_path / "x"))
    assert gone.returncode == 1
    last = gone.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not fetch blob") and "Traceback" not in gone.stderr
