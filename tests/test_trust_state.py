"""Damaged state in the data folder: one `error:` line naming the file, or (one bad job row) a
skip and a log line."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from p2pnode.identity import load_or_create_secret_key
from p2pnode.jobs.model import BlobRef, JobSpec
from p2pnode.jobs.store import JobStore
from p2pnode.membership import ClusterIdentity, Membership
from tests.nodeproc import NodeProcess

START = ["start", "--http-port", "0", "--bind", "127.0.0.1:0", "--relay", "disabled"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder written by a real node that started and stopped cleanly."""
    data = tmp_path_factory.mktemp("pristine") / "data"
    node = NodeProcess(data)
    code, _ = node.stop()
    assert code == 0
    return data


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 7)
    for sidecar in path.parent.glob(path.name + "-*"):  # SQLite's -wal/-shm would otherwise win
        sidecar.unlink()


def folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        (
            "members.json",
            lambda p: p.write_text('{"members": {"' + "ab" * 32 + '": {"addr": '),
            " is damaged (Invalid JSON: EOF",
        ),
        (
            "members.json",
            lambda p: p.write_text('{"members": []}'),
            " is damaged (Input should be an object)",
        ),
        ("members.json", folder, " is damaged (Is a directory)"),
        ("cluster.json", garbage, " is damaged (Invalid JSON: expected value"),
        ("cluster.json", truncate, " is damaged (Invalid JSON: EOF"),
        (
            "cluster.json",
            lambda p: p.write_text('{"cluster_id": 7}'),
            " is damaged (Input should be a valid string)",
        ),
        ("secret.key", lambda p: p.write_bytes(b"not a key"), " is not a node key"),
        ("jobs.sqlite", garbage, ": file is not a database"),
        ("iroh-blobs/meta.sqlite", garbage, " is damaged (file is not a database)"),
    ],
    ids=[
        "members-truncated",
        "members-wrong-shape",
        "members-folder",
        "cluster-garbage",
        "cluster-truncated",
        "cluster-wrong-shape",
        "key-corrupt",
        "jobs-db-garbage",
        "blob-meta-garbage",
    ],
)
def test_damaged_state_file_is_one_error_line_naming_it(
    data: Path, name: str, damage, reason: str
) -> None:
    path = data / name
    if not path.exists():  # members.json appears only once a node has members
        path.write_text("{}")
    damage(path)
    result = subprocess.run(
        [sys.executable, "-m", "p2pnode", *START, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}{reason}") or lines[0].startswith("error: cannot"), (
        lines[0]
    )
    assert f"{path}{reason}" in lines[0], lines[0]


def spec() -> JobSpec:
    return JobSpec(module=BlobRef(hash="0" * 64, size=1, root="1" * 64))


def insert_damaged_row(db: Path, job_id: str, body: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO jobs VALUES (?, ?, 1, 'pending', 'wasi', 0, NULL, 0, 0, ?)",
            (job_id, "0" * 64, body),
        )


def quarantined(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, body FROM jobs_quarantine ORDER BY id").fetchall()


def test_damaged_job_rows_are_quarantined_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "jobs.sqlite"
    with JobStore(db) as store:
        good = store.submit("0" * 64, spec())
    insert_damaged_row(db, "job_truncated", good.model_dump_json()[:40])
    insert_damaged_row(db, "job_wrong_shape", '{"id": 7}')
    with JobStore(db) as store:
        assert [j.id for j in store.list(limit=10)] == [good.id]
        assert store.get("job_truncated") is None
        assert [j.id for j in store.claimable(("wasi",), origin="0" * 64)] == [good.id]
    damaged = [r for r in caplog.records if "jobs_quarantine" in r.getMessage()]
    assert len(damaged) == 2 and all("\n" not in r.getMessage() for r in damaged)
    assert [row[0] for row in quarantined(db)] == ["job_truncated", "job_wrong_shape"]
    caplog.clear()
    JobStore(db).close()  # quarantined once: the next open is quiet
    assert not [r for r in caplog.records if "jobs_quarantine" in r.getMessage()]


def test_node_starts_past_a_damaged_job_row(data: Path) -> None:
    insert_damaged_row(data / "jobs.sqlite", "job_broken", "{broken")
    node = NodeProcess(data)
    try:
        listing = node.cli("job", "ls")
        assert "job_broken" not in listing.stdout
    finally:
        code, err = node.stop()
    assert code == 0
    warnings = [line for line in err.splitlines() if "job_broken" in line]
    assert len(warnings) == 1 and "jobs_quarantine" in warnings[0] and "Traceback" not in err
    assert quarantined(data / "jobs.sqlite") == [("job_broken", "{broken")]


def test_secrets_are_written_owner_only(tmp_path: Path) -> None:
    """The node key and the join secret are the node's and the cluster's whole identity."""
    load_or_create_secret_key(tmp_path)
    membership = Membership(tmp_path, "aa" * 32)
    modes = {
        name: (tmp_path / name).stat().st_mode & 0o777 for name in ("secret.key", "cluster.json")
    }
    membership.adopt(ClusterIdentity.new())
    assert modes == {"secret.key": 0o600, "cluster.json": 0o600}
    assert (tmp_path / "cluster.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", [garbage, folder], ids=["garbage", "folder"])
def test_damaged_port_file_only_costs_the_preferred_port(data: Path, damage) -> None:
    """endpoint.json is a preference (the last UDP port), not state: damaged, the node still
    starts."""
    damage(data / "endpoint.json")
    node = NodeProcess(data)
    code, err = node.stop()
    assert code == 0
    assert "ignoring" in err and "endpoint.json" in err and "Traceback" not in err
