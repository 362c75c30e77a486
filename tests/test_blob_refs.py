"""The refs table (tags and pins): what is fsynced, and what a blob's description costs (and
how `blob ls` shows a blob that thousands of jobs hold)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pnode.blobs.refs import TAGS_LISTED, RefTable
from p2pnode.blobs.store import BlobStore
from p2pnode.jobs.model import job_tag, new_job_id
from tests.nodeproc import NodeProcess

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_tag_costs_no_fsync_and_a_pin_does(tmp_path: Path) -> None:
    """Job submits tag their blobs (no fsync: the job store's own durability, see refs.py); a
    person's pin is fsynced before it returns."""
    script = textwrap.dedent(
        f"""
        import os
        from p2pnode.blobs.refs import RefTable
        refs = RefTable({str(tmp_path / "meta.sqlite")!r})
        os.access("/mark-tags", os.F_OK)
        for n in range(20):
            refs.set_tag(f"job/{{n}}/module", "ab" * 32)
        os.access("/mark-pin", os.F_OK)
        refs.pin("cd" * 32)
        os.access("/mark-end", os.F_OK)
        """
    )
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=fsync,fdatasync,access"]
        + [sys.executable, "-c", script],
        cwd=REPO,
        check=True,
    )
    phase, syncs = "open", {"open": 0, "tags": 0, "pin": 0, "end": 0}
    for line in trace.read_text().splitlines():
        if "/mark-" in line:
            phase = line.partition("/mark-")[2].partition('"')[0]
        elif "fsync(" in line or "fdatasync(" in line:
            syncs[phase] += 1
    assert syncs["tags"] == 0
    assert syncs["pin"] >= 1


def opcodes(refs: RefTable, call: Callable[[], object]) -> int:
    """SQLite VM instructions `call` runs: grows with the rows it reads, whatever the load."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    refs._db.set_progress_handler(tick, 1)
    try:
        call()
    finally:
        refs._db.set_progress_handler(None, 1)
    return count


def test_describing_a_blob_costs_the_same_at_10_and_5000_tags(tmp_path: Path) -> None:
    refs = RefTable(tmp_path / "meta.sqlite")
    few, many = "aa" * 32, "bb" * 32
    for n in range(5000):
        refs.set_tag(f"job/{n:05}/module", many)
        if n < 10:
            refs.set_tag(f"job/{n:05}/input", few)
    assert refs.of(many) == (False, tuple(f"job/{n:05}/module" for n in range(TAGS_LISTED)), 5000)
    assert opcodes(refs, lambda: refs.of(many)) <= opcodes(refs, lambda: refs.of(few))
    assert opcodes(refs, lambda: refs.keeps(many)) <= opcodes(refs, lambda: refs.keeps(few))
    refs.close()


def test_tag_counts_follow_every_change_and_are_rebuilt_for_an_older_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta.sqlite"
    old = sqlite3.connect(path)  # version 0: no counts
    old.executescript(
        """
        CREATE TABLE tags (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
        CREATE INDEX tags_by_hash ON tags (hash);
        CREATE TABLE pins (hash TEXT PRIMARY KEY);
        INSERT INTO tags VALUES ('a', 'h1'), ('b', 'h1'), ('c', 'h2');
        """
    )
    old.close()
    refs = RefTable(path)
    assert [refs.of(h).tag_count for h in ("h1", "h2", "h3")] == [2, 1, 0]
    refs.set_tag("c", "h1")  # moved
    refs.set_tag("a", "h1")  # unchanged
    refs.set_tag("d", "h3")
    assert [refs.of(h).tag_count for h in ("h1", "h2", "h3")] == [3, 0, 1]
    assert not refs.keeps("h2")
    assert refs.delete_tag("b")
    refs.drop("h3")
    assert [refs.of(h).tag_count for h in ("h1", "h3")] == [2, 0]
    refs.close()
    assert RefTable(path).of("h1") == (False, ("a", "c"), 2)  # reopened


def test_tag_counts_are_right_again_after_the_previous_release_ran_on_the_table(
    tmp_path: Path,
) -> None:
    """A downgrade and an upgrade: the previous release moves a tag with INSERT OR REPLACE on a
    table that has this version's triggers; the count it leaves behind is too high."""
    path = tmp_path / "meta.sqlite"
    refs = RefTable(path)
    refs.set_tag("job/1/module", "h1")
    refs.close()
    previous = sqlite3.connect(path)
    previous.execute("INSERT OR REPLACE INTO tags VALUES ('job/1/module', 'h2')")
    previous.commit()
    previous.close()
    refs = RefTable(path)
    assert [refs.of(h).tag_count for h in ("h1", "h2")] == [0, 1]
    assert not refs.keeps("h1")
    refs.close()


async def test_blob_ls_names_the_first_jobs_of_a_blob_many_jobs_hold(tmp_path: Path) -> None:
    store = await BlobStore.open(tmp_path / "node" / "iroh-blobs")
    shared = await store.add_bytes(b"a module every job used")
    alone = await store.add_bytes(b"one job's input")
    jobs = sorted(new_job_id() for _ in range(TAGS_LISTED + 12))
    for job_id in jobs:
        await store.set_tag(job_tag(job_id, "module"), shared.hash)
    await store.set_tag(job_tag(jobs[0], "input"), alone.hash)
    store.close()
    node = NodeProcess(tmp_path / "node")
    try:
        listing = {
            line.split()[0]: line.split()[2:] for line in node.cli("blob", "ls").stdout.splitlines()
        }
    finally:
        node.kill()
    first = ",".join(jobs[:TAGS_LISTED])
    assert listing[shared.hash] == ["-", f"{len(jobs)}", "tags:", f"{first},..."]
    assert listing[alone.hash] == ["-", jobs[0]]
