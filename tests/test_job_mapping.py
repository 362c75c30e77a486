"""A job's spec is mapped once per hop: CLI options -> submission (`job_cmds._submit`), submission
-> spec (`JobSubmission.to_spec`), spec -> executor request (`JobSpec.to_request`). Every field a
submitter sets must arrive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import pytest

from p2pnode.executors.base import ExecutionLimits
from p2pnode.executors.wasm import load_module_bytes
from p2pnode.ids import BlobHash, NodeId
from p2pnode.jobs import model
from p2pnode.jobs.submission import JobSubmission, SubmissionError
from p2pnode.labels import LabelRequirement
from tests.nodeproc import NodeProcess, submit_job

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

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


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node that runs nothing (`--max-jobs 0`): its jobs stay as the CLI submitted them."""
    started = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
    yield started
    started.kill()


def stored_spec(node: NodeProcess, *args: str) -> model.JobSpec:
    job_id = submit_job(node, *args)
    reply = httpx.get(f"{node.api}/jobs/{job_id}", headers=node.headers)
    return model.Job.model_validate_json(reply.content).spec


def blob_hash(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_cli_maps_every_option(origin: NodeProcess, tmp_path: Path) -> None:
    """CLI -> API (`job_cmds._submit`, which builds a `JobSubmission`): every option arrives."""
    text = tmp_path / "text.txt"
    text.write_text("some words\n")
    spec = stored_spec(
        origin, "--module", str(EXAMPLES / "echo.wat"), "--workflow", "sum", "--input", '{"n": 3}',
        "--artifact", f"text={text}", "--executor", "flawless", "--time-limit", "5", "--fuel",
        "1000", "--memory-mib", "2", "--require", "gpu", "--require", "zone=eu", "--attempts", "7",
    )  # fmt: skip
    assert spec.workflow == "sum" and spec.input == {"n": 3} and spec.command is None
    assert spec.module.hash == blake3.blake3(load_module_bytes(EXAMPLES / "echo.wat")).hexdigest()
    assert {name: ref.hash for name, ref in spec.artifacts.items()} == {"text": blob_hash(text)}
    assert spec.requirements == model.Requirements(
        executor="flawless",
        limits=ExecutionLimits(time_s=5, fuel=1000, memory_bytes=2 << 20),
        labels=[LabelRequirement(key="gpu"), LabelRequirement(key="zone", op="=", value="eu")],
    )
    assert spec.max_attempts == 7

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "x.txt").write_text("x\n")
    spec = stored_spec(
        origin, "--module", str(EXAMPLES / "command.wat"), "--env", "LANG=C", "--stdin", str(text),
        "--mount", f"data={folder}:/srv/data", "--mount", f"one={text}", "--", "0", "-v",
    )  # fmt: skip
    assert spec.command == model.Command(
        argv=["command.wat", "0", "-v"],
        env={"LANG": "C"},
        stdin=spec.command and spec.command.stdin,
    )
    assert spec.command.stdin is not None and spec.command.stdin.hash == blob_hash(text)
    assert {name: (m.directory, m.guest_path) for name, m in spec.mounts.items()} == {
        "data": (True, "/srv/data"),
        "one": (False, None),
    }
    assert spec.mounts["one"].source.hash == blob_hash(text)
    assert spec.workflow is None and spec.input is None and spec.requirements.executor == "wasi"


COMMAND = str(EXAMPLES / "command.wat")


@pytest.mark.slow
def test_the_cli_refuses_a_body_in_the_nodes_words(origin: NodeProcess) -> None:
    """The CLI checks the body it builds; what it says of a bad one is what the node answers."""
    for args, body, words in (
        (
            ["--command", "--input", "1"],
            {"module_blob": "a" * 64, "args": [], "input": 1},
            "command job takes args",
        ),
        (
            ["--mount", f"x={COMMAND}:/in/../x", "--", "0"],
            {
                "module_blob": "a" * 64,
                "mounts": {"x": {"blob": "a" * 64, "guest_path": "/in/../x"}},
            },
            "invalid mounts.x.guest_path",
        ),
    ):
        refused = origin.cli("job", "submit", "--module", COMMAND, *args, check=False)
        answer = httpx.post(f"{origin.api}/jobs", json=body, headers=origin.headers)
        assert answer.status_code == 422
        assert (refused.returncode, refused.stderr) == (2, f"error: {answer.json()['detail']}\n")
        assert words in refused.stderr
