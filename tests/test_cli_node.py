"""The CLI against real node processes: a scheme-less --api, -v anywhere, pin/unpin/rm that say
what they did, a self-join explained, and a node-less `blob get` that leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from p2pnode.blobs.store import BlobStore
from tests.nodeproc import NodeProcess, run_cli

EXAMPLES = Path(__file__).parents[1] / "examples"

pytestmark = pytest.mark.slow

DEAD_API = "http://127.0.0.1:9"


@pytest.fixture
def node(tmp_path: Path):
    node = NodeProcess(
        tmp_path / "data"
    )  # named like the default ./data, to tempt a standalone fetch
    yield node
    node.kill()


def test_api_without_scheme_and_verbose_after_the_subcommand(node: NodeProcess) -> None:
    result = run_cli(
        "--api", node.api.removeprefix("http://"), "--data", str(node.data_dir), "status", "-v"
    )
    assert result.stdout.startswith(f"node      {node.id}\n")
    assert f"GET {node.api}/status: HTTP 200 in " in result.stderr
    quiet = node.cli("status")
    assert quiet.stderr == ""


def test_pin_unpin_rm_say_what_they_did(node: NodeProcess, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"pin me")
    blob_hash = node.cli("blob", "add", str(tmp_path / "f")).stdout.split()[1]
    assert node.cli("blob", "unpin", blob_hash).stdout == f"unpinned {blob_hash}\n"
    assert node.cli("blob", "pin", blob_hash).stdout == f"pinned {blob_hash}\n"
    assert node.cli("blob", "rm", "--force", blob_hash).stdout == f"removed {blob_hash}\n"

    missing = node.cli("blob", "pin", blob_hash, check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"error: blob {blob_hash} is not in the store\n",
    )
    assert "pinned" not in node.cli("blob", "ls").stdout
    mistyped = node.cli("blob", "pin", "abc", check=False)
    assert mistyped.returncode == 2 and mistyped.stderr.startswith("error: invalid blob_hash: "), (
        mistyped.stderr
    )
    assert mistyped.stderr.count("\n") == 1


def test_self_join_is_explained(node: NodeProcess) -> None:
    result = run_cli("start", "--data", str(node.data_dir), "--join", node.ticket, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: this join ticket was printed by this node ({node.id[:10]}) itself;"
        " to join a cluster, pass a ticket of another node"
    ]


def standalone_get(
    ticket: str, out: Path, cwd: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IROH_BLOBS_PATH"}
    env |= {
        "P2PNODE_RELAY": "disabled",
        "P2PNODE_BIND": "127.0.0.1:0",
        "XDG_CACHE_HOME": str(cache),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "p2pnode",
            "--api",
            DEAD_API,
            "blob",
            "get",
            ticket,
            "-o",
            str(out),
            "-v",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_standalone_get_leaves_no_hidden_copy(node: NodeProcess, tmp_path: Path) -> None:
    """Run where ./data is a running node's (locked) store: the fetch must neither use nor blame
    it."""
    data = os.urandom(2_500_000)
    (tmp_path / "in.bin").write_bytes(data)
    added = dict(
        line.split(": ", 1)
        for line in node.cli("blob", "add", str(tmp_path / "in.bin")).stdout.splitlines()
    )
    blob_hash, ticket = added["hash"].strip(), added["ticket"].strip()
    stored_before = sorted((tmp_path / "data").rglob("*"))
    cache = tmp_path / "cache"

    result = standalone_get(ticket, tmp_path / "out.bin", tmp_path, cache)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    assert (
        f"fetching blob {blob_hash[:12]} (2500000 bytes) from provider {node.id[:10]}"
        in result.stderr
    )
    assert f"dialling provider {node.id[:10]} at 127.0.0.1:" in result.stderr
    assert sorted((tmp_path / "data").rglob("*")) == stored_before
    assert list((cache / "p2pnode" / "blobs" / "data").iterdir()) == []  # used, then emptied

    with BlobStore(
        cache / "p2pnode" / "blobs"
    ):  # another fetch holds the cache: a temporary store serves
        again = standalone_get(ticket, tmp_path / "again.bin", tmp_path, cache)
    assert again.returncode == 0, again.stderr
    assert (
        "is already open in another process; fetching through a temporary store instead"
        in again.stderr
    )
    assert (tmp_path / "again.bin").read_bytes() == data


def test_nothing_from_the_data_folder_is_shared(node: NodeProcess, tmp_path: Path) -> None:
    """The node's key, secrets and token never become blobs, however the CLI is asked."""
    key = node.data_dir / "secret.key"
    for args in (
        ["blob", "add", str(key)],
        ["job", "submit", "--module", str(EXAMPLES / "command.wat"), "--stdin", str(key)],
        [
            "job",
            "submit",
            "--module",
            str(EXAMPLES / "command.wat"),
            "--mount",
            f"d={node.data_dir}",
        ],
    ):
        refused = node.cli(*args, check=False)
        assert refused.returncode == 2, (args, refused.stderr)
        assert (
            refused.stderr.startswith("error: refusing to share ")
            and refused.stderr.count("\n") == 1
        )
    assert blake3.blake3(key.read_bytes()).hexdigest() not in node.cli("blob", "ls").stdout
