"""Blobs added in place: no copy, served from the user's file, verified on every read, missing
(never wrong) once the file changes, kept across a restart."""

from __future__ import annotations

import os
from contextlib import aclosing
from pathlib import Path

import blake3
import pytest
import trio

import tickets
from p2pnode.blobs.blocks import BLOCK_SIZE
from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.store import BlobCorrupt, BlobNotFound, BlobStore, StoreError
from tests.conftest import cli_argv

SIZE = 3 * BLOCK_SIZE + 12345


def write_random(path: Path, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def flip_byte_keeping_stat(path: Path, offset: int) -> None:
    """Change one byte but keep size and mtime: only the per-block check can notice."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def read_all(store: BlobStore, blob_hash: str) -> bytes:
    async with aclosing(store.read_range(blob_hash)) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def test_in_place_add_copies_nothing_and_survives_reopen(
    store: BlobStore, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big.bin")
    info = await store.add_in_place(tmp_path / "big.bin", pin=True)
    assert info.hash == blake3.blake3(data).hexdigest() and info.size == SIZE and info.pinned
    assert os.listdir(store.root / "data") == []  # no copy
    assert await read_all(store, info.hash) == data
    store.close()
    store = await BlobStore.open(store.root)
    try:
        assert store.has(info.hash)
        assert [b.hash for b in await store.list()] == [info.hash]
        await store.export(info.hash, tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == data
        assert await store.verify(info.hash)
    finally:
        store.close()


async def test_changed_content_is_never_served(store: BlobStore, tmp_path: Path) -> None:
    data = write_random(tmp_path / "big.bin")
    info = await store.add_in_place(tmp_path / "big.bin")
    flip_byte_keeping_stat(tmp_path / "big.bin", 2 * BLOCK_SIZE + 7)
    served = bytearray()
    with pytest.raises(BlobCorrupt):
        async with aclosing(store.read_range(info.hash)) as chunks:
            async for chunk in chunks:
                served += chunk
    assert served == data[: 2 * BLOCK_SIZE]  # the good blocks before it, nothing of the bad one
    assert not store.has(info.hash)  # marked missing
    with pytest.raises(BlobNotFound):
        await store.info(info.hash)


async def test_changed_file_marks_the_blob_missing(store: BlobStore, tmp_path: Path) -> None:
    write_random(tmp_path / "big.bin")
    info = await store.add_in_place(tmp_path / "big.bin")
    with open(tmp_path / "big.bin", "ab") as f:
        f.write(b"more")
    assert not store.has(info.hash)
    with pytest.raises(BlobNotFound, match="changed"):
        await read_all(store, info.hash)
    with pytest.raises(BlobNotFound):
        await store.export(info.hash, tmp_path / "out.bin")
    assert os.listdir(store.root / "external") == os.listdir(store.root / "blocks") == []


async def test_recovery_forgets_a_file_that_changed_while_closed(
    store: BlobStore, tmp_path: Path
) -> None:
    write_random(tmp_path / "big.bin")
    info = await store.add_in_place(tmp_path / "big.bin")
    store.close()
    (tmp_path / "big.bin").unlink()
    reopened = await BlobStore.open(store.root)
    try:
        assert not reopened.has(info.hash)
        assert os.listdir(reopened.root / "external") == []
        assert os.listdir(reopened.root / "blocks") == []
    finally:
        reopened.close()


async def test_a_copy_replaces_the_in_place_record_and_removal_keeps_the_file(
    store: BlobStore, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "big.bin")
    info = await store.add_in_place(tmp_path / "big.bin")
    await store.remove(info.hash)
    assert (tmp_path / "big.bin").read_bytes() == data  # the user's file is never deleted
    await store.add_in_place(tmp_path / "big.bin")
    await store.add_bytes(data)
    assert os.listdir(store.root / "external") == []
    flip_byte_keeping_stat(tmp_path / "big.bin", 0)
    assert await read_all(store, info.hash) == data  # from the store's own copy now


async def test_in_place_refuses_what_is_not_a_regular_file(
    store: BlobStore, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StoreError, match="not a regular file"):
        await store.add_in_place(tmp_path / "fifo")
    with pytest.raises(StoreError):
        await store.add_in_place(tmp_path)


async def test_fetch_from_an_in_place_provider_then_the_file_changes(
    start_node, tmp_path: Path
) -> None:
    a = await start_node()
    b = await start_node(join=a.join_ticket())
    data = write_random(tmp_path / "big.bin")
    info = await a.blobs.add_in_place(tmp_path / "big.bin")
    assert os.listdir(a.settings.blobs_dir / "data") == []
    await b.blobs.materialize(info.hash, [a.addr()], tmp_path / "got.bin", root=info.root)
    assert (tmp_path / "got.bin").read_bytes() == data

    flip_byte_keeping_stat(tmp_path / "big.bin", BLOCK_SIZE + 1)
    c = await start_node(join=a.join_ticket())
    with pytest.raises(FetchError):
        await c.blobs.fetch(info.hash, [a.addr()], root=info.root)
    assert not c.blobs.store.has(info.hash)
    assert not a.blobs.store.has(info.hash)  # the provider marked it missing
    progress = await c.blobs.store.partial_progress(info.hash)
    # at most the block before the change (the reset may drop it in flight), never the bad one
    assert progress is not None and progress.blocks_done <= 1


async def test_cli_add_in_place(start_node, tmp_path: Path) -> None:
    node = await start_node()
    data = write_random(tmp_path / "big.bin")

    async def cli(*args: str) -> trio.Process:
        with trio.fail_after(60):
            return await trio.run_process(
                [*cli_argv(node), *args], capture_stdout=True, capture_stderr=True, check=False
            )

    added = await cli("blob", "add", "--in-place", str(tmp_path / "big.bin"))
    assert added.returncode == 0, added.stderr
    out = dict(line.split(": ", 1) for line in added.stdout.decode().strip().splitlines())
    assert out["hash"].strip() == blake3.blake3(data).hexdigest()
    assert tickets.parse_blob(out["ticket"].strip()).size == SIZE
    assert os.listdir(node.settings.blobs_dir / "data") == []
    assert (await node.blobs.info(out["hash"].strip())).pinned

    secret = node.settings.data_dir / "api-token"
    refused = await cli("blob", "add", "--in-place", str(secret))
    assert refused.returncode == 2 and b"data folder" in refused.stderr
    assert b"Traceback" not in refused.stderr


async def test_api_in_place_refuses_what_path_add_refuses(node, api, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    fifo = await api.post("/blobs", json={"path": str(tmp_path / "fifo"), "in_place": True})
    assert fifo.status_code == 400 and "regular file" in fifo.json()["detail"]
    token = str(node.settings.data_dir / "api-token")
    secret = await api.post("/blobs", json={"path": token, "in_place": True})
    assert secret.status_code == 403
    data = write_random(tmp_path / "ok.bin", 1000)
    added = await api.post("/blobs", json={"path": str(tmp_path / "ok.bin"), "in_place": True})
    assert added.status_code == 200, added.text
    assert (await api.get(f"/blobs/{added.json()['blob']['hash']}")).content == data
    assert os.listdir(node.settings.blobs_dir / "data") == []
