"""The node's own periodic upkeep against real failures of the disk under it."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2pnode import node as node_module

pytestmark = pytest.mark.trio


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Folders made immutable (`chattr +i`: nothing in them can be removed, not even by root),
    made mutable again after the test."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


async def test_a_failing_periodic_gc_is_logged_and_the_node_keeps_running(
    start_node, monkeypatch, caplog, immutable
) -> None:
    """A GC pass that cannot delete a blob (a read-only or failing disk) is one warning, and the
    next pass tries again; it used to end the node with a traceback, 10 min after its start."""
    monkeypatch.setattr(node_module, "GC_INTERVAL_S", 0.05)
    node = await start_node()
    blob = await node.blobs.store.add_bytes(b"nothing keeps this", pin=False)
    data = node.settings.blobs_dir / "data"
    made = await trio.run_process(["chattr", "+i", str(data)], capture_stderr=True, check=False)
    if made.returncode != 0:
        pytest.skip("chattr +i is not possible here (needs root and a filesystem that has it)")
    immutable.append(data)
    caplog.set_level(logging.WARNING, logger="p2pnode.node")

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "blob GC failed" in r.getMessage()]

    with trio.fail_after(30):
        while len(failures()) < 2:
            await trio.sleep(0.05)
    assert "Operation not permitted" in failures()[0] and "\n" not in failures()[0]
    assert node.blobs.store.has(blob.hash)
    await trio.run_process(["chattr", "-i", str(data)])
    with trio.fail_after(30):
        while node.blobs.store.has(blob.hash):
            await trio.sleep(0.05)
