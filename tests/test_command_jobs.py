"""Command jobs (#11.1, #11.4): ordinary WASI programs with argv, env and stdin, their stdout and
stderr as outputs, outputs kept on failure; a scratch /tmp; in the runner and between nodes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trio
from pydantic import ValidationError

from p2pnode.executors.base import MIB, ExecutionRequest, Invocation
from p2pnode.executors.wasm import WasiExecutor
from p2pnode.jobs.model import JobState
from p2pnode.jobs.service import JobSubmission
from tests.test_exec_limits import files_module

COMMAND = Path(__file__).resolve().parent.parent / "examples" / "command.wat"


def request(tmp_path: Path, *args: str, module: Path = COMMAND, **command: Any) -> ExecutionRequest:
    return ExecutionRequest(
        module_path=module,
        module_hash=hashlib.sha256(module.read_bytes()).hexdigest(),
        artifacts_dir=tmp_path / "in",
        output_dir=tmp_path / "out",
        scratch_dir=tmp_path / "scratch",
        command=Invocation(argv=["command.wat", *args], **command),
    )


async def test_command_gets_argv_env_stdin_and_keeps_its_streams(tmp_path: Path) -> None:
    stdin = tmp_path / "stdin.txt"
    stdin.write_bytes(b"from stdin\n")
    req = request(tmp_path, "0", "two words", env={"GREETING": "hello", "EMPTY": ""}, stdin=stdin)
    result = await WasiExecutor().run(req)
    assert result.ok and result.result == {"exit_code": 0}, result
    assert sorted(result.outputs) == ["stderr", "stdout", "sub/f.txt"]
    # Exactly the given argv and env: nothing of the worker's own environment.
    stdout = "command.wat\n0\ntwo words\nGREETING=hello\nEMPTY=\nfrom stdin\n"
    assert result.outputs["stdout"].read_text() == stdout
    assert result.outputs["stderr"].read_text() == "done\n" == result.logs
    assert result.outputs["sub/f.txt"].read_text() == "partial\n"
    assert not (tmp_path / "scratch" / "tmp").exists()  # /tmp was writable, and is gone


async def test_failed_command_keeps_exit_code_and_outputs(tmp_path: Path) -> None:
    result = await WasiExecutor().run(request(tmp_path, "3"))
    assert not result.ok and result.error == "command exited with code 3"
    assert result.result == {"exit_code": 3}
    assert sorted(result.outputs) == ["stderr", "stdout", "sub/f.txt"]
    assert result.outputs["stdout"].read_text() == "command.wat\n3\n"


async def test_command_streams_count_against_the_output_maximum(tmp_path: Path) -> None:
    stdin = tmp_path / "stdin.txt"
    stdin.write_bytes(b"x" * 4096)
    executor = WasiExecutor(maxima=WasiExecutor().maxima.model_copy(update={"output_bytes": 1000}))
    result = await executor.run(request(tmp_path, stdin=stdin))
    assert not result.ok and result.outputs == {}
    assert result.error == "outputs exceed this node's limit of 1000 bytes"


async def test_tmp_is_bounded_like_the_outputs(tmp_path: Path) -> None:
    endless = files_module("(call $fill (call $create $name0) (i32.const -1))", ["big"])
    module = tmp_path / "fill-tmp.wat"  # the same writer, into /tmp (fd 5) instead of /out
    module.write_text(
        endless.replace("(call $path_open (i32.const 4)", "(call $path_open (i32.const 5)")
    )
    executor = WasiExecutor(maxima=WasiExecutor().maxima.model_copy(update={"output_bytes": MIB}))
    with trio.fail_after(60):
        result = await executor.run(request(tmp_path, module=module))
    assert result.error == f"/tmp exceeds this node's limit of {MIB} bytes"
    assert not (tmp_path / "scratch" / "tmp").exists()


async def test_command_names_its_missing_start(tmp_path: Path) -> None:
    module = tmp_path / "reactor.wat"
    module.write_text('(module (func (export "work")))')
    result = await WasiExecutor().run(request(tmp_path, module=module))
    assert result.error == "a command job needs a module that exports _start"


def test_submission_refuses_a_command_with_a_workflow_or_input() -> None:
    with pytest.raises(ValidationError, match="not workflow or input"):
        JobSubmission(module=COMMAND, args=["x"], input={"a": 1})
    with pytest.raises(ValidationError, match="wasi executor"):
        JobSubmission(module=COMMAND, env={"A": "b"}, executor="flawless")
    with pytest.raises(ValidationError):
        JobSubmission(module=COMMAND, env={"A=B": "c"})
    assert JobSubmission(module=COMMAND, args=[]).argv() == ["command.wat"]


async def test_command_job_between_nodes_keeps_outputs_of_a_failure(start_node) -> None:
    origin = await start_node(max_jobs=0)
    worker = await start_node(join=origin.join_ticket())
    stdin = await origin.blobs.store.add_bytes(b"piped\n", pin=True)
    jobs = {
        code: await origin.jobs.submit_files(
            JobSubmission(
                module=COMMAND,
                args=[code],
                env={"K": "V"},
                stdin_blob=stdin.hash,
                max_attempts=1,
            )
        )
        for code in ("0", "3")
    }
    with trio.fail_after(60):
        done = {code: await origin.jobs.wait(job.id) for code, job in jobs.items()}
    ok, failed = done["0"], done["3"]
    assert ok is not None and ok.state == JobState.SUCCEEDED and ok.result == {"exit_code": 0}
    assert failed is not None and failed.state == JobState.FAILED, failed
    assert failed.result == {"exit_code": 3} and failed.error == "command exited with code 3"
    assert failed.worker == worker.id
    # One compilation for both jobs, kept in the worker's data folder for its next start.
    assert len(list((worker.settings.data_dir / "compiled").glob("*.cwasm"))) == 1
    assert worker.jobs.worker.executors["wasi"].compilations == 1
    # The worker's compile time (or its cache hit) is in each job's history.
    notes = sorted(
        e.note for job in done.values() if job for e in job.history if "compile" in e.note
    )
    assert notes[0] == "compile cache hit" and notes[1].startswith("compiled in "), notes
    assert len(notes) == 2
    assert sorted(failed.outputs) == ["stderr", "stdout", "sub/f.txt"]
    # The origin brings a failed job's outputs home too.
    stdout = failed.outputs["stdout"]
    with trio.fail_after(30):
        while not all(origin.blobs.store.has(ref.hash) for ref in failed.outputs.values()):
            await trio.sleep(0.05)
    with origin.blobs.store.open_read(stdout.hash) as f:
        assert f.read() == b"command.wat\n3\nK=V\npiped\n"


async def test_a_failed_command_is_retried_like_any_failure(start_node) -> None:
    origin = await start_node(max_jobs=0)
    await start_node(join=origin.join_ticket())
    job = await origin.jobs.submit_files(JobSubmission(module=COMMAND, args=["3"], max_attempts=2))
    with trio.fail_after(90):  # one back-off (5 s) between the attempts
        done = await origin.jobs.wait(job.id)
    assert done is not None and done.state == JobState.FAILED and done.attempts == 2, done
    notes = [event.note for event in done.history if event.note.startswith("attempt failed")]
    assert notes[0].startswith("attempt failed; retry after ")
    assert notes[1:] == ["attempt failed; 2 attempts exhausted"]
    assert done.result == {"exit_code": 3} and done.error == "command exited with code 3"
    assert sorted(done.outputs) == ["stderr", "stdout", "sub/f.txt"]  # the last attempt's


async def test_the_compile_time_limit_is_a_node_setting(start_node) -> None:
    node = await start_node(max_compile_s=0.001)  # far below starting the compiler
    job = await node.jobs.submit_files(JobSubmission(module=COMMAND, args=["0"], max_attempts=1))
    with trio.fail_after(60):
        done = await node.jobs.wait(job.id)
    assert done is not None and done.state == JobState.FAILED, done
    assert done.error == "compiling the module took longer than the limit of 0.001 s"
    assert done.spec.requirements.limits.time_s == 60  # the run's own limit is another
