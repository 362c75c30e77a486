"""Job records and the claim/lease control-protocol messages.

Everything here crosses a trust boundary (gossip, the control protocol, the
HTTP API), so identifiers, names and sizes are validated or bounded at parse
time rather than by each caller.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Literal, get_args

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SerializationInfo,
    StringConstraints,
    TypeAdapter,
    field_serializer,
    model_validator,
)

from p2pnode.executors.base import (
    MAX_OUTPUTS,
    MIB,
    ExecutionLimits,
    ExecutionRequest,
    ExecutorKind,
    Invocation,
    OutputName,
)
from p2pnode.ids import (
    BlobHashField,
    LeaseToken,
    LeaseTokenField,
    NodeId,
    NodeIdField,
    NoLeaseTokenField,
)
from p2pnode.labels import MAX_REQUIREMENTS, LabelRequirement, satisfies

if TYPE_CHECKING:
    from p2pnode.blobs.model import BlobInfo

MAX_INPUT_BYTES = 16 * MIB
"""Largest job input (JSON); bigger data goes as artifacts."""
INLINE_INPUT_BYTES = 32 * 1024
"""Inputs above this travel as a pinned blob the worker fetches, so records and frames stay
small."""
MAX_RESULT_BYTES = 1 * MIB
"""Largest job result (JSON); bigger products go as output files."""
MAX_LOG_CHARS = 64 * 1024
MAX_ERROR_CHARS = 4096
MAX_NOTE_CHARS = 200
MAX_COMMAND_BYTES = 256 * 1024
"""Largest argv plus environment of a command job (UTF-8 bytes), like a typical ARG_MAX: the
command travels in the claim grant's frame."""
MAX_HISTORY = 32

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_JOB_ID = re.compile(r"job_[0-9A-HJKMNP-TV-Z]{26}")
JobId = Annotated[str, StringConstraints(pattern=f"^{_JOB_ID.pattern}$")]


def _clip_tail(limit: int) -> BeforeValidator:
    """Keep the end of over-long text: for logs and errors the last lines matter most."""

    def clip(value: object) -> object:
        if isinstance(value, str) and len(value) > limit:
            marker = "[truncated]\n"
            return marker + value[len(value) - (limit - len(marker)) :]
        return value

    return BeforeValidator(clip)


Logs = Annotated[str, _clip_tail(MAX_LOG_CHARS)]
ErrorText = Annotated[str, _clip_tail(MAX_ERROR_CHARS)]
Note = Annotated[str, _clip_tail(MAX_NOTE_CHARS)]


def _check_artifact_name(name: str) -> str:
    # The charset already excludes "/", "\\", NUL and control characters;
    # "." and ".." are the remaining ways to escape or alias a directory.
    if name in (".", ".."):
        raise ValueError("artifact name must not be '.' or '..'")
    return name


ArtifactName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$"),
    AfterValidator(_check_artifact_name),
]
"""A file name an executor may create in its sandbox; never a path."""


def json_size(value: JsonValue) -> int:
    """Bytes of a JSON value as it is stored and sent."""
    return len(pydantic_core.to_json(value))


def _bounded_result(value: JsonValue) -> JsonValue:
    if (size := json_size(value)) > MAX_RESULT_BYTES:
        raise ValueError(f"result of {size} bytes exceeds {MAX_RESULT_BYTES}")
    return value


def new_job_id(now: float | None = None) -> str:
    """A ULID-style id: 48-bit millisecond time + 80 random bits, so ids sort by creation."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return "job_" + "".join(chars)


def job_id_time(job_id: str) -> float:
    """When the job was created, read back from its id (`new_job_id`); the id must be valid."""
    value = 0
    for char in job_id.removeprefix("job_"):
        value = value << 5 | _CROCKFORD.index(char)
    return (value >> 80) / 1000


JOB_TAG_PREFIX = "job/"


def job_tag(job_id: str, role: str) -> str:
    """The blob store tag by which a job holds one of its blobs (`role`: module, input,
    artifact/NAME, ...). Jobs hold blobs by tags, never pins, so removing a job releases exactly
    its own: a person's pin, or another job's tag on the same blob, still keeps it."""
    return f"{JOB_TAG_PREFIX}{job_id}/{role}"


def tag_job(tag: str) -> str | None:
    """The job holding a blob by `tag`, or None for a tag that is not a job's."""
    if not tag.startswith(JOB_TAG_PREFIX):
        return None
    job_id = tag[len(JOB_TAG_PREFIX) :].partition("/")[0]
    return job_id if _JOB_ID.fullmatch(job_id) else None


def new_lease_token() -> LeaseToken:
    return LeaseToken(secrets.token_hex(16))


RequestId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
"""Names one control request, so that its origin applies it once however often it arrives."""


def new_request_id() -> str:
    return secrets.token_hex(16)


class JobState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

Executor = ExecutorKind
Limits = ExecutionLimits


def known_executor(kind: object) -> bool:
    """False only for a string naming an executor kind this version does not know: a newer node
    names every kind it has, and one we cannot run must not make its message unreadable (the
    readers drop it); anything else is left for validation to judge."""
    return not isinstance(kind, str) or kind in get_args(ExecutorKind)


def _known_executors(kinds: object) -> object:
    """Drop unknown executor kinds from a claim's or report's list of alternatives."""
    return [k for k in kinds if known_executor(k)] if isinstance(kinds, list) else kinds


KnownExecutors = Annotated[list[Executor], BeforeValidator(_known_executors)]


class BlobRef(BaseModel):
    """A content-addressed blob and where to fetch it."""

    hash: BlobHashField
    size: int = Field(ge=0)
    root: BlobHashField
    """Verification root of the blob's hash tree."""
    providers: list[NodeIdField] = Field(default_factory=list, max_length=64)

    @classmethod
    def held_by(cls, info: BlobInfo, node_id: NodeId) -> BlobRef:
        """A blob in `node_id`'s store, which is where others fetch it from."""
        return cls(hash=info.hash, size=info.size, root=info.root, providers=[node_id])


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("must not contain NUL")
    return text


Arg = Annotated[str, AfterValidator(_no_nul)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[^=\x00]+$")]


class Command(BaseModel):
    """An ordinary WASI program run as a job: ``_start`` with exactly this argv and environment
    (nothing of the worker's own), stdin from a blob; see ``p2pnode.executors.wasm``."""

    argv: list[Arg] = Field(min_length=1, max_length=4096)
    env: dict[EnvName, Arg] = Field(default_factory=dict, max_length=1024)
    stdin: BlobRef | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Command:
        size = sum(len(arg.encode()) + 1 for arg in self.argv) + sum(
            len(name.encode()) + len(value.encode()) + 2 for name, value in self.env.items()
        )
        if size > MAX_COMMAND_BYTES:
            raise ValueError(f"argv and environment of {size} bytes exceed {MAX_COMMAND_BYTES}")
        return self


MAX_MOUNTS = 64
MAX_MOUNT_FILES = 10_000
MAX_MANIFEST_BYTES = 4 * MIB
_WRITABLE_DIRS = ("/out", "/tmp")


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")  # written by one version, read by all (`_Message`)

    path: OutputName
    """Relative POSIX path inside the mounted folder."""
    hash: BlobHashField
    size: int = Field(ge=0)
    root: BlobHashField


class Manifest(BaseModel):
    """A folder tree as one blob: its files' paths and blobs. An unchanged tree has the same
    manifest hash and identical files the same blob, so a worker fetches each once."""

    model_config = ConfigDict(extra="ignore")  # written by one version, read by all (`_Message`)

    files: list[ManifestEntry] = Field(max_length=MAX_MOUNT_FILES)

    @model_validator(mode="after")
    def _a_tree(self) -> Manifest:
        paths = {entry.path for entry in self.files}
        if len(paths) != len(self.files):
            raise ValueError("a manifest names a file twice")
        for path in paths:
            if any(str(parent) in paths for parent in PurePosixPath(path).parents):
                raise ValueError(f"manifest entry {path!r} is inside another file")
        return self


def _check_guest_path(path: str) -> str:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or any(part in (".", "..") for part in path.split("/")[1:]):
        raise ValueError("a guest path is absolute, without '.' or '..' parts")
    if str(pure) != path or "\0" in path:
        raise ValueError("a guest path is written plainly (no '//', trailing '/' or NUL)")
    if path in ("/", "/in") or any(path == d or path.startswith(d + "/") for d in _WRITABLE_DIRS):
        raise ValueError("a guest path may not be /, /in, or inside /out or /tmp")
    return path


GuestPath = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_check_guest_path)]


class Mount(BaseModel):
    """A file, or a folder as its manifest blob, visible read-only to the job at ``guest_path``
    (``/in/NAME`` by default)."""

    source: BlobRef
    directory: bool = False
    guest_path: GuestPath | None = None

    @model_validator(mode="after")
    def _file_in_a_folder(self) -> Mount:
        if not self.directory and self.guest_path and self.guest_path.count("/") < 2:
            raise ValueError("a mounted file goes into a folder: /FOLDER/NAME at least")
        return self


class Requirements(BaseModel):
    executor: Executor = "wasi"
    limits: Limits = Field(default_factory=Limits)
    labels: list[LabelRequirement] = Field(default_factory=list, max_length=MAX_REQUIREMENTS)
    """Only a worker whose labels satisfy all of these may claim the job."""

    def admits(self, labels: Mapping[str, str]) -> bool:
        return satisfies(labels, self.labels)


class JobSpec(BaseModel):
    """What a submitter provides; immutable for the life of the job."""

    workflow: str | None = Field(default=None, max_length=256)
    module: BlobRef
    input: JsonValue = None
    input_blob: BlobRef | None = None
    """The input as a JSON blob instead, when it is larger than `INLINE_INPUT_BYTES`."""
    artifacts: dict[ArtifactName, BlobRef] = Field(default_factory=dict, max_length=256)
    command: Command | None = None
    """Run the module as a command (argv, env, stdin) instead of a workflow."""
    mounts: dict[ArtifactName, Mount] = Field(default_factory=dict, max_length=MAX_MOUNTS)
    requirements: Requirements = Field(default_factory=Requirements)
    max_attempts: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _apart(self) -> JobSpec:
        """Artifacts and mounts never overlap: none is inside or on top of another."""
        targets = [f"/in/{name}" for name in self.artifacts] + [
            mount.guest_path or f"/in/{name}" for name, mount in self.mounts.items()
        ]
        for path in targets:
            inside = [other for other in targets if other == path or other.startswith(path + "/")]
            if len(inside) > 1:
                raise ValueError(f"{inside[1]} would be hidden by another input at {path}")
        return self

    def guest_path(self, name: str) -> str:
        mount = self.mounts[name]
        return mount.guest_path or f"/in/{name}"

    def to_request(
        self,
        *,
        module: Path,
        input: JsonValue,
        stdin: Path | None,
        mounts: dict[str, Path],
        artifacts_dir: Path,
        output_dir: Path,
        scratch_dir: Path,
    ) -> ExecutionRequest:
        """The executor's request for one run of this job: the one place a spec's fields map to
        it, given where the worker put its inputs (`input`: the inline input or the parsed
        `input_blob`) and where the outputs go."""
        command = None
        if self.command is not None:
            command = Invocation(argv=self.command.argv, env=self.command.env, stdin=stdin)
        return ExecutionRequest(
            module_path=module,
            module_hash=self.module.hash,
            workflow=self.workflow,
            input=input,
            artifacts_dir=artifacts_dir,
            output_dir=output_dir,
            scratch_dir=scratch_dir,
            command=command,
            mounts=mounts,
            limits=self.requirements.limits,
        )


class Lease(BaseModel):
    worker: NodeIdField
    token: NoLeaseTokenField = Field(default="", repr=False)
    """The lease holder's bearer secret; "" once redacted."""
    expires_at: float

    @field_serializer("token")
    def _redact_token(self, token: str, info: SerializationInfo) -> str:
        # Job records are gossiped and served by the API; the token must only
        # leave the process inside a ClaimGrant, so it is dropped unless the
        # store asks for it explicitly.
        return token if info.context and info.context.get("secrets") else ""


class HistoryEvent(BaseModel):
    at: float
    state: JobState
    note: Note = ""


class Job(BaseModel):
    """A job record; the origin's copy is authoritative, other nodes cache it."""

    id: JobId
    origin: NodeIdField
    spec: JobSpec
    state: JobState = JobState.PENDING
    attempts: int = Field(default=0, ge=0)
    """Number of leases granted so far."""
    lease: Lease | None = None
    not_before: float = 0.0
    """Back-off: the job cannot be claimed before this time (origin clock)."""
    result: JsonValue = None
    error: ErrorText | None = None
    outputs: dict[OutputName, BlobRef] = Field(default_factory=dict, max_length=MAX_OUTPUTS)
    logs: Logs = ""
    worker: NodeIdField | None = None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    history: list[HistoryEvent] = Field(default_factory=list)

    def record(self, at: float, note: str = "") -> None:
        """Append a history event for the current state, keeping only the latest few. Times are
        strictly increasing, so a reader that follows the history by time sees events recorded
        in the same clock tick (a worker's compile note and its report) too."""
        if self.history:
            at = max(at, self.history[-1].at + 1e-6)
        event = HistoryEvent.model_validate({"at": at, "state": self.state, "note": note})
        self.history.append(event)
        del self.history[:-MAX_HISTORY]

    def summary(self) -> JobSummary:
        spec = self.spec
        return JobSummary(
            id=self.id,
            origin=self.origin,
            state=self.state,
            requirements=spec.requirements,
            workflow=spec.workflow,
            attempts=self.attempts,
            worker=self.worker,
            input_bytes=spec.input_blob.size if spec.input_blob else json_size(spec.input),
            artifact_bytes=sum(ref.size for ref in spec.artifacts.values()),
            result_bytes=json_size(self.result),
            updated_at=self.updated_at,
        )


class JobSummary(BaseModel):
    """What gossip says about a job: enough to decide whether to claim it, bounded whatever the
    job holds. The record itself travels in the claim grant, and only the origin serves it."""

    id: JobId
    origin: NodeIdField
    state: JobState
    requirements: Requirements
    workflow: str | None = Field(default=None, max_length=256)
    attempts: int = Field(ge=0)
    worker: NodeIdField | None = None
    input_bytes: int = Field(ge=0)
    artifact_bytes: int = Field(ge=0)
    result_bytes: int = Field(ge=0)
    updated_at: float


class WorkerStatus(BaseModel):
    executors: list[str]
    max_jobs: int
    labels: dict[str, str] = {}
    draining: bool = False
    """Claims no new job (`p2pnode drain`); kept across restarts until `p2pnode undrain`."""
    running: list[str]
    executed: int
    succeeded: int
    failed: int


# --- control protocol -------------------------------------------------------


class _Message(BaseModel):
    """A control-protocol message. Compatibility policy, for every message a peer sends (these,
    the gossip wire and payloads, the join handshake, the blob protocol's frames):

    - Additive changes only within one ALPN (`p2pnode/jobs/2`): a new field is optional, with a
      default that means what an older peer did, and the sender must not depend on the reader
      understanding it (an older reader ignores it: tolerant reader).
    - Readers ignore fields they do not know (`extra="ignore"`); sizes, types and value ranges of
      the fields they know stay validated.
    - What a worker must have to run a job is must-understand: an unknown executor kind or label
      requirement fails the message (an older node never claims what it cannot honour). A new
      kind of requirement is therefore also checked by the origin, against the worker's own
      heartbeat (`Workers.admit`, which has its version): a grant the worker cannot read would
      be lost until its lease lapsed, costing the job an attempt.
    - Anything else (a renamed or removed field, a new meaning, a new message type an older peer
      cannot answer) bumps the protocol's ALPN; an older peer then refuses the connection and the
      dialer says which version to upgrade (`net.errors`). So does a new field of the gossip
      envelope itself: its fields are signed, and an older relay would drop what it ignores.

    tests/test_compat_wire.py pins the wire form (golden samples in tests/data/wire/)."""

    model_config = ConfigDict(extra="ignore")


class _Once(_Message):
    """A request that changes the job and must be applied at most once. A connection that fails
    is replaced and the request sent again (`Dialer.request`), also when the origin had applied
    it and only the reply was lost: the origin answers a repeated `request_id` of the same peer
    with what it did the first time (the same lease), never doing it twice."""

    request_id: RequestId = Field(default_factory=new_request_id)


DEFER_TO_FIRST_S = 0.2
"""How long a worker leaves an announced job to the worker its origin asked first: long enough
for that one's claim round trip, short enough that a job whose first worker is gone waits little."""
MAX_MORE_GRANTS = 8
"""Jobs a claim may ask for besides the one it names (a worker's other free slots)."""


class ClaimRequest(_Once):
    type: Literal["claim_request"] = "claim_request"
    job_id: JobId
    worker: NodeIdField
    start: bool = False
    """The worker starts the job as soon as it is granted: the job is running from the grant on,
    without a `Started` round trip."""
    instead: KnownExecutors | None = Field(None, max_length=8)
    """When the job is taken (not backing off), grant the oldest claimable job of one of these
    executors instead: a worker with a free slot gets work in one round trip, not a refusal."""
    more: int = Field(0, ge=0, le=MAX_MORE_GRANTS)
    """Also grant up to this many further claimable jobs of the `instead` executors, oldest
    first: a worker fills its free slots in one round trip, not one per job."""


class Granted(BaseModel):
    """One further job a claim grants, and its lease."""

    job: Job
    lease_token: LeaseTokenField


class ClaimGrant(_Message):
    type: Literal["claim_grant"] = "claim_grant"
    job: Job
    lease_token: LeaseTokenField
    lease_expires_in: float
    """Seconds, relative, because the two nodes' clocks differ (the same for `more`)."""
    more: list[Granted] = Field(default_factory=list, max_length=MAX_MORE_GRANTS)


class ClaimRefused(_Message):
    type: Literal["claim_refused"] = "claim_refused"
    reason: str
    retry_after: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Seconds until the job may be claimed (it is backing off); None: do not retry."""
    none_pending: bool = False
    """The origin has no pending job at all: every announcement heard before this reply is
    stale (a job that becomes pending again is announced again)."""


class Renew(_Message):
    type: Literal["renew"] = "renew"
    job_id: JobId
    lease_token: LeaseTokenField


class RenewOk(_Message):
    type: Literal["renew_ok"] = "renew_ok"
    expires_in: float


class RenewRefused(_Message):
    type: Literal["renew_refused"] = "renew_refused"
    reason: str


class Started(_Message):
    type: Literal["started"] = "started"
    job_id: JobId
    lease_token: LeaseTokenField


class Report(_Once):
    type: Literal["report"] = "report"
    job_id: JobId
    lease_token: LeaseTokenField
    ok: bool
    result: Annotated[JsonValue, AfterValidator(_bounded_result)] = None
    error: ErrorText | None = None
    logs: Logs = ""
    outputs: dict[OutputName, BlobRef] = Field(default_factory=dict, max_length=MAX_OUTPUTS)
    compile_note: Note = ""
    """How the worker had the module's machine code ("compiled in 1.2 s"), for the history."""
    next: KnownExecutors | None = Field(None, max_length=8)
    """Then grant the oldest claimable job of one of these executors for the slot this job
    leaves: in a busy cluster a job costs its worker one round trip, not a report and a claim."""


class ReportAck(_Message):
    type: Literal["report_ack"] = "report_ack"
    grant: ClaimGrant | None = None
    """The next job, when the report asked for one and one was waiting."""


class ReportRefused(_Message):
    type: Literal["report_refused"] = "report_refused"
    reason: str


class Release(_Once):
    """A stopping worker hands its leased job back: pending again at once, the attempt not
    counted."""

    type: Literal["release"] = "release"
    job_id: JobId
    lease_token: LeaseTokenField


class StopRun(_Message):
    """From a job's origin to its lease holder: the job was cancelled, stop running it now."""

    type: Literal["stop_run"] = "stop_run"
    job_id: JobId


class Ack(_Message):
    type: Literal["ack"] = "ack"


MAX_LOG_CHUNK = 16 * 1024
"""Bytes of output one `LogChunk` carries at most (so its text has at most this many
characters)."""
LogStream = Literal["stdout", "stderr"]


class LogChunk(_Once):
    """From a job's lease holder to its origin while the job runs: `size` bytes its run wrote to
    `stream`, from byte `offset` of this attempt's stream, as text (cut between characters). The
    origin keeps them for live logs only (see `p2pnode.jobs.logs`); it answers `Ack`."""

    type: Literal["log_chunk"] = "log_chunk"
    job_id: JobId
    lease_token: LeaseTokenField
    stream: LogStream
    offset: int = Field(ge=0)
    size: int = Field(ge=0, le=MAX_LOG_CHUNK)
    text: str = Field(max_length=MAX_LOG_CHUNK)


ControlMessage = Annotated[
    ClaimRequest
    | ClaimGrant
    | ClaimRefused
    | Renew
    | RenewOk
    | RenewRefused
    | Started
    | Report
    | ReportAck
    | ReportRefused
    | Release
    | StopRun
    | Ack
    | LogChunk,
    Field(discriminator="type"),
]

control_message = TypeAdapter(ControlMessage)
"""Parse frames with `control_message.validate_json(raw)`; send `msg.model_dump_json()`."""
