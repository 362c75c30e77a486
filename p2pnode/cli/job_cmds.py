"""`p2pnode job ...`: submit WebAssembly jobs to the cluster and follow them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, get_args

import click
from pydantic import RootModel, ValidationError

from p2pnode.api.blob_schemas import BlobAdded
from p2pnode.api.client import ApiClient
from p2pnode.api.schemas import JobsSubmitted, JobView, invalid_request
from p2pnode.blobs.model import BlobInfo
from p2pnode.cli import EXIT_USAGE, cli, fail
from p2pnode.cli.blob_cmds import download, upload
from p2pnode.cli.terminal import echo_output, for_terminal
from p2pnode.executors.base import DEFAULT_FUEL, ExecutionLimits, ExecutorKind
from p2pnode.ids import BlobHash
from p2pnode.jobs.model import Job, JobState, Manifest, ManifestEntry
from p2pnode.jobs.submission import (
    BATCH_BYTES,
    MAX_BATCH_JOBS,
    JobSubmission,
    MountSubmission,
)
from p2pnode.labels import MAX_REQUIREMENTS, LabelRequirement

WAIT_POLL_S = 30.0
FOLLOW_POLL_S = 1.0
"""How long the node holds one wait while state changes are shown: they show within this."""


class _JobList(RootModel[list[Job]]):
    pass


class _Outputs(RootModel[dict[str, BlobInfo]]):
    pass


@cli.group()
def job() -> None:
    """WebAssembly jobs: submit, list, show, wait, cancel, fetch outputs.

    \b
    Examples:
      p2pnode job submit --module examples/wordcount.wat --artifact text=README.md --wait
      p2pnode job submit --module tool.wasm --env LANG=C --stdin in.txt --wait -- -v x.txt
      p2pnode job run --module tool.wasm --mount data=./data -o out/ -- ARG...
      p2pnode job ls --state running
      p2pnode job show ID; p2pnode job wait ID; p2pnode job cancel ID
      p2pnode job get ID -o out/                     the output files of a finished job
    """


def _parse_input(value: str | None) -> Any:
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            fail(f"cannot read --input file {value[1:]}: {exc.strerror}", EXIT_USAGE)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", EXIT_USAGE)


def _parse_artifacts(values: tuple[str, ...]) -> dict[str, Path]:
    artifacts = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            fail(f"--artifact wants NAME=PATH, got {value!r}", EXIT_USAGE)
        if not Path(path).is_file():
            fail(f"--artifact {name}: no file at {path}", EXIT_USAGE)
        artifacts[name] = Path(path)
    return artifacts


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            fail(f"--env wants NAME=VALUE, got {value!r}", EXIT_USAGE)
        env[name] = setting
    return env


def _parse_requirements(values: tuple[str, ...]) -> list[LabelRequirement]:
    if len(values) > MAX_REQUIREMENTS:
        fail(f"--require: at most {MAX_REQUIREMENTS} requirements", EXIT_USAGE)
    try:
        return [LabelRequirement.parse(value) for value in values]
    except ValueError as exc:
        fail(f"--require: {exc}", EXIT_USAGE)


def _upload_mounts(api: ApiClient, values: tuple[str, ...]) -> dict[str, MountSubmission]:
    """`NAME=PATH[:GUEST_PATH]` each: a file as its blob, a folder as the blob of its manifest
    plus one blob per file (an unchanged file or tree uploads to the same blobs)."""
    mounts: dict[str, MountSubmission] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        path, colon, guest = rest.rpartition(":/")
        path, guest_path = (path, "/" + guest) if colon else (rest, None)
        source = Path(path)
        if not sep or not name or not path:
            fail(f"--mount wants NAME=PATH[:GUEST_PATH], got {value!r}", EXIT_USAGE)
        if source.is_file():
            blob = upload(api, source, pin=False).blob.hash
        elif source.is_dir():
            blob = _upload_tree(api, name, source)
        else:
            fail(f"--mount {name}: no file or folder at {path}", EXIT_USAGE)
        try:
            mounts[name] = MountSubmission(
                blob=blob, directory=source.is_dir(), guest_path=guest_path
            )
        except ValidationError as exc:
            fail(invalid_request(exc.errors(), ("body", "mounts", name)), EXIT_USAGE)
    return mounts


def _upload_tree(api: ApiClient, name: str, folder: Path) -> BlobHash:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    try:
        entries = [
            ManifestEntry(
                path=path.relative_to(folder).as_posix(),
                **upload(api, path, pin=False).blob.model_dump(include={"hash", "size", "root"}),
            )
            for path in files
        ]
        manifest = Manifest(files=entries).model_dump_json().encode()
    except ValidationError as exc:
        fail(f"--mount {name}: cannot ship {folder}: {exc.errors()[0]['msg']}", EXIT_USAGE)
    added = api.upload("/blobs", [manifest], len(manifest), BlobAdded, params={"pin": False})
    return added.blob.hash


def _module_bytes(module: Path) -> bytes:
    """The module as a WebAssembly binary; `.wat` text is assembled here, before it travels."""
    from p2pnode.executors.wasm import InvalidModule, load_module_bytes

    try:
        return load_module_bytes(module)
    except (OSError, InvalidModule) as exc:
        fail(f"cannot use module {module}: {exc}", EXIT_USAGE)


_JOB_OPTIONS = [
    click.option(
        "--module",
        "module",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="The module: .wasm binary or .wat text.",
    ),
    click.option(
        "--artifact",
        "artifacts",
        multiple=True,
        metavar="NAME=PATH",
        help="Input file, visible to the job as /in/NAME. Repeatable.",
    ),
    click.option(
        "--mount",
        "mounts",
        multiple=True,
        metavar="NAME=PATH[:GUEST_PATH]",
        help="A file or a whole folder, read-only at GUEST_PATH (default /in/NAME). Repeatable.",
    ),
    click.option(
        "--env",
        "env",
        multiple=True,
        metavar="NAME=VALUE",
        help="Command mode: an environment variable (the only ones it sees). Repeatable.",
    ),
    click.option(
        "--stdin",
        "stdin",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Command mode: a file whose bytes are the program's stdin.",
    ),
    click.option(
        "--time-limit",
        type=click.FloatRange(min=0, min_open=True),
        default=60.0,
        show_default=True,
        help="Seconds one attempt may run.",
    ),
    click.option(
        "--fuel",
        type=click.IntRange(min=1),
        default=DEFAULT_FUEL,
        show_default=True,
        help="WASM instructions (fuel) one attempt may use; generous, so the time limit governs.",
    ),
    click.option(
        "--memory-mib",
        type=click.IntRange(min=1),
        default=256,
        show_default=True,
        help="Memory one attempt may use.",
    ),
    click.option(
        "--require",
        "require",
        multiple=True,
        metavar="KEY=VALUE|KEY!=VALUE|KEY",
        help="Run only on a worker with this label (!=: without it; KEY: any value). Repeatable.",
    ),
    click.option(
        "--attempts",
        type=click.IntRange(1, 100),
        default=3,
        show_default=True,
        help="Attempts before the job fails for good.",
    ),
    click.argument("args", nargs=-1),
]
_Command = TypeVar("_Command", bound=Callable[..., None])


def _job_options(f: _Command) -> _Command:
    """The options `job submit` and `job run` share."""
    for option in reversed(_JOB_OPTIONS):
        f = option(f)
    return f


def _submit(api: ApiClient, **options: Any) -> Job:
    """Upload what the job needs and submit it (see `_submission`)."""
    submission = _submission(api, **options)
    return api.post("/jobs", Job, json=submission.model_dump(mode="json"))


def _submission(
    api: ApiClient,
    *,
    module: Path,
    artifacts: tuple[str, ...],
    mounts: tuple[str, ...],
    env: tuple[str, ...],
    stdin: Path | None,
    time_limit: float,
    fuel: int,
    memory_mib: int,
    attempts: int,
    require: tuple[str, ...],
    args: tuple[str, ...],
    command: bool,
    workflow: str | None = None,
    input_: str | None = None,
    executor: str = "wasi",
) -> JobSubmission:
    """Upload what the job needs and say what to submit; a command job runs
    `[module name, *args]`.

    The body is the API's own model, so a field renamed on either side fails mypy; it is checked
    here, after the uploads, and refused in the words the node would use."""
    job_input = _parse_input(input_)
    artifact_paths = _parse_artifacts(artifacts)
    environment = _parse_env(env)
    requirements = _parse_requirements(require)
    wasm = _module_bytes(module)
    stdin_blob = None
    if command and stdin is not None:
        stdin_blob = upload(api, stdin, pin=False).blob.hash
    module_blob = api.upload("/blobs", [wasm], len(wasm), BlobAdded, params={"pin": False})
    artifact_blobs = {
        name: upload(api, path, pin=False).blob.hash for name, path in artifact_paths.items()
    }
    mount_blobs = _upload_mounts(api, mounts)
    limits = ExecutionLimits(time_s=time_limit, fuel=fuel, memory_bytes=memory_mib << 20)
    try:
        submission = JobSubmission(
            module_blob=module_blob.blob.hash,
            workflow=workflow,
            input=job_input,
            artifact_blobs=artifact_blobs,
            mounts=mount_blobs,
            executor=executor,
            limits=limits,
            max_attempts=attempts,
            require=requirements,
            args=list(args) if command else None,
            argv0=module.name if command else None,
            env=environment if command else {},
            stdin_blob=stdin_blob,
        )
    except ValidationError as exc:
        fail(invalid_request(exc.errors(), ("body",)), EXIT_USAGE)
    return submission


def _read_inputs(source: str) -> list[Any]:
    """One job input per line of a JSON Lines file (`-`: stdin); blank lines are skipped."""
    try:
        lines = sys.stdin.readlines() if source == "-" else Path(source).read_text().splitlines()
    except OSError as exc:
        fail(f"cannot read --inputs file {source}: {exc.strerror}", EXIT_USAGE)
    except UnicodeDecodeError:
        fail(f"--inputs {source} is not UTF-8 text", EXIT_USAGE)
    inputs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            inputs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            fail(f"--inputs {source} line {number} is not JSON: {exc.msg}", EXIT_USAGE)
    if not inputs:
        fail(f"--inputs {source} holds no job input", EXIT_USAGE)
    return inputs


def _submit_many(api: ApiClient, template: JobSubmission, inputs: list[Any]) -> list[str]:
    """The same job once per input, up to `MAX_BATCH_JOBS` or `BATCH_BYTES` to a request (each
    request all or none)."""
    body = template.model_dump(mode="json", exclude={"input"})
    entry_bytes = len(json.dumps(body))
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for value in inputs:
        length = entry_bytes + len(json.dumps(value))
        if batch and (len(batch) == MAX_BATCH_JOBS or size + length > BATCH_BYTES):
            ids += api.post("/jobs/batch", JobsSubmitted, json=batch).ids
            batch, size = [], 0
        batch.append({**body, "input": value})
        size += length
    return ids + api.post("/jobs/batch", JobsSubmitted, json=batch).ids


@job.command()
@_job_options
@click.option(
    "--workflow", help="Workflow to run; may be left out when the module has exactly one."
)
@click.option(
    "--input",
    "input_",
    metavar="JSON|@FILE",
    help="Job input as JSON, or @file to read it from a file.",
)
@click.option(
    "--executor",
    type=click.Choice(get_args(ExecutorKind)),
    default="wasi",
    show_default=True,
    help="wasi: the embedded runner (every node has it); "
    "flawless: a worker's local Flawless server.",
)
@click.option(
    "--command",
    "command",
    is_flag=True,
    help="Run the module as a command even without ARGS, --env or --stdin.",
)
@click.option(
    "--inputs",
    metavar="FILE.jsonl|-",
    help="Submit the job once per line of this JSON Lines file (-: stdin), each line its input, "
    "all in one request; prints the ids in order.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the job to finish and show its result (on a terminal, its state changes too).",
)
@click.pass_obj
def submit(
    api: ApiClient, /, command: bool, inputs: str | None, wait: bool, **options: Any
) -> None:
    """Submit a job; prints its id. The module and artifacts travel to the worker as blobs.

    With ARGS, --env, --stdin or --command the module runs as an ordinary WASI program
    (command mode): argv is the module's file name and ARGS, stdout and stderr become the
    outputs `stdout` and `stderr`, the result is {"exit_code": N} and exit code 0 is success.

    \b
    p2pnode job submit --module examples/wordcount.wat --artifact text=README.md --wait
    p2pnode job submit --module tool.wasm --env K=V --stdin in.txt --wait -- -v ARG
    p2pnode job submit --module sweep.wasm --inputs params.jsonl     one job per line
    """
    command = command or bool(options["args"] or options["env"] or options["stdin"])
    if inputs is not None:
        if command or wait or options["input_"] is not None:
            fail("--inputs goes without --input, --wait and command mode", EXIT_USAGE)
        values = _read_inputs(inputs)
        for job_id in _submit_many(api, _submission(api, command=False, **options), values):
            click.echo(job_id)
        return
    submitted = _submit(api, command=command, **options)
    click.echo(submitted.id)
    if wait:
        _finish(_wait(api, submitted.id, progress=sys.stderr.isatty()))


@job.command()
@_job_options
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the outputs, stdout and stderr.  [default: out/JOB_ID]",
)
@click.option("--force", is_flag=True, help="Overwrite output files that exist.")
@click.pass_obj
def run(api: ApiClient, /, output: Path | None, force: bool, **options: Any) -> None:
    """Run a WASI program on the cluster, like `wasmtime run`: submit it as a command job, show
    its state changes (on stderr), wait, and write its outputs (with `stdout` and `stderr`) into
    a folder. Exits 0 when the program exited 0, 1 otherwise.

    \b
    p2pnode job run --module tool.wasm --mount data=./data -o out/ -- --input /in/data/x.txt
    """
    submitted = _submit(api, command=True, **options)
    click.echo(submitted.id)
    done = _wait(api, submitted.id, progress=True)
    if done.state != JobState.CANCELLED:
        _get_outputs(api, done.id, output or Path("out", done.id), force=force)
    _finish(done)


@job.command(name="ls")
@click.option(
    "--state", type=click.Choice([s.value for s in JobState]), help="Only jobs in this state."
)
@click.pass_obj
def list_jobs(api: ApiClient, state: str | None) -> None:
    """List jobs this node knows, newest first.

    \b
    Example:
      p2pnode job ls --state failed
    """
    params = {"state": state} if state else {}
    for j in api.get("/jobs", _JobList, params=params).root:
        echo_output(
            f"{j.id}  {j.state.value:9}  attempts {j.attempts}  "
            f"{j.spec.workflow or '-':12}  origin {j.origin[:10]}"
        )


@job.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The whole job record as JSON.")
@click.pass_obj
def show(api: ApiClient, job_id: str, as_json: bool) -> None:
    """Show one job: state, attempts, result, outputs, logs.

    \b
    Example:
      p2pnode job show job_01M8CRH8D5H83H6EVKWEVXEHTJ --json
    """
    j = api.get(f"/jobs/{job_id}", JobView)
    if as_json:
        click.echo(j.model_dump_json(indent=2))
        return
    click.echo(f"job       {j.id}")
    click.echo(f"state     {j.state.value}  (attempts {j.attempts} of {j.spec.max_attempts})")
    click.echo(f"origin    {j.origin}")
    click.echo(f"worker    {j.worker or '-'}")
    echo_output(
        f"executor  {j.spec.requirements.executor}  workflow {j.spec.workflow or '(only one)'}"
    )
    if requirements := j.spec.requirements.labels:
        click.echo(f"requires  {', '.join(str(r) for r in requirements)}")
    if j.waiting_for:
        click.echo(f"waiting   {j.waiting_for}")
    if j.result is not None:
        click.echo(f"result    {json.dumps(j.result)}")
    if j.error:
        echo_output(f"error     {j.error}")
    for name, ref in j.outputs.items():
        click.echo(f"output    {name}  {ref.hash}  {ref.size} bytes")
    if j.logs:
        echo_output("logs:\n" + j.logs.rstrip())


def _wait(api: ApiClient, job_id: str, *, progress: bool = False) -> Job:
    """Long-poll until the job ends; say once on stderr if the node knows it cannot start. With
    `progress`, also each state change as it happens, one line each on stderr (pending, claimed
    by a worker, running, succeeded or failed; a failure's reason follows from `_finish`)."""
    poll = FOLLOW_POLL_S if progress else WAIT_POLL_S
    j = api.get(f"/jobs/{job_id}", JobView)
    told = False
    shown: set[tuple[float, str]] = set()  # not just the latest time: a claim starts at once
    while True:
        for event in j.history if progress else ():
            if (event.at, event.state) not in shown:
                echo_output(f"{job_id}  {event.state.value}  {event.note}".rstrip(), err=True)
                shown.add((event.at, event.state))
        if j.state.terminal:
            return j
        if j.waiting_for and not told:
            click.echo(f"waiting: {j.waiting_for}", err=True)
            told = True
        j = api.post(f"/jobs/{job_id}/wait", JobView, params={"timeout": poll}, timeout=poll + 10)


def _finish(j: Job) -> None:
    if j.state == JobState.SUCCEEDED:
        click.echo(json.dumps(j.result))
        return
    fail(for_terminal(f"job {j.id} {j.state.value}: {j.error or 'no reason given'}", err=True))


@job.command()
@click.argument("job_id", metavar="ID")
@click.pass_obj
def wait(api: ApiClient, job_id: str) -> None:
    """Wait for a job to end; print its result.

    Exits 0 when the job succeeded, 1 when it failed or was cancelled.

    \b
    Example:
      p2pnode job wait job_01M8CRH8D5H83H6EVKWEVXEHTJ && echo done
    """
    _finish(_wait(api, job_id))


@job.command()
@click.argument("job_id", metavar="ID")
@click.pass_obj
def cancel(api: ApiClient, job_id: str) -> None:
    """Cancel a job that has not finished.

    \b
    Example:
      p2pnode job cancel job_01M8CRH8D5H83H6EVKWEVXEHTJ
    """
    click.echo(api.post(f"/jobs/{job_id}/cancel", Job).state.value)


@job.command(name="rm")
@click.argument("job_id", metavar="ID")
@click.option("--force", is_flag=True, help="Cancel the job first if it has not finished.")
@click.pass_obj
def remove(api: ApiClient, job_id: str, force: bool) -> None:
    """Forget a finished job; the blobs only it held go at the next `blob gc`.

    A job that has not finished is refused unless --force, which cancels it first. Finished jobs
    are also removed P2PNODE_JOB_RETENTION days (default 7) after they end.

    \b
    Example:
      p2pnode job rm job_01M8CRH8D5H83H6EVKWEVXEHTJ
    """
    api.delete(f"/jobs/{job_id}", Job, params={"force": force})
    click.echo(f"removed {job_id}")


@job.command()
@click.argument("job_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the output files.",
)
@click.option("--force", is_flag=True, help="Overwrite output files that exist.")
@click.pass_obj
def get(api: ApiClient, job_id: str, output: Path, force: bool) -> None:
    """Fetch a finished job's output files into a folder (a failed one's are those of its last
    attempt: a command's partial outputs, stdout and stderr).

    \b
    Example:
      p2pnode job get job_01M8CRH8D5H83H6EVKWEVXEHTJ -o out/
    """
    _get_outputs(api, job_id, output, force=force)


def _get_outputs(api: ApiClient, job_id: str, output: Path, *, force: bool) -> None:
    outputs = api.post(f"/jobs/{job_id}/outputs", _Outputs, timeout=None).root
    targets = {name: output_path(output, name) for name in outputs}
    for name, info in outputs.items():
        download(api, info.hash, targets[name], force=force)
        click.echo(f"{name}  -> {targets[name]}")


def output_path(folder: Path, name: str) -> Path:
    """Where output `name` goes inside `folder`: it may name subfolders (`sub/x.txt`), never
    leave the folder."""
    parts = PurePosixPath(name).parts
    if (
        not parts
        or PurePosixPath(name).is_absolute()
        or any(part in ("..", ".") for part in parts)
        or "\\" in name
    ):
        fail(f"refusing output name {name!r}: it would leave the output folder")
    return folder.joinpath(*parts)
