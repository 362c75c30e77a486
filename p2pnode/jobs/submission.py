"""A job as a person submits it: the body of `POST /jobs`, which the CLI builds and the origin
maps to a `JobSpec` (`JobSubmission.to_spec`).

Light on purpose (pydantic and the light models of jobs, executors and labels), so the CLI builds
the API's own model: a field renamed on one side fails mypy, not a user.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from p2pnode.executors.base import ExecutionLimits
from p2pnode.ids import BlobHashField
from p2pnode.jobs import model
from p2pnode.labels import MAX_REQUIREMENTS, LabelRequirement

MAX_BATCH_JOBS = 10_000
"""Jobs one batch submit (`POST /jobs/batch`) may hold; the request body's own bound (17 MiB)
usually comes first."""
BATCH_BYTES = 8 << 20
"""What the CLI puts in one batch request at most (a single larger entry goes alone): well
inside the API's bound on a JSON body (`api.auth.MAX_JSON_BODY`, 17 MiB), so a sweep of large
inputs is never refused halfway, after its first requests were taken."""


class MountSubmission(BaseModel):
    """A file or folder uploaded as blobs, visible read-only to the job at `guest_path`
    (default `/in/NAME`)."""

    model_config = ConfigDict(extra="forbid")

    blob: BlobHashField
    """The file's blob, or for a folder the blob of its `model.Manifest` (JSON)."""
    directory: bool = False
    guest_path: model.GuestPath | None = None


class JobSubmission(BaseModel):
    """A job as a person submits it: local files or blobs already in the node's store, which
    the node pins and references. Exactly one of `module` and `module_blob`. Any of `args`,
    `env` and `stdin_blob` makes it a command job: `_start` runs with argv `[argv0, *args]`
    (argv0 defaults to the module's file name), exactly `env`, and `stdin_blob` as stdin."""

    model_config = ConfigDict(extra="forbid")

    module: Path | None = None
    module_blob: BlobHashField | None = None
    workflow: str | None = Field(None, max_length=256)
    input: JsonValue = None
    artifacts: dict[model.ArtifactName, Path] = {}
    artifact_blobs: dict[model.ArtifactName, BlobHashField] = {}
    mounts: dict[model.ArtifactName, MountSubmission] = Field({}, max_length=model.MAX_MOUNTS)
    args: list[model.Arg] | None = None
    argv0: model.Arg | None = None
    env: dict[model.EnvName, model.Arg] = {}
    stdin_blob: BlobHashField | None = None
    executor: model.Executor = "wasi"
    limits: ExecutionLimits = ExecutionLimits()
    require: list[LabelRequirement] = Field([], max_length=MAX_REQUIREMENTS)
    """Labels the worker must have (`--require`)."""
    max_attempts: int = Field(3, ge=1, le=100)

    @model_validator(mode="after")
    def _one_of_each(self) -> JobSubmission:
        if (self.module is None) == (self.module_blob is None):
            raise ValueError("give exactly one of module and module_blob")
        if both := sorted(self.artifacts.keys() & self.artifact_blobs.keys()):
            raise ValueError(f"artifact {both[0]!r} given both as a path and as a blob")
        if self.is_command:
            if self.workflow is not None or self.input is not None:
                raise ValueError("a command job takes args, env and stdin, not workflow or input")
            if self.executor != "wasi":
                raise ValueError("command jobs run on the wasi executor")
        return self

    @property
    def is_command(self) -> bool:
        return (
            self.args is not None
            or self.argv0 is not None
            or bool(self.env)
            or self.stdin_blob is not None
        )

    def argv(self) -> list[str]:
        default = self.module.name if self.module is not None else "module.wasm"
        return [self.argv0 or default, *(self.args or [])]

    def to_spec(
        self,
        *,
        module: model.BlobRef,
        artifacts: dict[model.ArtifactName, model.BlobRef],
        input_blob: model.BlobRef | None,
        stdin: model.BlobRef | None,
        mounts: dict[model.ArtifactName, model.Mount],
    ) -> model.JobSpec:
        """The job spec this submission asks for: the one place its fields map to the spec,
        given its files and blobs as pinned refs (`input_blob`: the input, when too large to
        travel inline). SubmissionError names what the spec refuses."""
        command = None
        if self.is_command:
            try:
                command = model.Command(argv=self.argv(), env=self.env, stdin=stdin)
            except ValidationError as exc:
                raise SubmissionError(f"cannot use the command: {exc.errors()[0]['msg']}") from None
        try:
            return model.JobSpec(
                workflow=self.workflow,
                module=module,
                input=None if input_blob is not None else self.input,
                input_blob=input_blob,
                artifacts=artifacts,
                command=command,
                mounts=mounts,
                requirements=model.Requirements(
                    executor=self.executor, limits=self.limits, labels=self.require
                ),
                max_attempts=self.max_attempts,
            )
        except ValidationError as exc:
            raise SubmissionError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


class SubmissionError(Exception):
    """A module, artifact or input cannot be used; the message names it."""


class SubmissionTooLarge(SubmissionError):
    """The input is over `model.MAX_INPUT_BYTES`."""


class BatchRefused(SubmissionError):
    """One entry of a batch submit was refused (so all were): `index` is its place in the batch,
    `cause` the entry's own refusal."""

    def __init__(self, index: int, cause: SubmissionError) -> None:
        super().__init__(f"job {index}: {cause}")
        self.index = index
        self.cause = cause
