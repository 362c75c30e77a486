"""The blob store may live outside the data folder (IROH_BLOBS_PATH), so it is private on its own:
created 0700 with a 0600 lock, and a store left 0755 by an older version is tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pnode.blobs.store import BlobStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual umask 022, whatever the test runner's is, so the modes come from the code."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_a_new_store_is_private(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere" / "blobs"
    with await BlobStore.open(root) as store:
        await store.add_bytes(b"a private file's content")
        assert mode(root) == 0o700
        assert mode(root / "lock") == 0o600
        assert {mode(d) for d in root.iterdir() if d.is_dir()} == {0o700}


async def test_an_existing_loose_store_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    BlobStore(root).close()
    os.chmod(root, 0o755)
    with BlobStore(root):
        assert mode(root) == 0o700
