"""A job's spec is mapped once per hop: submission -> spec (`JobSubmission.to_spec`), spec ->
executor request (`JobSpec.to_request`). Every field a submitter sets must arrive."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pnode.executors.base import ExecutionLimits
from p2pnode.ids import BlobHash, NodeId
from p2pnode.jobs import model
from p2pnode.jobs.service import JobSubmission, SubmissionError
from p2pnode.labels import LabelRequirement

ORIGIN = NodeId("0" * 64)


def ref(digit: str) -> model.BlobRef:
    return model.BlobRef(
        hash=BlobHash(digit * 64), size=3, root=BlobHash(digit * 64), providers=[ORIGIN]
    )


def test_workflow_submission_maps_every_field() -> None:
    limits = ExecutionLimits(time_s=5, fuel=1000, memory_bytes=1 << 20)
    require = [LabelRequirement(key="gpu"), LabelRequirement(key="zone", op="=", value="eu")]
    submission = JobSubmission(
        module_blob=BlobHash("a" * 64),
        workflow="main",
        input={"n": 3},
        executor="flawless",
        limits=limits,
        require=require,
        max_attempts=7,
    )
    spec = submission.to_spec(
        module=ref("a"), artifacts={"data": ref("b")}, input_blob=None, stdin=None, mounts={}
    )
    assert spec.workflow == "main"
    assert spec.module == ref("a")
    assert spec.input == {"n": 3} and spec.input_blob is None
    assert spec.artifacts == {"data": ref("b")}
    assert spec.command is None
    assert spec.requirements == model.Requirements(
        executor="flawless", limits=limits, labels=require
    )
    assert spec.max_attempts == 7


def test_large_input_travels_as_its_blob_only() -> None:
    submission = JobSubmission(module_blob=BlobHash("a" * 64), input=[1, 2, 3])
    spec = submission.to_spec(
        module=ref("a"), artifacts={}, input_blob=ref("c"), stdin=None, mounts={}
    )
    assert spec.input is None and spec.input_blob == ref("c")


def test_command_submission_and_its_request(tmp_path: Path) -> None:
    submission = JobSubmission(
        module_blob=BlobHash("a" * 64), argv0="tool", args=["-v"], env={"HOME": "/tmp"}
    )
    spec = submission.to_spec(
        module=ref("a"), artifacts={}, input_blob=None, stdin=ref("d"), mounts={}
    )
    assert spec.command == model.Command(argv=["tool", "-v"], env={"HOME": "/tmp"}, stdin=ref("d"))

    request = spec.to_request(
        module=tmp_path / "module.wasm",
        input=None,
        stdin=tmp_path / "stdin",
        mounts={"/data": tmp_path / "mounts" / "data"},
        artifacts_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        scratch_dir=tmp_path / "scratch",
    )
    assert request.module_path == tmp_path / "module.wasm"
    assert request.module_hash == "a" * 64
    assert request.command is not None
    assert request.command.argv == ["tool", "-v"]
    assert request.command.env == {"HOME": "/tmp"}
    assert request.command.stdin == tmp_path / "stdin"
    assert request.mounts == {"/data": tmp_path / "mounts" / "data"}
    assert (request.artifacts_dir, request.output_dir, request.scratch_dir) == (
        tmp_path / "in",
        tmp_path / "out",
        tmp_path / "scratch",
    )
    assert request.limits == spec.requirements.limits


def test_workflow_request_carries_the_input_and_workflow(tmp_path: Path) -> None:
    spec = JobSubmission(module_blob=BlobHash("a" * 64), workflow="sum").to_spec(
        module=ref("a"), artifacts={}, input_blob=None, stdin=None, mounts={}
    )
    request = spec.to_request(
        module=tmp_path / "m.wasm",
        input={"from": "blob"},
        stdin=None,
        mounts={},
        artifacts_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        scratch_dir=tmp_path / "scratch",
    )
    assert request.workflow == "sum" and request.input == {"from": "blob"}
    assert request.command is None


def test_a_spec_the_model_refuses_is_one_submission_error() -> None:
    submission = JobSubmission(module_blob=BlobHash("a" * 64))
    with pytest.raises(SubmissionError, match="would be hidden"):
        submission.to_spec(
            module=ref("a"),
            artifacts={"data": ref("b")},
            input_blob=None,
            stdin=None,
            mounts={"data": model.Mount(source=ref("c"), guest_path="/in/data/x")},
        )
