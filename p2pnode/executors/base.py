"""The executor contract: what a job asks for, what comes back, and who runs it.

Every failure of a job (trap, out of fuel, memory, timeout, bad module, HTTP errors) is reported as
``ExecutionResult(ok=False, error=...)``; an executor never lets an exception escape to the node,
so one bad job cannot take the worker loop down. Only trio cancellation propagates.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from p2pnode.ids import BlobHash

ExecutorKind = Literal["wasi", "flawless"]

MIB = 1024 * 1024
LOG_LIMIT = 64 * 1024
"""Bytes of a job's stderr kept in ``ExecutionResult.logs`` (the tail, where the error usually
is)."""
MAX_OUTPUTS = 256
"""Output files one job may produce; a report with more could not be represented."""
MAX_OUTPUT_NAME = 512
"""UTF-8 bytes of an output name; with ``MAX_OUTPUTS`` it keeps a report well inside a frame."""
COMPILE_CACHE_BYTES = 4 * 1024 * MIB
"""Default bound of the embedded runner's compile cache on disk (a 70 MB module compiles to
~200 MB)."""
MAX_COMPILE_S = 600.0
"""Default limit of one compilation, apart from the run's: a 70 MB module takes ~100 s here."""
COMPILE_MEMORY_BYTES = 4 * 1024 * MIB
"""Default bound of a compiling child's address space: compiling takes far more memory than the
module's size (a hostile 2 MB function peaked at 943 MB here), and a worker compiles what members
send."""
DEFAULT_FUEL = 10**12
"""Generous, so that wall time governs: fuel is about one unit per WebAssembly instruction, and
this machine runs 1.6 to 8.6 units per nanosecond of CPU (a branch loop, treesum over 24 MB), so
this is 2 to 10 minutes of CPU, past the default time limit. A job may ask for less."""
_NAME_MAX = 255
"""Bytes of one path component, the usual file-system limit (NAME_MAX)."""


def _check_output_name(name: str) -> str:
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("output name is not valid UTF-8") from None
    if not 0 < size <= MAX_OUTPUT_NAME:
        raise ValueError(f"output name must be 1 to {MAX_OUTPUT_NAME} bytes")
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise ValueError("output name must not contain control characters")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError("output name must be a relative path without empty, '.' or '..' parts")
        if len(part.encode("utf-8")) > _NAME_MAX:
            raise ValueError(f"output name has a part longer than {_NAME_MAX} bytes")
    return name


OutputName = Annotated[str, AfterValidator(_check_output_name)]
"""A relative POSIX path of a file a job wrote, such as ``sub/x y.txt``; it can be recreated
under any folder (no absolute path, no ``.``/``..``, no NUL or control characters)."""


class ExecutionLimits(BaseModel):
    """Resource limits for one run; every limit is always enforced."""

    model_config = ConfigDict(frozen=True)

    time_s: float = Field(default=60.0, gt=0)
    memory_bytes: int = Field(default=256 * MIB, gt=0)
    fuel: int = Field(default=DEFAULT_FUEL, gt=0)


class JobMaxima(BaseModel):
    """The most this node grants any job, whatever the job (or the member that sent it) asks.

    Defaults sit above ``ExecutionLimits``' defaults, so a job that asks for nothing special is
    never capped; output bytes are a node-side bound only (the per-job scratch: a guest writes
    nowhere else).
    """

    model_config = ConfigDict(frozen=True)

    time_s: float = Field(default=3600.0, gt=0)
    memory_bytes: int = Field(default=1024 * MIB, gt=0)
    fuel: int = Field(default=DEFAULT_FUEL, gt=0, lt=1 << 64)
    output_bytes: int = Field(default=256 * MIB, ge=0)

    def cap(self, asked: ExecutionLimits) -> tuple[ExecutionLimits, dict[str, str]]:
        """The limits a job runs under, and a note for its logs per limit lowered here (by
        field)."""
        capped = ExecutionLimits(
            time_s=min(asked.time_s, self.time_s),
            memory_bytes=min(asked.memory_bytes, self.memory_bytes),
            fuel=min(asked.fuel, self.fuel),
        )
        shown = {
            "time_s": (f"time limit of {asked.time_s:g} s", f"{self.time_s:g} s"),
            "memory_bytes": (
                f"memory limit of {asked.memory_bytes} bytes",
                f"{self.memory_bytes} bytes",
            ),
            "fuel": (f"fuel limit of {asked.fuel}", str(self.fuel)),
        }
        notes = {
            field: f"{have} lowered to this node's maximum of {most}"
            for field, (have, most) in shown.items()
            if getattr(capped, field) != getattr(asked, field)
        }
        return capped, notes


DEFAULT_MAXIMA = JobMaxima()
"""What a node allows any job when nothing is configured."""


class Invocation(BaseModel):
    """How a command job's ``_start`` is called: exactly this argv and environment (nothing of
    the worker's own), and stdin from a local file (empty without one)."""

    model_config = ConfigDict(frozen=True)

    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    stdin: Path | None = None


class ExecutionRequest(BaseModel):
    """One run of one workflow of one module (or of one command, see ``Invocation``), with its
    inputs already on local disk."""

    model_config = ConfigDict(frozen=True)

    module_path: Path
    module_hash: BlobHash = Field(description="the module's blob hash; cache key")
    workflow: str | None = None
    input: Any = None
    artifacts_dir: Path = Field(description="read-only inputs, one file per artifact name")
    output_dir: Path
    scratch_dir: Path = Field(
        description="the runner's own files for this run (the guest's /tmp, a command's stdout "
        "and stderr); the caller removes it once the outputs are stored"
    )
    command: Invocation | None = None
    mounts: dict[str, Path] = Field(
        default_factory=dict, description="read-only folders by guest path, besides /in"
    )
    limits: ExecutionLimits = ExecutionLimits()

    @property
    def streams_dir(self) -> Path:
        """Where the run's stdout and stderr files grow while it runs (an executor that writes
        them there gets live logs: the worker tails them)."""
        return self.scratch_dir / "streams"


class ExecutionResult(BaseModel):
    """Outcome of a run; ``error`` is a human-readable reason whenever ``ok`` is false."""

    ok: bool
    result: Any = None
    error: str | None = None
    logs: str = ""
    outputs: dict[OutputName, Path] = Field(default_factory=dict, max_length=MAX_OUTPUTS)
    compile_note: str = ""
    """How the module's machine code was had ("compiled in 1.2 s", "compile cache hit"), for the
    job's history; "" when the executor does not compile."""

    @classmethod
    def failure(cls, error: str, logs: str = "") -> ExecutionResult:
        return cls(ok=False, error=error, logs=logs)

    def noted(self, notes: Iterable[str]) -> ExecutionResult:
        """These notes appended to the logs (at the end, which survives clipping)."""
        lines = "".join(f"[p2pnode] {note}\n" for note in notes)
        if not lines:
            return self
        separator = "\n" if self.logs and not self.logs.endswith("\n") else ""
        return self.model_copy(update={"logs": self.logs + separator + lines})


@runtime_checkable
class Executor(Protocol):
    """Runs jobs of one kind; a job names the kind it needs."""

    kind: ExecutorKind

    async def available(self) -> bool:
        """Whether this executor can take jobs right now."""
        ...

    def has_module(self, module_hash: BlobHash) -> bool:
        """Whether a run of this module needs no file at `module_path` (its machine code is
        at hand here), so the worker need not place one. A run whose module went meanwhile fails
        for the missing file, and the retry places it."""
        ...

    async def run(self, req: ExecutionRequest) -> ExecutionResult:
        """Run one job; never raises except for trio cancellation."""
        ...
