"""Mounts (#11.2): a file or a whole folder tree shipped as blobs (a folder as a manifest blob plus
its files' blobs) and visible read-only to a job, at /in/NAME or at a path of its choice."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import trio
from pydantic import ValidationError

from p2pnode.jobs.model import Job, JobSpec, JobState, Manifest, ManifestEntry, Mount
from p2pnode.jobs.service import JobSubmission, MountSubmission

CAT = Path(__file__).resolve().parent / "modules" / "cat.wat"
FILES = 200
"""Files in the mounted tree: hundreds, in nested folders."""


def tree(root: Path) -> dict[str, bytes]:
    files = {f"d{i % 4}/e{i % 3}/f{i}.txt": f"file {i}\n".encode() * (i + 1) for i in range(FILES)}
    files["same-a.bin"] = files["same-b.bin"] = b"identical" * 1000
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


async def ship(node, root: Path) -> str:
    """Upload a folder like `job submit --mount` does: its files, then their manifest."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        info = await node.blobs.store.add_path(path, pin=True)
        entries.append(
            ManifestEntry(
                path=path.relative_to(root).as_posix(),
                hash=info.hash,
                size=info.size,
                root=info.root,
            )
        )
    manifest = Manifest(files=entries).model_dump_json().encode()
    return (await node.blobs.store.add_bytes(manifest, pin=True)).hash


async def test_mounted_tree_and_file_are_read_only_at_their_paths(start_node, tmp_path) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    files = tree(tmp_path / "data")
    manifest = await ship(origin, tmp_path / "data")
    conf = await origin.blobs.store.add_bytes(b"key = value\n", pin=True)
    mounts = {
        "data": MountSubmission(blob=manifest, directory=True),
        "tree": MountSubmission(blob=manifest, directory=True, guest_path="/srv/tree"),
        "conf": MountSubmission(blob=conf.hash, guest_path="/etc/tool/tool.conf"),
    }
    # fds: 3 /in, 4 /out, 5 /tmp, then the other mounts by guest path: 6 /etc/tool, 7 /srv/tree
    reads = {
        ("3", "data/d1/e0/f177.txt"): files["d1/e0/f177.txt"],
        ("6", "tool.conf"): b"key = value\n",
        ("7", "same-b.bin"): files["same-b.bin"],
    }
    jobs = {
        key: await origin.jobs.submit_files(
            JobSubmission(module=CAT, args=list(key), mounts=mounts, max_attempts=1)
        )
        for key in reads
    }
    with trio.fail_after(60):
        for key, job in jobs.items():
            done = await origin.jobs.wait(job.id)
            assert done is not None and done.state == JobState.SUCCEEDED, (key, done)
            assert done.worker == worker.id
            with trio.fail_after(30):
                while not origin.blobs.store.has(done.outputs["stdout"].hash):
                    await trio.sleep(0.05)
            with origin.blobs.store.open_read(done.outputs["stdout"].hash) as f:
                assert f.read() == reads[key]


async def test_submission_checks_the_manifest_and_the_paths(start_node, tmp_path) -> None:
    from p2pnode.jobs.service import SubmissionError

    node = await start_node(max_jobs=0)
    missing = Manifest(files=[ManifestEntry(path="a", hash="1" * 64, size=1, root="1" * 64)])
    manifest = await node.blobs.store.add_bytes(missing.model_dump_json().encode(), pin=True)
    submission = JobSubmission(
        module=CAT, args=[], mounts={"m": MountSubmission(blob=manifest.hash, directory=True)}
    )
    with pytest.raises(SubmissionError, match="mount 'm' file 'a' blob 1+ is not on this node"):
        await node.jobs.submit_files(submission)
    not_json = await node.blobs.store.add_bytes(b"not json", pin=True)
    with pytest.raises(SubmissionError, match="the mount 'm' manifest is invalid"):
        await node.jobs.submit_files(
            JobSubmission(
                module=CAT,
                args=[],
                mounts={"m": MountSubmission(blob=not_json.hash, directory=True)},
            )
        )
    for guest in ("/out/x", "/tmp", "/", "/in", "rel", "/a/../b"):
        with pytest.raises(ValidationError):
            MountSubmission(blob=not_json.hash, guest_path=guest)


def test_inputs_may_not_hide_each_other() -> None:
    ref = {"hash": "0" * 64, "size": 1, "root": "0" * 64}
    base = {"module": ref, "artifacts": {"x": ref}}
    with pytest.raises(ValidationError, match="hidden"):
        JobSpec.model_validate({**base, "mounts": {"x": {"source": ref}}})
    with pytest.raises(ValidationError, match="hidden"):
        JobSpec.model_validate(
            {**base, "mounts": {"a": {"source": ref, "directory": True, "guest_path": "/in/x/y"}}}
        )
    with pytest.raises(ValidationError, match="into a folder"):
        Mount.model_validate({"source": ref, "guest_path": "/file"})
    JobSpec.model_validate({**base, "mounts": {"a": {"source": ref, "guest_path": "/in/xy/z"}}})


async def test_identical_files_and_unchanged_trees_are_fetched_once(start_node, tmp_path) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    files = tree(tmp_path / "a")
    # A second tree: a folder of the first, unchanged, and one new file.
    shutil.copytree(tmp_path / "a" / "d1", tmp_path / "b" / "d1")
    (tmp_path / "b" / "new.txt").write_bytes(b"only here\n")
    trees = {name: await ship(origin, tmp_path / name) for name in ("a", "b")}
    served = origin.blobs.provider

    async def run(mounts: dict[str, str], args: list[str]) -> Job:
        submission = JobSubmission(
            module=CAT,
            args=args,
            mounts={
                name: MountSubmission(blob=trees[t], directory=True) for name, t in mounts.items()
            },
            max_attempts=1,
        )
        job = await origin.jobs.submit_files(submission)
        with trio.fail_after(60):
            done = await origin.jobs.wait(job.id)
        assert done is not None and done.state == JobState.SUCCEEDED, done
        assert done.worker == worker.id
        return done

    first = await run({"data": "a"}, ["3", "data/same-a.bin"])
    # Every blob once: the module, the manifest, and each distinct file (same-a = same-b).
    distinct = {hashlib.sha256(data).digest(): len(data) for data in files.values()}
    assert served.served_bytes == (
        first.spec.module.size + first.spec.mounts["data"].source.size + sum(distinct.values())
    )
    before = served.served_bytes
    second = await run({"data": "a", "other": "b"}, ["3", "other/new.txt"])
    # The unchanged tree, the module and b's files already seen cost nothing: b's manifest and
    # its one new file are all the worker fetched.
    assert served.served_bytes - before == second.spec.mounts["other"].source.size + len(
        b"only here\n"
    )
