"""A data folder written by the previous release (main at 04733df, before session 4's changes)
still opens: every file is built here by hand, byte for byte as that release wrote it (read off
its code, not by running it), and today's store and node open it and mean the same.

What changed on disk since that release, and why it still opens: the refs database gained a
(hash, name) index and per-hash tag counts kept by triggers (`refs.SCHEMA_VERSION` 1; a version 0
file is rebuilt once); an in-place record's model was refactored (the same JSON keys); partial
downloads are written with O_DIRECT (the same files); members.json is written less often (the
same JSON). The jobs table, job records, node key, cluster, endpoint, drain flag, API token and
compile cache are unchanged (a compiled artifact another wasmtime made is compiled again).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import time
from pathlib import Path

import blake3
import httpx
import iroh

from p2pnode.blobs.store import BlobStore
from p2pnode.ids import BlobHash

MIB = 1 << 20
_SIZE = struct.Struct(">Q")


def _hash(content: bytes) -> BlobHash:
    return BlobHash(blake3.blake3(content).hexdigest())


def _block_list(content: bytes) -> bytes:
    """The old `BlockList.to_bytes()`: u64 size, then each 1 MiB block's BLAKE3."""
    blocks = [content[i : i + MIB] for i in range(0, len(content), MIB)]
    return _SIZE.pack(len(content)) + b"".join(blake3.blake3(b).digest() for b in blocks)


def _old_blob_store(root: Path, outside: Path) -> dict[str, BlobHash]:
    """A stored blob (pinned, two tags), a blob added in place, a download one block in, and a
    version 0 refs database."""
    for folder in ("data", "external", "blocks", "tmp", "partial"):
        (root / folder).mkdir(parents=True)
    stored = b"hello from the previous release\n"
    h_stored = _hash(stored)
    (root / "data" / h_stored).write_bytes(stored)
    (root / "blocks" / h_stored).write_bytes(_block_list(stored))

    in_place = b"shared where it lies\n"
    h_in_place = _hash(in_place)
    outside.write_bytes(in_place)
    st = outside.stat()
    record = {
        "path": str(outside),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }
    (root / "external" / h_in_place).write_text(json.dumps(record))
    (root / "blocks" / h_in_place).write_bytes(_block_list(in_place))

    fetched = os.urandom(MIB) + b"the last block"
    h_fetched = _hash(fetched)
    data = bytearray(len(fetched))
    data[:MIB] = fetched[:MIB]
    (root / "partial" / f"{h_fetched}.data").write_bytes(data)
    (root / "partial" / f"{h_fetched}.state").write_bytes(
        b"p2pnode-partial-v1\n"
        + bytes.fromhex(h_fetched)
        + _block_list(fetched)
        + _SIZE.pack(0)  # block 0 written
    )

    db = sqlite3.connect(root / "meta.sqlite")
    db.executescript(
        f"""
        PRAGMA journal_mode = WAL;
        CREATE TABLE tags (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
        CREATE INDEX tags_by_hash ON tags (hash);
        CREATE TABLE pins (hash TEXT PRIMARY KEY);
        INSERT INTO tags VALUES ('job/a/module', '{h_stored}'), ('job/b/module', '{h_stored}');
        INSERT INTO pins VALUES ('{h_stored}');
        """
    )
    db.close()
    return {"stored": h_stored, "in_place": h_in_place, "fetched": h_fetched, "rest": fetched}


async def test_a_blob_store_of_the_previous_release_opens(tmp_path: Path) -> None:
    old = _old_blob_store(tmp_path / "blobs", tmp_path / "shared.txt")
    store = await BlobStore.open(tmp_path / "blobs")
    try:
        info = await store.info(old["stored"])
        assert (info.pinned, info.tags, info.tag_count) == (
            True,
            ("job/a/module", "job/b/module"),
            2,
        )
        assert await store.verify(old["stored"])
        assert await store.verify(old["in_place"])  # read through its record, block by block
        progress = await store.partial_progress(old["fetched"])
        assert progress is not None and progress.blocks_done == 1
        with await store.partial(old["fetched"]) as download:  # resumed, not restarted
            assert download.missing_blocks() == [1]
            await download.write_block(1, old["rest"][MIB:])
            committed = await download.commit()
        assert committed.hash == old["fetched"] and await store.verify(old["fetched"])
    finally:
        store.close()


def _old_node_folder(data: Path) -> dict[str, str]:
    """Key, cluster, a member, last port, drain flag, API token, node.json, a finished job in the
    job store, and a compiled artifact of another wasmtime."""
    data.mkdir(mode=0o700)
    key = iroh.SecretKey.from_bytes(bytes(range(1, 33)))
    (data / "secret.key").write_bytes(key.to_bytes())
    node_id = key.public().to_bytes().hex()
    cluster_id, member = "0f" * 16, "ab" * 32
    (data / "cluster.json").write_text(
        json.dumps({"cluster_id": cluster_id, "join_secret": "1e" * 32})
    )
    now = time.time()
    (data / "members.json").write_text(
        json.dumps(
            {
                "cluster_id": cluster_id,
                "members": {
                    member: {
                        "addr": {
                            "node_id": member,
                            "relay_url": None,
                            "direct_addresses": ["127.0.0.1:9"],
                        },
                        "joined_at": now - 3600,
                        "last_seen": now - 60,
                    }
                },
                "removed": [],
            },
            indent=2,
        )
    )
    (data / "endpoint.json").write_text(json.dumps({"port": 1}))  # taken: a fresh port, no harm
    (data / "draining").write_bytes(b"")
    (data / "api-token").write_text("old-token-from-the-previous-release\n")
    (data / "node.json").write_text(
        json.dumps({"id": node_id, "api_url": "http://127.0.0.1:3020", "pid": 1})
    )

    job_id = "job_01M8CRH8D5H83H6EVKWEVXEHTJ"
    ref = {"hash": "c1" * 32, "size": 12, "root": "d2" * 32, "providers": [node_id]}
    body = {
        "id": job_id,
        "origin": node_id,
        "spec": {
            "workflow": "main",
            "module": ref,
            "input": {"n": 1},
            "input_blob": None,
            "artifacts": {},
            "command": None,
            "mounts": {},
            "requirements": {
                "executor": "wasi",
                "limits": {"time_s": 60.0, "memory_bytes": 268435456, "fuel": 10**12},
                "labels": [{"key": "gpu", "op": "=", "value": "yes"}],
            },
            "max_attempts": 3,
        },
        "state": "succeeded",
        "attempts": 1,
        "lease": None,
        "not_before": 0.0,
        "result": {"words": 3},
        "error": None,
        "outputs": {"count.txt": ref},
        "logs": "",
        "worker": member,
        "created_at": now - 120,
        "updated_at": now - 100,
        "finished_at": now - 100,
        "history": [{"at": now - 100, "state": "succeeded", "note": "succeeded"}],
    }
    db = sqlite3.connect(data / "jobs.sqlite")
    db.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE jobs (id TEXT PRIMARY KEY, origin TEXT NOT NULL, local INTEGER NOT NULL,
            state TEXT NOT NULL, executor TEXT NOT NULL, not_before REAL NOT NULL,
            lease_expires_at REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            body TEXT NOT NULL);
        CREATE INDEX jobs_state ON jobs (state, not_before);
        CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
        CREATE INDEX jobs_origin ON jobs (origin, created_at);
        CREATE INDEX jobs_created ON jobs (created_at);
        PRAGMA user_version = 1;
        """
    )
    db.execute(
        "INSERT INTO jobs VALUES (?, ?, 1, 'succeeded', 'wasi', 0.0, NULL, ?, ?, ?)",
        (job_id, node_id, now - 120, now - 100, json.dumps(body)),
    )
    db.commit()
    db.close()
    (data / "compiled").mkdir()
    (data / "compiled" / f"{'c1' * 32}-0123456789abcdef.cwasm").write_bytes(b"other wasmtime")
    return {"id": node_id, "member": member, "job": job_id}


async def test_a_node_data_folder_of_the_previous_release_opens(start_node, tmp_path: Path) -> None:
    old = _old_node_folder(tmp_path / "node1")  # the folder `start_node` gives its first node
    node = await start_node()
    assert node.id == old["id"]
    async with httpx.AsyncClient(
        base_url=node.api_url, headers={"Authorization": f"Bearer {node.api_token}"}
    ) as api:
        assert node.api_token == "old-token-from-the-previous-release"
        status = (await api.get("/status")).json()
        assert status["jobs"]["draining"] is True
        assert [m["id"] for m in (await api.get("/members")).json()] == [old["member"]]
        job = (await api.get(f"/jobs/{old['job']}")).json()
        assert (job["state"], job["result"], job["spec"]["requirements"]["labels"]) == (
            "succeeded",
            {"words": 3},
            [{"key": "gpu", "op": "=", "value": "yes"}],
        )
    assert json.loads((tmp_path / "node1" / "node.json").read_text())["api_url"] == node.api_url
