"""Scenario: blobs between node processes through the CLI, kill -9 and resume, clear errors."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import blake3
import pytest
import trio

from p2pnode.blobs.store import BlobStore
from tests.nodeproc import NodeProcess, run_cli

pytestmark = pytest.mark.slow

NO_CAPS = ("unshare", "--user")
"""Runs a command in a user namespace of its own: as root, it keeps its uid but loses its
capabilities outside, so files of other users are closed to it, as to an ordinary user."""
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


def cli_add(node: NodeProcess, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`blob add -v` against `node`, run here (outside any prefix the node runs in)."""
    return run_cli(
        "-v", "--api", node.api, "--data", str(node.data_dir), "blob", "add", *args, **kwargs
    )


def added_hash(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.split("hash:", 1)[1].split()[0]


def test_blob_add_has_the_node_read_the_file_it_can_see(
    provider: NodeProcess, tmp_path: Path
) -> None:
    data = os.urandom(5_000_000)
    (tmp_path / "in.bin").write_bytes(data)
    result = cli_add(provider, str(tmp_path / "in.bin"))
    assert added_hash(result) == blake3.blake3(data).hexdigest()
    assert f"the node read {tmp_path / 'in.bin'} itself" in result.stderr
    assert "PUT " not in result.stderr and "uploading" not in result.stderr

    # The node's data folder stays refused, by the CLI and, for a CLI that does not know that
    # folder, by the node, which then gets nothing uploaded either.
    secret = provider.data_dir / "api-token"
    refused = cli_add(provider, str(secret), check=False)
    assert refused.returncode == 2 and "inside the node's data folder" in refused.stderr
    token = secret.read_text().strip()
    elsewhere = run_cli(
        "--api", provider.api, "--api-token", token, "blob", "add", str(secret), check=False
    )
    assert elsewhere.returncode == 1, elsewhere.stderr
    assert elsewhere.stderr.strip().splitlines() == [
        f"error: refused: {secret} is inside the node's data folder or blob store"
    ]
    assert blake3.blake3(token.encode()).hexdigest() not in provider.cli("blob", "ls").stdout

    # A file the CLI cannot read is one clear line.
    prefix = unreadable(tmp_path / "theirs.bin")
    refused = cli_add(provider, str(tmp_path / "theirs.bin"), check=False, prefix=prefix)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "not readable" in refused.stderr


def unreadable(path: Path) -> tuple[str, ...]:
    """Make `path` a file the CLI cannot read; returns the prefix to run the CLI with (root
    reads everything, so as root the CLI runs without its capabilities)."""
    path.write_bytes(b"not yours")
    path.chmod(0o600)
    if os.geteuid() != 0:
        path.chmod(0)
        return ()
    if not unshare_works():
        pytest.skip("as root, needs unshare and user namespaces")
    os.chown(path, 65534, 65534)
    return NO_CAPS


def unshare_works() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run([*NO_CAPS, "true"], capture_output=True).returncode == 0
    )


def test_blob_add_uploads_what_the_node_cannot_see_as_the_cli_does(tmp_path: Path) -> None:
    """The node in another mount namespace (another container's view of the same path) and as
    another user: wherever it does not open the CLI's very file, the CLI uploads that file."""
    if not unshare_works():
        pytest.skip("needs unshare and user namespaces")
    mine, theirs, hidden = tmp_path / "mine.bin", tmp_path / "theirs.bin", tmp_path / "hidden"
    mine.write_bytes(os.urandom(3_000_000))
    theirs.write_bytes(os.urandom(3_000_000))
    hidden.mkdir()
    (hidden / "x.bin").write_bytes(b"the node cannot see this folder's content")
    # The node's view: `theirs` mounted over `mine`, an empty folder over `hidden`.
    remount = 'mount --bind "$1" "$2" && mount -t tmpfs none "$3" && shift 3 && exec "$@"'
    node = NodeProcess(
        tmp_path / "node",
        prefix=("unshare", "-Urm", "sh", "-c", remount, "sh", str(theirs), str(mine), str(hidden)),
    )
    try:
        for path in (mine, hidden / "x.bin"):
            result = cli_add(node, str(path))
            assert added_hash(result) == blake3.blake3(path.read_bytes()).hexdigest()
            assert "uploading it" in result.stderr and "PUT " in result.stderr
        in_place = cli_add(node, "--in-place", str(mine), check=False)
        assert in_place.returncode == 1
        assert in_place.stderr.strip().splitlines()[-1] == (
            f"error: {mine} is not the caller's file where the node sees it; "
            "--in-place needs a node on this machine that can read the file"
        )
        assert blake3.blake3(theirs.read_bytes()).hexdigest() not in node.cli("blob", "ls").stdout
    finally:
        node.kill()


def test_blob_add_uploads_a_file_the_node_may_not_read(tmp_path: Path) -> None:
    """The node as a user who may not read the file (root without its capabilities, the file
    another user's): the CLI, which may, uploads it."""
    if os.geteuid() != 0 or not unshare_works():
        pytest.skip("needs root (a file of another user) and user namespaces")
    mine = tmp_path / "mine.bin"
    mine.write_bytes(os.urandom(3_000_000))
    mine.chmod(0o600)
    os.chown(mine, 65534, 65534)
    node = NodeProcess(tmp_path / "node", prefix=NO_CAPS)
    try:
        result = cli_add(node, str(mine))
        assert added_hash(result) == blake3.blake3(mine.read_bytes()).hexdigest()
        assert "Permission denied); uploading it" in result.stderr
    finally:
        node.kill()


class _PreviousVersionNode(http.server.BaseHTTPRequestHandler):
    """A node of the version before path adds with `expect`: its API refuses the unknown field
    (422, as pydantic's extra="forbid" does) and takes uploads."""

    uploaded: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(422, {"detail": [{"loc": ["body", "expect"], "msg": "Extra inputs"}]})

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.uploaded.append(data)
        h = blake3.blake3(data).hexdigest()
        self._answer(200, {"blob": {"hash": h, "size": len(data), "root": h}, "ticket": "blob1"})

    def _answer(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_blob_add_uploads_to_a_node_of_the_previous_version(tmp_path: Path) -> None:
    """Right after an upgrade the running node is still the old one: `blob add` must still work."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PreviousVersionNode)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        src = tmp_path / "file"
        src.write_bytes(os.urandom(5000))
        api = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli(
            "--data",
            str(tmp_path / "data"),
            "--api",
            api,
            "--api-token",
            "t",
            "blob",
            "add",
            str(src),
        )
        assert f"hash:   {blake3.blake3(src.read_bytes()).hexdigest()}" in result.stdout
        assert _PreviousVersionNode.uploaded == [src.read_bytes()]
    finally:
        server.shutdown()
        serving.join()
