"""The embedded runner: WASI preview1 modules on wasmtime, under fuel, memory and wall-time limits.

Guest contract:
- a workflow is an exported function with no params and no results; ``_start`` is the workflow
  named "main" (``_initialize``, the reactor constructor, is run first for the others);
- the job input is JSON on stdin, the result is the JSON the workflow writes to stdout;
- the artifacts directory is preopened read-only at ``/in`` (fd 3), the output directory
  read-write at ``/out`` (fd 4); regular files left in ``/out`` become the job's outputs;
  mounts outside ``/in`` are further read-only preopens (fd 6 on, in guest path order);
- exit status 0 is success; anything else, and every trap, is a failure with a reason.

Command mode (``ExecutionRequest.command``) runs an ordinary WASI program unmodified instead:
``_start`` with exactly the given argv and environment, stdin from a file; its stdout and stderr
are kept whole as the outputs ``stdout`` and ``stderr``, the result is ``{"exit_code": N}``,
success is exit status 0, and the files in ``/out`` are kept on failure too.

Every job gets a writable scratch ``/tmp`` (fd 5), removed after the run. Blocking
``poll_oneoff`` (sleep, clock waits) sleeps on the host, woken early when the run is stopped.

Limits: the node's ``JobMaxima`` cap what a job asks (each lowered limit is noted in its logs).
The memory limit covers the whole store: one linear memory and at most ``_MAX_TABLES`` tables,
with a sixteenth of the budget (at most 16 MiB) for table elements, enforced by wasmtime's store
limiter. Output bytes are enforced while the guest writes: WASI writes go straight to host files,
so a guard sums ``/out`` (and the stdout and stderr files), and on its own ``/tmp``, every
``OUTPUT_POLL_S`` and interrupts the guest once either is over the node's output maximum (the
overshoot is what the guest writes in one poll interval), and a final check runs on the tree.

Each run has an engine to itself, so the watchdogs can interrupt exactly that run (epochs are
per engine); an engine, its linker and the modules it mapped are kept for a later run (a fresh
store each time). Compiled machine code (wasmtime's own serialization) is cached on disk, keyed by
module hash, wasmtime version and engine settings, bounded in bytes with least-recently-used
eviction; an engine maps it when it first runs the module, so it survives restarts. Jobs
of one module wait for its single compilation, which runs in a process of its own so that it can
be stopped at the compile time limit (apart from the run's); the result says how long it took.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import wasmtime
from pydantic import TypeAdapter, ValidationError

from p2pnode.executors.base import (
    COMPILE_CACHE_BYTES,
    COMPILE_MEMORY_BYTES,
    DEFAULT_MAXIMA,
    LOG_LIMIT,
    MAX_COMPILE_S,
    MAX_OUTPUTS,
    MIB,
    ExecutionRequest,
    ExecutionResult,
    ExecutorKind,
    Invocation,
    JobMaxima,
    OutputName,
)
from p2pnode.ids import BlobHash

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
_EINVAL = 28
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
"""A WASI ``subscription``: userdata, tag, then for a clock: id, timeout, precision, flags (for
fd events the fd sits where the clock id does)."""
_EVENT = struct.Struct("<QHB5xQH6x")
"""A WASI ``event``: userdata, error, type, then nbytes and flags for fd events."""
_CLOCK_TAG = 0
_ABSTIME = 1
_REALTIME = 0
_STREAMS = ("stdout", "stderr")
"""A command's output names for its standard streams; ``/out`` files may not take them."""
_MAX_TABLES = 4
_TABLE_ELEMENT = 8
"""Bytes wasmtime's limiter counts per table element."""
OUTPUT_POLL_S = 0.01
"""How often the output guard sums ``/out``; a guest writing ~360 MB/s (measured) overshoots
the cap by a few MB at most."""
_output_name = TypeAdapter(OutputName)
_COMPILER = Path(__file__).with_name("compiler.py")


class InvalidModule(ValueError):
    """The bytes are neither a valid WebAssembly binary nor valid WAT text."""


class _Failure(Exception):
    """A job failure with its reason, raised to short-cut a run."""


class _ArtifactGone(Exception):
    """The compile cache's file of a module it knew is gone (removed behind its back)."""


class _Stopped(Exception):
    """Raised by a host call to unwind a guest that was stopped while it slept: a guest that
    returns without another call or loop would never meet its epoch deadline."""


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
    artifact: Path
    """``Module.serialize()`` output on disk, mapped into each run's own engine."""
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
    exit_code: int | None = None
    """How the guest ended (0 also when ``_start`` returned); None after a trap."""
    interrupted: bool = False
    detail: str = ""
    """wasmtime's full message (with backtrace), for the logs."""
    logs: str = ""
    """The tail of the run's stderr."""
    outputs: dict[str, Path] = field(default_factory=dict)
    """What the run left to publish (empty when `unpublishable`)."""
    unpublishable: str | None = None
    """Why the outputs break the node's bounds, if they do."""
    artifact_gone: bool = False
    """The compiled module's file was gone: nothing ran."""


class WasiExecutor:
    """Runs WASI workflows in-process; one thread per running job, never blocking trio."""

    kind: ExecutorKind = "wasi"

    def __init__(
        self,
        *,
        maxima: JobMaxima = DEFAULT_MAXIMA,
        cache_dir: Path | None = None,
        cache_bytes: int = COMPILE_CACHE_BYTES,
        max_compile_s: float = MAX_COMPILE_S,
        max_compile_bytes: int = COMPILE_MEMORY_BYTES,
    ) -> None:
        """``cache_dir``: where compiled modules are kept (None: a temporary folder, for as long
        as this executor lives); ``max_compile_s``: the most one compilation may take, apart
        from the run's own time limit; ``max_compile_bytes``: the compiling child's address
        space."""
        self.maxima = maxima
        self.max_compile_s = max_compile_s
        self.max_compile_bytes = max_compile_bytes
        if cache_dir is None:
            self._tmp_cache = tempfile.TemporaryDirectory(prefix="p2pnode-compiled-")
            cache_dir = Path(self._tmp_cache.name)
        self._cache = _DiskCache(cache_dir, cache_bytes)
        self._compiling: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._engines: list[_Engine] = []
        """Idle engines, each kept for the next run (see `_Engine`)."""
        self.compilations = 0
        """Modules compiled (not found in the cache) since this executor started."""

    async def available(self) -> bool:
        return True

    def has_module(self, module_hash: BlobHash) -> bool:
        """Compiled and cached (known to this runner: nothing is read to answer)."""
        return self._cache.known(module_hash)

    async def run(self, req: ExecutionRequest) -> ExecutionResult:
        limits, notes = self.maxima.cap(req.limits)
        try:
            capped = req.model_copy(update={"limits": limits})
            try:
                compiled, how = await self._compiled(req)
                result = await self._run(capped, compiled)
            except _ArtifactGone:  # removed behind our back: compile again, as if unknown
                self._cache.forget(req.module_hash)
                compiled, how = await self._compiled(req)
                result = await self._run(capped, compiled)
            result = result.model_copy(update={"compile_note": how})
        except _Failure as failure:
            result = ExecutionResult.failure(str(failure))
        except Exception as exc:  # an OS error or a bug must not take the node down
            result = ExecutionResult.failure(f"runner error: {exc!r}")
        return result.noted(notes.values())

    async def _run(self, req: ExecutionRequest, compiled: _Compiled) -> ExecutionResult:
        if req.command is not None:
            if compiled.workflows.get(MAIN_WORKFLOW) != _START:
                raise _Failure("a command job needs a module that exports _start")
            export = _START
            stdin = b""
        else:
            export = _select(compiled.workflows, req.workflow)
            try:
                stdin = json.dumps(req.input).encode()
            except (TypeError, ValueError) as exc:
                raise _Failure(f"job input is not JSON: {exc}") from None

        # The deadline is armed before the watchdogs exist: an early tick can't be missed.
        engine = self._engines.pop() if self._engines else _Engine()
        store = wasmtime.Store(engine.engine)
        store.set_fuel(req.limits.fuel)
        budget = _StoreBudget.of(req.limits.memory_bytes)
        budget.apply(store)
        store.set_epoch_deadline(1)
        run = _Run(
            engine, store, budget, compiled.artifact, export, stdin, req, self._collect_outputs
        )
        stopped_because: list[str] = []

        def interrupt(reason: str) -> None:
            stopped_because.append(reason)
            run.stop()

        async def deadline() -> None:
            try:
                await trio.sleep(req.limits.time_s)
                interrupt(f"timed out after {req.limits.time_s:g} s")
            finally:
                # On cancellation too this stops the guest at its next loop head or call;
                # after a normal end it is harmless.
                run.stop()

        async def output_guard() -> None:
            while True:
                await trio.sleep(OUTPUT_POLL_S)
                excess = await trio.to_thread.run_sync(self._excess, req)
                if excess is not None:
                    interrupt(excess)
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadline)
            nursery.start_soon(output_guard)
            outcome = await trio.to_thread.run_sync(run.execute)
            nursery.cancel_scope.cancel()
        # Only now, with the watchdogs done (their last act ticks this engine's epoch), may the
        # next run have the engine: a tick meant for this run must never stop that one.
        self._engines.append(engine)
        if outcome.artifact_gone:
            raise _ArtifactGone

        logs = outcome.logs
        if outcome.detail:
            separator = "\n" if logs and not logs.endswith("\n") else ""
            logs += f"{separator}[wasmtime] {outcome.detail.strip()[:_DETAIL_LIMIT]}"
        # A cancelled run re-raises Cancelled when the nursery exits, so a watchdog stopped it.
        error = stopped_because[0] if outcome.interrupted else outcome.error
        if req.command is not None:
            return self._command_result(outcome, error, logs)
        if error is None and outcome.exit_code:
            error = f"workflow exited with code {outcome.exit_code}"
        if error is not None:
            return ExecutionResult.failure(error, logs)
        if run.stdout.overflow:
            return ExecutionResult.failure(
                f"workflow wrote more than {STDOUT_LIMIT} bytes to stdout", logs
            )
        try:
            result = _parse_result(bytes(run.stdout.data))
        except _Failure as failure:
            return ExecutionResult.failure(str(failure), logs)
        if outcome.unpublishable is not None:
            return ExecutionResult.failure(outcome.unpublishable, logs)
        return ExecutionResult(ok=True, result=result, logs=logs, outputs=outcome.outputs)

    def _command_result(self, outcome: _Outcome, error: str | None, logs: str) -> ExecutionResult:
        """A command's exit code and outputs, kept on failure too: partial outputs help
        debugging. Outputs that break the node's bounds fail it and are dropped."""
        result = None if outcome.exit_code is None else {"exit_code": outcome.exit_code}
        if error is None and outcome.exit_code:
            error = f"command exited with code {outcome.exit_code}"
        error = error or outcome.unpublishable
        return ExecutionResult(
            ok=error is None, result=result, error=error, logs=logs, outputs=outcome.outputs
        )

    def _excess(self, req: ExecutionRequest) -> str | None:
        """Why what the guest wrote so far breaks the node's bounds, if it does (blocking)."""
        return self._output_excess(*_output_usage(req.output_dir, _streams_dir(req))) or (
            f"/tmp exceeds this node's limit of {self.maxima.output_bytes} bytes"
            if _output_usage(_tmp_dir(req))[0] > self.maxima.output_bytes
            else None
        )

    def _output_excess(self, size: int, files: list[Path]) -> str | None:
        """Why the outputs so far break the node's bounds, if they do."""
        if size > self.maxima.output_bytes:
            return f"outputs exceed this node's limit of {self.maxima.output_bytes} bytes"
        if len(files) > MAX_OUTPUTS:
            return f"more than {MAX_OUTPUTS} output files"
        return None

    def _collect_outputs(self, req: ExecutionRequest) -> dict[str, Path]:
        """Regular files under the output folder by relative POSIX name, and a command's
        ``stdout`` and ``stderr`` (blocking). Symlinks are never followed, so a guest can't make
        the node publish a host file; a name that cannot be an ``OutputName`` fails the job rather
        than the report."""
        streams = _streams_dir(req)
        size, files = _output_usage(req.output_dir, streams)
        if (excess := self._output_excess(size, files)) is not None:
            raise _Failure(excess)
        outputs: dict[str, Path] = {}
        for path in files:
            if path.parent == streams:
                continue
            name = path.relative_to(req.output_dir).as_posix()
            if req.command is not None and name in _STREAMS:
                raise _Failure(f"output {name!r} is reserved for the command's {name}")
            try:
                outputs[_output_name.validate_python(name)] = path
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise _Failure(f"output {name!r} cannot be published: {reason}") from None
        if req.command is not None:
            outputs.update((name, streams / name) for name in _STREAMS)
        return dict(sorted(outputs.items()))

    async def _compiled(self, req: ExecutionRequest) -> tuple[_Compiled, str]:
        """The module's machine code, from the cache or compiled once however many jobs ask,
        and how it was had (for the job's history)."""
        key = req.module_hash
        lock = self._compiling[key]
        try:
            async with lock:
                if (hit := self._cache.recall(key)) is not None:  # no thread hop: the run reads it
                    return hit, "compile cache hit"
                if (hit := await trio.to_thread.run_sync(self._cache.get, key)) is not None:
                    return hit, "compile cache hit"
                try:
                    wasm = await trio.to_thread.run_sync(load_module_bytes, req.module_path)
                except InvalidModule as exc:
                    raise _Failure(f"invalid module: {exc}") from None
                except OSError as exc:
                    reason = exc.strerror or exc
                    raise _Failure(f"cannot read module {req.module_path}: {reason}") from None
                started = time.monotonic()
                compiled = await self._compile_in_child(key, wasm)
                self.compilations += 1
                return compiled, f"compiled in {time.monotonic() - started:.1f} s"
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._compiling.pop(key, None)

    async def _compile_in_child(self, key: BlobHash, wasm: bytes) -> _Compiled:
        """Compile in a process of its own (see ``compiler.py``), killed once it takes longer
        than ``max_compile_s``, and keep the result in the cache."""
        part = self._cache.part_path(key)
        command = [sys.executable, str(_COMPILER), json.dumps(_ENGINE_SETTINGS), str(part)]
        command.append(str(self.max_compile_bytes))
        # Few malloc arenas: each reserves 64 MiB of address space, one per compiling thread.
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        try:
            with trio.move_on_after(self.max_compile_s) as limit:
                done = await trio.run_process(
                    command,
                    stdin=wasm,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=env,
                )
            if limit.cancelled_caught:
                raise _Failure(
                    f"compiling the module took longer than the limit of {self.max_compile_s:g} s"
                )
            detail = _oneline(done.stderr.decode(errors="replace"))[:_DETAIL_LIMIT]
            if done.returncode == 1:
                raise _Failure(f"invalid module: {detail}")
            if done.returncode != 0:
                raise _Failure(
                    f"compiler failed with status {done.returncode} (its memory is limited to "
                    f"{self.max_compile_bytes >> 20} MiB): {detail}"
                )
            return await trio.to_thread.run_sync(self._cache.put, key, part)
        finally:
            part.unlink(missing_ok=True)


class _DiskCache:
    """Compiled modules as files named by their key, evicted least recently used first once
    they total more than ``limit`` bytes (the newest always stays). Blocking: call in a thread."""

    def __init__(self, folder: Path, limit: int) -> None:
        self._folder = folder
        self._limit = limit
        for part in folder.glob("*.part"):  # left by a node killed mid-compile; one node per folder
            part.unlink(missing_ok=True)
        self._workflows: dict[str, dict[str, str]] = {}
        """key -> the module's workflows, known without loading it again"""

    def known(self, module_hash: BlobHash) -> bool:
        """Whether this cache has taken or found the module since it opened (without reading
        the disk: an entry removed behind its back is still known)."""
        return module_hash in self._workflows

    def recall(self, module_hash: BlobHash) -> _Compiled | None:
        """A known module's entry, without touching the disk (the run does: `_Engine.module`)."""
        workflows = self._workflows.get(module_hash)
        return None if workflows is None else _Compiled(self._path(module_hash), workflows)

    def forget(self, module_hash: BlobHash) -> None:
        self._workflows.pop(module_hash, None)

    def get(self, module_hash: BlobHash) -> _Compiled | None:
        path = self._path(module_hash)
        try:
            os.utime(path)  # recently used
            workflows = self._workflows.get(module_hash)
            if workflows is None:
                module = wasmtime.Module.deserialize_file(_new_engine(), str(path))
                workflows = self._workflows[module_hash] = _workflows(module)
        except FileNotFoundError:
            self._workflows.pop(module_hash, None)  # removed behind our back: not known now
            return None
        except wasmtime.WasmtimeError:  # damaged, or made by another wasmtime: compile again
            path.unlink(missing_ok=True)
            self._workflows.pop(module_hash, None)
            return None
        return _Compiled(artifact=path, workflows=workflows)

    def part_path(self, module_hash: BlobHash) -> Path:
        """A fresh file name for a compilation in progress (its folder exists)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._path(module_hash).with_suffix(f".{secrets.token_hex(8)}.part")

    def put(self, module_hash: BlobHash, part: Path) -> _Compiled:
        """Take a compilation from ``part_path`` into the cache."""
        path = self._path(module_hash)
        module = wasmtime.Module.deserialize_file(_new_engine(), str(part))
        part.replace(path)
        workflows = self._workflows[module_hash] = _workflows(module)
        self._evict(keep=path)
        return _Compiled(artifact=path, workflows=workflows)

    def _path(self, module_hash: BlobHash) -> Path:
        return self._folder / f"{module_hash}-{_ENGINE_KEY}.cwasm"

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in self._folder.glob("*.cwasm"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self._limit:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                self._workflows.pop(path.name.partition("-")[0], None)
                total -= size


class _Run:
    """One run's blocking part, executed in a worker thread."""

    def __init__(
        self,
        engine: _Engine,
        store: wasmtime.Store,
        budget: _StoreBudget,
        artifact: Path,
        export: str,
        stdin: bytes,
        req: ExecutionRequest,
        collect: Callable[[ExecutionRequest], dict[str, Path]],
    ) -> None:
        """`collect(req)`: the outputs to publish, once the guest is done (raises `_Failure`)."""
        self.collect = collect
        self.engine = engine
        self.store = store
        self.budget = budget
        self.artifact = artifact
        self.export = export
        self.stdin = stdin
        self.req = req
        self.stdout = _Head(STDOUT_LIMIT)
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Interrupt the guest (from trio): at its next loop head or call, or in a host sleep."""
        self._stopped.set()
        self.engine.engine.increment_epoch()

    def execute(self) -> _Outcome:
        """Run the guest, then read its stderr's tail and list its outputs: the blocking part of
        a run in one thread hop (each hop costs more than a small run's own work). Never
        raises: an exception here would reach trio wrapped in an exception group."""
        tmp_dir = _tmp_dir(self.req)
        # Beside /tmp in the run's scratch folder, which the guest cannot see: no temporary
        # folder of its own (making and removing one cost more than the rest of a small run).
        stdin_path = self.req.scratch_dir / "stdin.json"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            stdin_path.write_bytes(self.stdin)
            outcome = self._call(stdin_path)
        except _ArtifactGone:
            return _Outcome(artifact_gone=True)
        except Exception as exc:  # e.g. an unusable artifacts or output directory
            outcome = _Outcome(error=f"runner error: {exc!r}")
        finally:
            self.engine.run = None  # the engine outlives the run; its buffers go now
            self.store.close()  # frees the linear memory now, not whenever the GC runs
            stdin_path.unlink(missing_ok=True)
            shutil.rmtree(tmp_dir, ignore_errors=True)
        try:
            outcome.logs = _file_tail(_streams_dir(self.req) / "stderr")
            outcome.outputs = self.collect(self.req)
        except _Failure as failure:
            outcome.unpublishable = str(failure)
        except OSError as exc:
            outcome.unpublishable = f"runner error: {exc!r}"
        return outcome

    def _call(self, stdin_path: Path) -> _Outcome:
        req = self.req
        req.artifacts_dir.mkdir(parents=True, exist_ok=True)
        req.output_dir.mkdir(parents=True, exist_ok=True)
        wasi = wasmtime.WasiConfig()
        if req.command is None:
            wasi.argv = [self.export]
            wasi.stdin_file = str(stdin_path)
            wasi.stdout_custom = self.stdout.write
            _streams_dir(req).mkdir(parents=True, exist_ok=True)
            wasi.stderr_file = str(_streams_dir(req) / "stderr")  # a file, for live logs
        else:
            self._configure_command(wasi, req.command, stdin_path)
        wasi.preopen_dir(str(req.artifacts_dir), "/in", False)  # fd 3
        wasi.preopen_dir(str(req.output_dir), "/out", True)  # fd 4
        wasi.preopen_dir(str(_tmp_dir(req)), "/tmp", True)  # fd 5
        for guest_path, host_dir in sorted(req.mounts.items()):
            wasi.preopen_dir(str(host_dir), guest_path, False)
        self.store.set_wasi(wasi)
        module = self.engine.module(self.artifact)
        self.engine.run = self

        instance: wasmtime.Instance | None = None
        try:
            instance = self.engine.linker.instantiate(self.store, module)
            exports = instance.exports(self.store)
            initialize = exports.get(_INITIALIZE)
            if self.export != _START and isinstance(initialize, wasmtime.Func):
                initialize(self.store)
            workflow = exports[self.export]
            assert isinstance(workflow, wasmtime.Func)  # _workflows() only lists functions
            workflow(self.store)
        except wasmtime.ExitTrap as exit_:
            return _Outcome(exit_code=exit_.code)
        except _Stopped:
            return _Outcome(interrupted=True)
        except wasmtime.Trap as trap:
            return self._trap_outcome(trap, instance)
        except wasmtime.WasmtimeError as exc:
            what = "cannot instantiate module" if instance is None else "wasmtime error"
            error = f"{what}: {_oneline(str(exc))}"
            if "resource limit exceeded" in error:
                error += f" (a job gets at most 1 linear memory and {_MAX_TABLES} tables)"
            return _Outcome(error=error)
        return _Outcome(exit_code=0)

    def _configure_command(
        self, wasi: wasmtime.WasiConfig, command: Invocation, empty: Path
    ) -> None:
        """Exactly the command's argv and environment (the worker's own never leaks in: nothing
        is inherited), its stdin (``empty``, an empty file, without one), and stdout/stderr straight
        into files the output guard sums."""
        streams = _streams_dir(self.req)
        streams.mkdir(parents=True, exist_ok=True)
        wasi.argv = command.argv
        wasi.env = list(command.env.items())
        wasi.stdin_file = str(command.stdin or empty)
        wasi.stdout_file = str(streams / "stdout")
        wasi.stderr_file = str(streams / "stderr")

    def _poll_oneoff(
        self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int
    ) -> int:
        """WASI ``poll_oneoff``: fd subscriptions are ready at once (files never block), clock
        subscriptions sleep on the host until the earliest is due, or until the run is stopped
        (which unwinds the guest)."""
        memory = caller.get("memory")
        if not isinstance(memory, wasmtime.Memory) or count <= 0:
            return _EINVAL
        raw = bytes(memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION.size))
        subscriptions = list(_SUBSCRIPTION.iter_unpack(raw))
        start = time.monotonic_ns()
        due: dict[int, int] = {}
        for index, (_, tag, clock, timeout, _, flags) in enumerate(subscriptions):
            if tag == _CLOCK_TAG:
                # An absolute deadline is taken against the host's clock of that kind.
                if flags & _ABSTIME:
                    timeout -= time.time_ns() if clock == _REALTIME else start
                due[index] = start + max(timeout, 0)
        if len(due) == count:
            if self._stopped.wait((min(due.values()) - start) / 1e9):
                raise _Stopped
        now = time.monotonic_ns()
        events = b"".join(
            _EVENT.pack(userdata, 0, tag, 0, 0)
            for index, (userdata, tag, *_) in enumerate(subscriptions)
            if due.get(index, now) <= now
        )
        memory.write(caller, events, out_ptr)
        memory.write(caller, struct.pack("<I", len(events) // _EVENT.size), nevents_ptr)
        return 0

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


MODULES_PER_ENGINE = 16
"""Compiled modules an engine keeps mapped (the most recently run)."""


class _Engine:
    """An engine, its linker and the modules it mapped, for one run at a time (so that its
    epoch interrupts exactly that run, see `_Run.stop`) and kept for the next: making them took
    longer than a small run itself (~0.15 ms of ~1 ms, measured). Every run has its own store,
    so nothing of one run's state reaches the next."""

    def __init__(self) -> None:
        self.engine = _new_engine()
        self.run: _Run | None = None
        """The run using the engine now: WASI `poll_oneoff` is its."""
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self.linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        self.linker.define_func(
            _WASI,
            "poll_oneoff",
            wasmtime.FuncType([i32] * 4, [i32]),
            self._poll_oneoff,
            access_caller=True,
        )
        self._modules: OrderedDict[Path, wasmtime.Module] = OrderedDict()

    def _poll_oneoff(
        self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int
    ) -> int:
        assert self.run is not None
        return self.run._poll_oneoff(caller, in_ptr, out_ptr, count, nevents_ptr)

    def module(self, artifact: Path) -> wasmtime.Module:
        """The compile cache's module at `artifact`, marked as recently used there, and mapped
        into this engine once (blocking). `_ArtifactGone` if the cache's file is gone."""
        try:
            os.utime(artifact)
        except FileNotFoundError:
            raise _ArtifactGone from None
        module = self._modules.pop(artifact, None)
        if module is None:
            module = wasmtime.Module.deserialize_file(self.engine, str(artifact))
        self._modules[artifact] = module
        while len(self._modules) > MODULES_PER_ENGINE:
            self._modules.popitem(last=False)
        return module


_ENGINE_SETTINGS = {"consume_fuel": True, "epoch_interruption": True}
_ENGINE_KEY = hashlib.sha256(
    json.dumps([importlib.metadata.version("wasmtime"), _ENGINE_SETTINGS]).encode()
).hexdigest()[:16]
"""What changes the machine code besides the module: part of every compile cache key."""


def _new_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    for setting, value in _ENGINE_SETTINGS.items():
        setattr(config, setting, value)
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


def _streams_dir(req: ExecutionRequest) -> Path:
    """Where a command's stdout and stderr go, and a workflow's stderr."""
    return req.streams_dir


def _tmp_dir(req: ExecutionRequest) -> Path:
    """The guest's ``/tmp``."""
    return req.scratch_dir / "tmp"


def _file_tail(path: Path) -> str:
    """The last ``LOG_LIMIT`` bytes of a file as text, marked when cut; "" if there is none."""
    tail = _Tail()
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - LOG_LIMIT - 1, 0))
            tail.write(f.read())
    except FileNotFoundError:
        return ""
    return tail.text()


def _output_usage(*dirs: Path) -> tuple[int, list[Path]]:
    """Bytes under ``dirs`` (each entry's apparent or allocated size, whichever is larger, so
    sparse files count at the size they would publish) and their regular files; symlinks are
    counted, never followed. Entries vanishing mid-walk are skipped: the guest is still running."""
    size = 0
    files: list[Path] = []
    pending = list(dirs)
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
