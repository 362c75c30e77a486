"""The executor contract: what a job asks for, what comes back, and who runs it.

Every failure of a job (trap, out of fuel, memory, timeout, bad module, HTTP errors) is reported as
``ExecutionResult(ok=False, error=...)``; an executor never lets an exception escape to the node,
so one bad job cannot take the worker loop down. Only trio cancellation propagates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

ExecutorKind = Literal["wasi", "flawless"]

MIB = 1024 * 1024
LOG_LIMIT = 64 * 1024
"""Bytes of a job's stderr kept in ``ExecutionResult.logs`` (the tail, where the error usually is)."""


class ExecutionLimits(BaseModel):
    """Resource limits for one run; every limit is always enforced."""

    model_config = ConfigDict(frozen=True)

    time_s: float = Field(default=60.0, gt=0)
    memory_bytes: int = Field(default=256 * MIB, gt=0)
    fuel: int = Field(default=10_000_000_000, gt=0)


class ExecutionRequest(BaseModel):
    """One run of one workflow of one module, with its inputs already on local disk."""

    model_config = ConfigDict(frozen=True)

    module_path: Path
    module_hash: str = Field(pattern=r"^[0-9a-fA-F]+$", description="hex content hash; cache key")
    workflow: str | None = None
    input: Any = None
    artifacts_dir: Path = Field(description="read-only inputs, one file per artifact name")
    output_dir: Path
    limits: ExecutionLimits = ExecutionLimits()


class ExecutionResult(BaseModel):
    """Outcome of a run; ``error`` is a human-readable reason whenever ``ok`` is false."""

    ok: bool
    result: Any = None
    error: str | None = None
    logs: str = ""
    outputs: dict[str, Path] = Field(default_factory=dict)

    @classmethod
    def failure(cls, error: str, logs: str = "") -> ExecutionResult:
        return cls(ok=False, error=error, logs=logs)


@runtime_checkable
class Executor(Protocol):
    """Runs jobs of one kind; a job names the kind it needs."""

    kind: ExecutorKind

    async def available(self) -> bool:
        """Whether this executor can take jobs right now."""
        ...

    async def run(self, req: ExecutionRequest) -> ExecutionResult:
        """Run one job; never raises except for trio cancellation."""
        ...

