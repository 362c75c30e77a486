"""The embedded runner: WASI preview1 modules on wasmtime, under fuel, memory and wall-time limits.

Guest contract:
- a workflow is an exported function with no params and no results; ``_start`` is the workflow
  named "main" (``_initialize``, the reactor constructor, is run first for the others);
- the job input is JSON on stdin, the result is the JSON the workflow writes to stdout;
- the artifacts directory is preopened read-only at ``/in`` (fd 3), the output directory
  read-write at ``/out`` (fd 4); regular files left in ``/out`` become the job's outputs;
- exit status 0 is success; anything else, and every trap, is a failure with a reason.

Limits: the node's ``JobMaxima`` cap what a job asks (each lowered limit is noted in its logs).
The memory limit covers the whole store: one linear memory and at most ``_MAX_TABLES`` tables,
with a sixteenth of the budget (at most 16 MiB) for table elements, enforced by wasmtime's store
limiter. Output bytes are enforced while the guest writes: WASI writes go straight to host files,
so a guard sums ``/out`` every ``OUTPUT_POLL_S`` and interrupts the guest once it is over the cap
(the overshoot is what the guest writes in one poll interval), and a final check runs on the tree.

Each run gets its own engine, so the watchdogs can interrupt exactly that run (epochs are per
engine). Compiled machine code is cached per module hash and loaded into the run's engine.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import wasmtime
from pydantic import TypeAdapter, ValidationError

from p2pnode.executors.base import (
    DEFAULT_MAXIMA,
    LOG_LIMIT,
    MAX_OUTPUTS,
    MIB,
    ExecutionRequest,
    ExecutionResult,
    ExecutorKind,
    JobMaxima,
    OutputName,
)

MAIN_WORKFLOW = "main"
STDOUT_LIMIT = 4 * MIB
"""Largest result a workflow may print; bigger products belong in output files."""

_WASM_MAGIC = b"\0asm"
_START = "_start"
_INITIALIZE = "_initialize"
_PAGE = 64 * 1024
_WASI = "wasi_snapshot_preview1"
_DETAIL_LIMIT = 4096
"""Characters of wasmtime's backtrace kept in the logs (deep recursion makes huge ones)."""
_ENOSYS = 52
"""WASI errno returned by our ``poll_oneoff``: a guest blocked in a host sleep can't be
interrupted."""
_MAX_TABLES = 4
_TABLE_ELEMENT = 8
"""Bytes wasmtime's limiter counts per table element."""
OUTPUT_POLL_S = 0.01
"""How often the output guard sums ``/out``; a guest writing ~360 MB/s (measured) overshoots
the cap by a few MB at most."""
_output_name = TypeAdapter(OutputName)


class InvalidModule(ValueError):
    """The bytes are neither a valid WebAssembly binary nor valid WAT text."""


class _Failure(Exception):
    """A job failure with its reason, raised to short-cut a run."""


def load_module_bytes(path: Path) -> bytes:
    """Read a module as a WebAssembly binary; WAT text (``.wat``) is assembled on the way."""
    return _to_wasm(path.read_bytes())


def assemble(data: bytes) -> bytes:
    """A module (binary or WAT text) as a WebAssembly binary."""
    return _to_wasm(data)


def list_workflows(module_bytes: bytes) -> list[str]:
    """Names of the workflows a module (binary or WAT text) offers, in export order."""
    return list(_workflows(_compile(_new_engine(), _to_wasm(module_bytes))))


class _Tail:
    """Keeps only the last ``limit`` bytes written: a chatty guest can't fill our memory."""

    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self._limit = limit
        self._data = bytearray()
        self._cut = False

    def write(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > self._limit:
            del self._data[: len(self._data) - self._limit]
            self._cut = True

    def text(self) -> str:
        text = self._data.decode("utf-8", errors="replace")
        return "[... earlier output dropped ...]\n" + text if self._cut else text


class _Head:
    """Keeps the first ``limit`` bytes written and notes whether there was more."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.data = bytearray()
        self.overflow = False

    def write(self, data: bytes) -> None:
        room = self._limit - len(self.data)
        self.data += data[:room]
        self.overflow = self.overflow or len(data) > room


@dataclass(frozen=True)
class _Compiled:
    artifact: bytes
    """``Module.serialize()`` output, loaded into each run's own engine."""
    workflows: dict[str, str]
    """workflow name -> export name"""


@dataclass(frozen=True)
class _StoreBudget:
    """One job memory limit split over the store: wasmtime limits each memory and each table
    on its own, so the count of both is bounded and the bytes divided between them."""

    memory_bytes: int
    table_elements: int

    @classmethod
    def of(cls, limit: int) -> _StoreBudget:
        tables = min(limit // 16, 16 * MIB)
        return cls(limit - tables, tables // (_TABLE_ELEMENT * _MAX_TABLES))

    def apply(self, store: wasmtime.Store) -> None:
        store.set_limits(
            memory_size=self.memory_bytes,
            memories=1,
            tables=_MAX_TABLES,
            table_elements=self.table_elements,
        )


@dataclass
class _Outcome:
    error: str | None = None
    interrupted: bool = False
    detail: str = ""
    """wasmtime's full message (with backtrace), for the logs."""


class WasiExecutor:
    """Runs WASI workflows in-process; one thread per running job, never blocking trio."""

    kind: ExecutorKind = "wasi"

    def __init__(self, *, maxima: JobMaxima = DEFAULT_MAXIMA, cache_size: int = 32) -> None:
        self.maxima = maxima
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_size = cache_size

    async def available(self) -> bool:
        return True

    async def run(self, req: ExecutionRequest) -> ExecutionResult:
        limits, notes = self.maxima.cap(req.limits)
        try:
            result = await self._run(req.model_copy(update={"limits": limits}))
        except _Failure as failure:
            result = ExecutionResult.failure(str(failure))
        except Exception as exc:  # an OS error or a bug must not take the node down
            result = ExecutionResult.failure(f"runner error: {exc!r}")
        return result.noted(notes.values())

    async def _run(self, req: ExecutionRequest) -> ExecutionResult:
        compiled = await self._compiled(req)
        export = _select(compiled.workflows, req.workflow)
        try:
            stdin = json.dumps(req.input).encode()
        except (TypeError, ValueError) as exc:
            raise _Failure(f"job input is not JSON: {exc}") from None

        # The deadline is armed before the watchdogs exist: an early tick can't be missed.
        engine = _new_engine()
        store = wasmtime.Store(engine)
        store.set_fuel(req.limits.fuel)
        budget = _StoreBudget.of(req.limits.memory_bytes)
        budget.apply(store)
        store.set_epoch_deadline(1)
        run = _Run(engine, store, budget, compiled.artifact, export, stdin, req)
        stopped_because: list[str] = []

        def interrupt(reason: str) -> None:
            stopped_because.append(reason)
            engine.increment_epoch()

        async def deadline() -> None:
            try:
                await trio.sleep(req.limits.time_s)
                interrupt(f"timed out after {req.limits.time_s:g} s")
            finally:
                # On cancellation too this stops the guest at its next loop head or call;
                # after a normal end it is harmless.
                engine.increment_epoch()

        async def output_guard() -> None:
            while True:
                await trio.sleep(OUTPUT_POLL_S)
                usage = await trio.to_thread.run_sync(_output_usage, req.output_dir)
                if (excess := self._output_excess(*usage)) is not None:
                    interrupt(excess)
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadline)
            nursery.start_soon(output_guard)
            outcome = await trio.to_thread.run_sync(run.execute)
            nursery.cancel_scope.cancel()

        logs = run.stderr.text()
        if outcome.detail:
            separator = "\n" if logs and not logs.endswith("\n") else ""
            logs += f"{separator}[wasmtime] {outcome.detail.strip()[:_DETAIL_LIMIT]}"
        if outcome.interrupted:
            # A cancelled run re-raises Cancelled when the nursery exits, so a watchdog stopped it.
            return ExecutionResult.failure(stopped_because[0], logs)
        if outcome.error is not None:
            return ExecutionResult.failure(outcome.error, logs)
        if run.stdout.overflow:
            return ExecutionResult.failure(
                f"workflow wrote more than {STDOUT_LIMIT} bytes to stdout", logs
            )
        try:
            result = _parse_result(bytes(run.stdout.data))
        except _Failure as failure:
            return ExecutionResult.failure(str(failure), logs)
        try:
            outputs = await trio.to_thread.run_sync(self._collect_outputs, req.output_dir)
        except _Failure as failure:
            return ExecutionResult.failure(str(failure), logs)
        return ExecutionResult(ok=True, result=result, logs=logs, outputs=outputs)

    def _output_excess(self, size: int, files: list[Path]) -> str | None:
        """Why the outputs so far break the node's bounds, if they do."""
        if size > self.maxima.output_bytes:
            return f"outputs exceed this node's limit of {self.maxima.output_bytes} bytes"
        if len(files) > MAX_OUTPUTS:
            return f"more than {MAX_OUTPUTS} output files"
        return None

    def _collect_outputs(self, output_dir: Path) -> dict[str, Path]:
        """Regular files under ``output_dir`` by relative POSIX name (blocking). Symlinks are never
        followed, so a guest can't make the node publish a host file; a name that cannot be an
        ``OutputName`` fails the job rather than the report."""
        size, files = _output_usage(output_dir)
        if (excess := self._output_excess(size, files)) is not None:
            raise _Failure(excess)
        outputs: dict[str, Path] = {}
        for path in files:
            name = path.relative_to(output_dir).as_posix()
            try:
                outputs[_output_name.validate_python(name)] = path
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise _Failure(f"output {name!r} cannot be published: {reason}") from None
        return dict(sorted(outputs.items()))

    async def _compiled(self, req: ExecutionRequest) -> _Compiled:
        if (hit := self._cache.get(req.module_hash)) is not None:
            self._cache.move_to_end(req.module_hash)
            return hit
        try:
            compiled = await trio.to_thread.run_sync(_compile_file, req.module_path)
        except InvalidModule as exc:
            raise _Failure(f"invalid module: {exc}") from None
        except OSError as exc:
            raise _Failure(f"cannot read module {req.module_path}: {exc.strerror or exc}") from None
        self._cache[req.module_hash] = compiled
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled


class _Run:
    """One run's blocking part, executed in a worker thread."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        store: wasmtime.Store,
        budget: _StoreBudget,
        artifact: bytes,
        export: str,
        stdin: bytes,
        req: ExecutionRequest,
    ) -> None:
        self.engine = engine
        self.store = store
        self.budget = budget
        self.artifact = artifact
        self.export = export
        self.stdin = stdin
        self.req = req
        self.stdout = _Head(STDOUT_LIMIT)
        self.stderr = _Tail()

    def execute(self) -> _Outcome:
        """Never raises: an exception here would reach trio wrapped in an exception group."""
        try:
            with tempfile.TemporaryDirectory(prefix="p2pnode-wasi-") as tmp:
                stdin_path = Path(tmp, "stdin.json")
                stdin_path.write_bytes(self.stdin)
                return self._call(stdin_path)
        except Exception as exc:  # e.g. an unusable artifacts or output directory
            return _Outcome(error=f"runner error: {exc!r}")
        finally:
            self.store.close()  # frees the linear memory now, not whenever the GC runs

    def _call(self, stdin_path: Path) -> _Outcome:
        req = self.req
        req.artifacts_dir.mkdir(parents=True, exist_ok=True)
        req.output_dir.mkdir(parents=True, exist_ok=True)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self.export]
        wasi.stdin_file = str(stdin_path)
        wasi.stdout_custom = self.stdout.write
        wasi.stderr_custom = self.stderr.write
        wasi.preopen_dir(str(req.artifacts_dir), "/in", False)  # fd 3
        wasi.preopen_dir(str(req.output_dir), "/out", True)  # fd 4
        self.store.set_wasi(wasi)

        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        linker.define_func(
            _WASI, "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), lambda *_: _ENOSYS
        )

        instance: wasmtime.Instance | None = None
        try:
            module = wasmtime.Module.deserialize(self.engine, self.artifact)
            instance = linker.instantiate(self.store, module)
            exports = instance.exports(self.store)
            initialize = exports.get(_INITIALIZE)
            if self.export != _START and isinstance(initialize, wasmtime.Func):
                initialize(self.store)
            workflow = exports[self.export]
            assert isinstance(workflow, wasmtime.Func)  # _workflows() only lists functions
            workflow(self.store)
        except wasmtime.ExitTrap as exit_:
            if exit_.code != 0:
                return _Outcome(error=f"workflow exited with code {exit_.code}")
        except wasmtime.Trap as trap:
            return self._trap_outcome(trap, instance)
        except wasmtime.WasmtimeError as exc:
            what = "cannot instantiate module" if instance is None else "wasmtime error"
            error = f"{what}: {_oneline(str(exc))}"
            if "resource limit exceeded" in error:
                error += f" (a job gets at most 1 linear memory and {_MAX_TABLES} tables)"
            return _Outcome(error=error)
        return _Outcome()

    def _trap_outcome(self, trap: wasmtime.Trap, instance: wasmtime.Instance | None) -> _Outcome:
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return _Outcome(interrupted=True)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return _Outcome(error=f"out of fuel (limit {self.req.limits.fuel})")
        causes = _causes(trap.message)
        main = next(
            (c for c in causes if c.startswith("wasm trap: ")), causes[-1] if causes else ""
        )
        extra = [c for c in causes if c != main]
        error = "trap: " + main.removeprefix("wasm trap: ")
        if extra:
            error += f" ({'; '.join(extra)})"
        if instance is not None and self._memory_exhausted(instance):
            limit = self.req.limits.memory_bytes
            error += f"; memory limit of {limit} bytes reached (a memory.grow was likely refused)"
        return _Outcome(error=error, detail=trap.message)

    def _memory_exhausted(self, instance: wasmtime.Instance) -> bool:
        """Whether no further page fits: a guest denied memory usually traps soon after."""
        memory = instance.exports(self.store).get("memory")
        if not isinstance(memory, wasmtime.Memory):
            return False
        return memory.data_len(self.store) + _PAGE > self.budget.memory_bytes


def _new_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def _to_wasm(data: bytes) -> bytes:
    if data.startswith(_WASM_MAGIC):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidModule("neither a WebAssembly binary nor WAT text") from None
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(f"cannot assemble WAT: {_oneline(str(exc))}") from None


def _compile(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(_oneline(str(exc))) from None


def _compile_file(path: Path) -> _Compiled:
    module = _compile(_new_engine(), load_module_bytes(path))
    return _Compiled(artifact=bytes(module.serialize()), workflows=_workflows(module))


def _workflows(module: wasmtime.Module) -> dict[str, str]:
    found: dict[str, str] = {}
    for export in module.exports:
        ty = export.type
        if (
            isinstance(ty, wasmtime.FuncType)
            and not ty.params
            and not ty.results
            and export.name != _INITIALIZE
        ):
            found[MAIN_WORKFLOW if export.name == _START else export.name] = export.name
    return found


def _select(workflows: dict[str, str], wanted: str | None) -> str:
    available = ", ".join(workflows) or "none"
    if wanted is None:
        if len(workflows) == 1:
            return next(iter(workflows.values()))
        if not workflows:
            raise _Failure(
                "module exports no workflow (a function without params or results, or _start)"
            )
        raise _Failure(f"module has {len(workflows)} workflows, name one of: {available}")
    if wanted not in workflows:
        raise _Failure(f"module has no workflow {wanted!r} (available: {available})")
    return workflows[wanted]


def _parse_result(stdout: bytes) -> Any:
    if not stdout.strip():
        raise _Failure("workflow wrote non-JSON output: nothing on stdout")
    try:
        return json.loads(stdout)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = stdout[:200].decode("utf-8", errors="replace")
        raise _Failure(f"workflow wrote non-JSON output: {snippet!r} ({exc})") from None


def _output_usage(output_dir: Path) -> tuple[int, list[Path]]:
    """Bytes under ``output_dir`` (each entry's apparent or allocated size, whichever is larger,
    so sparse files count at the size they would publish) and its regular files; symlinks are
    counted, never followed. Entries vanishing mid-walk are skipped: the guest is still running."""
    size = 0
    files: list[Path] = []
    pending = [output_dir]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            size += max(info.st_size, info.st_blocks * 512)
            if stat.S_ISDIR(info.st_mode):
                pending.append(Path(entry.path))
            elif stat.S_ISREG(info.st_mode):
                files.append(Path(entry.path))
    return size, files


def _causes(message: str) -> list[str]:
    """The "Caused by:" lines of a wasmtime error, without their "N: " numbering."""
    _, _, causes = message.partition("Caused by:")
    return [re.sub(r"^\d+: ", "", line.strip()) for line in causes.splitlines() if line.strip()]


def _oneline(message: str) -> str:
    """A wasmtime error on one line: its headline (minus backtraces) followed by its causes."""
    head = message.partition("Caused by:")[0].strip()
    lines = [] if head.startswith("error while executing") else head.splitlines()[:2]
    return ": ".join([line.strip() for line in lines] + _causes(message))
