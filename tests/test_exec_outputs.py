"""Outputs with any legal name (#8.6): nested files become outputs named by their relative path,
and a name that cannot be represented fails the job with a reason, never the worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import TypeAdapter, ValidationError

from p2pnode.executors.base import OutputName
from p2pnode.executors.wasm import WasiExecutor
from p2pnode.jobs.model import JobState, Report
from p2pnode.jobs.service import JobSubmission
from tests.test_exec_limits import failed, files_module, job_fixture  # noqa: F401  (fixture `job`)

output_name = TypeAdapter(OutputName)

NESTED = files_module(
    "(drop (call $mkdir (i32.const 4) $name0))"
    " (call $fill (call $create $name1) (i32.const 1)) (call $done)",
    ["sub", "sub/x y.txt"],
)


def writes(name: str) -> str:
    return files_module("(call $fill (call $create $name0) (i32.const 1)) (call $done)", [name])


@pytest.mark.parametrize(
    "name",
    ["a", "sub/x y.txt", "ünïcode/✓.txt", ".hidden/..x", "a\\b", "x" * 255 + "/" + "y" * 255],
)
def test_legal_output_names(name: str) -> None:
    assert output_name.validate_python(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/abs",
        "a/",
        "a//b",
        ".",
        "..",
        "a/../b",
        "./a",
        "a\0b",
        "tab\there",
        "new\nline",
        "del\x7f",
        "c1\x85",
        "bad\udcff",
        "x" * 256,
        "a/" * 256 + "b",
    ],
)
def test_illegal_output_names(name: str) -> None:
    with pytest.raises(ValidationError):
        output_name.validate_python(name)
    with pytest.raises(ValidationError):
        Report(
            job_id="job_" + "0" * 26,
            lease_token="0" * 32,
            ok=True,
            outputs={name: {"hash": "0" * 64, "size": 0, "root": "0" * 64}},
        )


async def test_nested_outputs_are_named_by_their_path(job: Any, tmp_path: Path) -> None:
    result = await WasiExecutor().run(job(NESTED))
    assert result.ok, result
    assert result.outputs == {"sub/x y.txt": tmp_path / "out" / "sub" / "x y.txt"}


async def test_unrepresentable_names_fail_the_job(job: Any, tmp_path: Path) -> None:
    error = failed(await WasiExecutor().run(job(writes("tab\there"), out="tab")))
    assert (
        error == "output 'tab\\there' cannot be published:"
        " output name must not contain control characters"
    )
    # A name that is not UTF-8 (a guest can't make one through WASI, but the folder is the host's).
    (tmp_path / "raw").mkdir()
    with open(os.fsencode(tmp_path / "raw") + b"/bad\xff", "wb") as raw:
        raw.write(b"x")
    error = failed(await WasiExecutor().run(job(writes("fine"), out="raw")))
    assert error == "output 'bad\\udcff' cannot be published: output name is not valid UTF-8"


async def test_symlinked_folder_in_out_is_not_followed(job: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("host file")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "escape").symlink_to(secret)
    result = await WasiExecutor().run(job(NESTED))
    assert result.ok and list(result.outputs) == ["sub/x y.txt"]


async def test_worker_reports_nested_outputs_and_fails_bad_names_cleanly(
    start_node, tmp_path: Path
) -> None:
    origin = await start_node(max_jobs=0)
    await start_node(join=origin.join_ticket())
    (tmp_path / "nested.wat").write_text(NESTED)
    (tmp_path / "bad.wat").write_text(writes("new\nline"))
    good = await origin.jobs.submit_files(
        JobSubmission(module=tmp_path / "nested.wat", max_attempts=1)
    )
    bad = await origin.jobs.submit_files(JobSubmission(module=tmp_path / "bad.wat", max_attempts=1))
    with trio.fail_after(30):
        done = await origin.jobs.wait(good.id)
        broken = await origin.jobs.wait(bad.id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    assert list(done.outputs) == ["sub/x y.txt"] and done.outputs["sub/x y.txt"].size == 65536
    assert broken is not None and broken.state == JobState.FAILED
    assert (
        broken.error == "output 'new\\nline' cannot be published:"
        " output name must not contain control characters"
    )
    with trio.fail_after(30):  # the origin brings the output home
        while not origin.blobs.store.has(done.outputs["sub/x y.txt"].hash):
            await trio.sleep(0.05)
