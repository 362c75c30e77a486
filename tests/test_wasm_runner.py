"""The embedded WASI runner: results, files, limits and every way a job can fail."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.executors.base import (
    ExecutionLimits,
    ExecutionRequest,
    ExecutionResult,
    Executor,
    Invocation,
)
from p2pnode.executors.wasm import (
    STDOUT_LIMIT,
    InvalidModule,
    WasiExecutor,
    list_workflows,
    load_module_bytes,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

WASI_IMPORTS = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; write(fd, ptr, len) with the iovec at 0 and the byte count at 8
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"""


def wasi_module(body: str, data: bytes = b"") -> str:
    """A WAT module with the WASI helpers above; ``data`` is placed at address 1024."""
    escaped = "".join(f"\\{byte:02x}" for byte in data)
    return f'(module {WASI_IMPORTS} (data (i32.const 1024) "{escaped}") {body})'


def printing(text: str, fd: int = 1) -> str:
    data = text.encode()
    return wasi_module(
        f'(func (export "_start") (call $write (i32.const {fd}) (i32.const 1024) '
        f"(i32.const {len(data)})))",
        data,
    )


@pytest.fixture
def executor() -> WasiExecutor:
    return WasiExecutor()


@pytest.fixture
def job(tmp_path: Path):
    """Builds a request for a module given as WAT text, bytes, or an example's name."""

    def make(module: str | bytes, suffix: str = ".wat", **fields: Any) -> ExecutionRequest:
        if isinstance(module, str) and not module.startswith("("):
            path = EXAMPLES / f"{module}.wat"
        else:
            data = module.encode() if isinstance(module, str) else module
            path = tmp_path / f"module-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
            path.write_bytes(data)
        limits = ExecutionLimits(**fields.pop("limits", {}))
        return ExecutionRequest(
            module_path=path,
            module_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
            artifacts_dir=tmp_path / "in",
            output_dir=tmp_path / "out",
            scratch_dir=Path(tempfile.mkdtemp(dir=tmp_path, prefix="scratch-")),  # one per run
            limits=limits,
            **fields,
        )

    return make


def failed(result: ExecutionResult) -> str:
    assert not result.ok and result.result is None and result.outputs == {}
    assert result.error is not None
    return result.error


async def test_wordcount_counts_artifact_and_writes_output(
    executor: WasiExecutor, job: Any, tmp_path: Path
) -> None:
    assert isinstance(executor, Executor) and executor.kind == "wasi"
    assert await executor.available()
    (tmp_path / "in").mkdir()
    text = "The quick  brown fox\n\tjumps over\r\nthe lazy dög. " * 5000 + "end"
    (tmp_path / "in" / "text").write_text(text)
    result = await executor.run(job("wordcount"))
    assert result.ok, result
    assert result.result == {"words": len(text.split())}
    assert result.outputs == {"count.txt": tmp_path / "out" / "count.txt"}
    assert (tmp_path / "out" / "count.txt").read_text() == str(len(text.split()))


async def test_wordcount_without_artifact_explains(executor: WasiExecutor, job: Any) -> None:
    result = await executor.run(job("wordcount"))
    assert failed(result) == "workflow exited with code 1"
    assert "wordcount: cannot open /in/text" in result.logs


async def test_echo_returns_input(executor: WasiExecutor, job: Any) -> None:
    value = {"list": [1, 2.5, None, True], "text": "ünïcode ✓", "nested": {"a": "b" * 100_000}}
    result = await executor.run(job("echo", input=value))
    assert result.ok and result.result == value


async def test_trap_is_reported_with_stderr(executor: WasiExecutor, job: Any) -> None:
    result = await executor.run(job("fail"))
    assert failed(result) == "trap: wasm `unreachable` instruction executed"
    assert result.logs.startswith("fail: giving up on purpose\n")
    assert "[wasmtime]" in result.logs  # the backtrace, for whoever debugs it


async def test_out_of_bounds_trap(executor: WasiExecutor, job: Any) -> None:
    module = '(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))'
    error = failed(await executor.run(job(module)))
    assert error.startswith("trap: out of bounds memory access (memory fault at wasm address")


async def test_infinite_loop_runs_out_of_fuel(executor: WasiExecutor, job: Any) -> None:
    result = await executor.run(job("spin", limits={"fuel": 1_000_000}))
    assert failed(result) == "out of fuel (limit 1000000)"


async def test_memory_hungry_module_hits_limit(executor: WasiExecutor, job: Any) -> None:
    # Grows one page at a time until refused, then traps, like an allocator out of memory.
    hog = """(module (memory (export "memory") 1)
      (func (export "_start")
        (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        unreachable))"""
    error = failed(await executor.run(job(hog, limits={"memory_bytes": 1 << 20})))
    assert error == (
        "trap: wasm `unreachable` instruction executed; memory limit of 1048576 bytes reached"
        " (a memory.grow was likely refused)"
    )
    too_big = '(module (memory 100) (func (export "_start")))'
    error = failed(await executor.run(job(too_big, limits={"memory_bytes": 1 << 20})))
    assert (
        error == "cannot instantiate module: memory minimum size of 100 pages exceeds memory limits"
    )


async def test_wall_time_limit(executor: WasiExecutor, job: Any) -> None:
    start = trio.current_time()
    result = await executor.run(job("spin", limits={"fuel": 10**18, "time_s": 0.5}))
    assert failed(result) == "timed out after 0.5 s"
    assert trio.current_time() - start < 3


async def test_cancellation_stops_the_guest(executor: WasiExecutor, job: Any) -> None:
    start = trio.current_time()
    with trio.move_on_after(0.3) as scope:
        await executor.run(job("spin", limits={"fuel": 10**18, "time_s": 600}))
    # run() only returns once its worker thread has ended, so the guest was stopped.
    assert scope.cancelled_caught
    assert trio.current_time() - start < 3


async def test_runs_are_isolated(executor: WasiExecutor, job: Any) -> None:
    results: dict[str, ExecutionResult] = {}

    async def run(name: str, req: ExecutionRequest) -> None:
        results[name] = await executor.run(req)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "spin", job("spin", limits={"fuel": 10**18, "time_s": 0.3}))
        for i in range(3):
            nursery.start_soon(run, f"echo{i}", job("echo", input=i))
    assert failed(results["spin"]) == "timed out after 0.3 s"
    assert [results[f"echo{i}"].result for i in range(3)] == [0, 1, 2]


async def test_an_engine_serves_one_run_after_another_and_nothing_carries_over(
    executor: WasiExecutor, job: Any
) -> None:
    """Engines are kept (making one, its linker and its module took longer than a small run);
    each run still gets a fresh store, and the watchdog's last epoch tick of a stopped run
    lands before its engine serves the next run."""
    counter = """(module (memory (export "memory") 1)
      (func (export "_start") (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0))
        (i32.const 1)))
        (if (i32.ne (i32.load (i32.const 0)) (i32.const 1)) (then unreachable))))"""
    for _ in range(3):  # a store's memory would count up and trap on the second run
        assert (await executor.run(job(counter, command=Invocation(argv=["c"])))).ok
    assert failed(await executor.run(job("spin", limits={"fuel": 10**18, "time_s": 0.2}))) == (
        "timed out after 0.2 s"
    )
    assert (await executor.run(job("echo", input=5))).result == 5  # on the stopped run's engine
    assert len(executor._engines) == 1  # one after another: one engine did it all


@pytest.mark.parametrize(
    ("module", "suffix", "reason"),
    [
        (b"\0asm\x01\0\0\0garbage", ".wasm", "invalid module: failed to parse WebAssembly module"),
        (b"\xff\xfe\x00\x01", ".wasm", "invalid module: neither a WebAssembly binary nor WAT text"),
        (b"(module (func", ".wat", "invalid module: cannot assemble WAT: "),
        (
            b'(module (import "env" "f" (func)) (func (export "_start")))',
            ".wat",
            "cannot instantiate module: unknown import: `env::f` has not been defined",
        ),
    ],
)
async def test_bad_modules(
    executor: WasiExecutor, job: Any, module: bytes, suffix: str, reason: str
) -> None:
    assert failed(await executor.run(job(module, suffix=suffix))).startswith(reason)


async def test_missing_module_file(executor: WasiExecutor, job: Any, tmp_path: Path) -> None:
    req = job("echo").model_copy(
        update={"module_path": tmp_path / "gone.wasm", "module_hash": "00"}
    )
    error = failed(await executor.run(req))
    assert error == f"cannot read module {tmp_path / 'gone.wasm'}: No such file or directory"


async def test_binary_modules_and_loading(executor: WasiExecutor, job: Any) -> None:
    wasm = load_module_bytes(EXAMPLES / "echo.wat")
    assert wasm.startswith(b"\0asm") and load_module_bytes(EXAMPLES / "echo.wat") == wasm
    result = await executor.run(job(wasm, suffix=".wasm", input=[1]))
    assert result.ok and result.result == [1]
    with pytest.raises(InvalidModule):
        list_workflows(b"\0asm junk")


async def test_output_must_be_json(executor: WasiExecutor, job: Any) -> None:
    error = failed(await executor.run(job(printing("hello"))))
    assert error.startswith("workflow wrote non-JSON output: 'hello' (")
    error = failed(await executor.run(job('(module (func (export "_start")))')))
    assert error == "workflow wrote non-JSON output: nothing on stdout"


async def test_stdout_and_stderr_are_bounded(executor: WasiExecutor, job: Any) -> None:
    def flood(fd: int, chunks: int, then: str = "") -> str:
        return wasi_module(
            f"""(func (export "_start") (local $i i32)
              (loop $again
                (call $write (i32.const {fd}) (i32.const 0) (i32.const 65536))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $again (i32.lt_u (local.get $i) (i32.const {chunks}))))
              {then})""",
        )

    error = failed(await executor.run(job(flood(1, STDOUT_LIMIT // 65536 + 1))))
    assert error == f"workflow wrote more than {STDOUT_LIMIT} bytes to stdout"
    # "1" as the result, after 1 MiB of stderr
    noisy = flood(
        2,
        16,
        then="(i32.store8 (i32.const 2000) (i32.const 49)) "
        "(call $write (i32.const 1) (i32.const 2000) (i32.const 1))",
    )
    result = await executor.run(job(noisy))
    assert result.ok and result.result == 1
    assert 64 * 1024 <= len(result.logs) < 65 * 1024
    assert result.logs.startswith("[... earlier output dropped ...]")


async def test_exit_codes(executor: WasiExecutor, job: Any) -> None:
    exit3 = wasi_module('(func (export "_start") (call $proc_exit (i32.const 3)))')
    assert failed(await executor.run(job(exit3))) == "workflow exited with code 3"
    print_then_exit0 = wasi_module(
        '(func (export "_start") (call $write (i32.const 1) (i32.const 1024) (i32.const 4))'
        " (call $proc_exit (i32.const 0)))",
        b"true",
    )
    result = await executor.run(job(print_then_exit0))
    assert result.ok and result.result is True


def sleeping(ns: int) -> str:
    """Sleeps ``ns`` with one relative clock subscription; prints true if its event came back."""
    return wasi_module(
        f"""
        (func (export "_start")
          (i64.store (i32.const 64) (i64.const 7))
          (i32.store8 (i32.const 72) (i32.const 0))
          (i32.store (i32.const 80) (i32.const 1))
          (i64.store (i32.const 88) (i64.const {ns}))
          (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 200)))
          (if (i32.and (i32.eq (i32.load (i32.const 200)) (i32.const 1))
                       (i64.eq (i64.load (i32.const 128)) (i64.const 7)))
            (then (call $write (i32.const 1) (i32.const 1024) (i32.const 4)))))
        """,
        b"true",
    )


async def test_host_sleep_works(executor: WasiExecutor, job: Any) -> None:
    result = await executor.run(job(sleeping(20_000_000)))
    assert result.ok and result.result is True, result


async def test_host_sleep_is_interrupted_by_the_time_limit(
    executor: WasiExecutor, job: Any
) -> None:
    with trio.fail_after(60):  # the guest asks for an hour
        result = await executor.run(job(sleeping(3600 * 10**9), limits={"time_s": 0.5}))
    assert failed(result) == "timed out after 0.5 s"


async def test_workflow_selection(executor: WasiExecutor, job: Any) -> None:
    module = wasi_module(
        """
        (func (export "_initialize") (i32.store8 (i32.const 1024) (i32.const 55)))  ;; "7"
        (func (export "alpha") (call $write (i32.const 1) (i32.const 1024) (i32.const 1)))
        (func (export "beta") (call $write (i32.const 1) (i32.const 1025) (i32.const 6)))
        (func (export "helper") (param i32))
        """,
        b'0"beta"',
    )
    assert list_workflows(module.encode()) == ["alpha", "beta"]
    assert list_workflows(load_module_bytes(EXAMPLES / "wordcount.wat")) == ["main"]
    ambiguous = failed(await executor.run(job(module)))
    assert ambiguous == "module has 2 workflows, name one of: alpha, beta"
    unknown = failed(await executor.run(job(module, workflow="gamma")))
    assert unknown == "module has no workflow 'gamma' (available: alpha, beta)"
    assert (await executor.run(job(module, workflow="alpha"))).result == 7  # _initialize ran
    assert (await executor.run(job(module, workflow="beta"))).result == "beta"
    assert (await executor.run(job("echo", workflow="main", input=1))).result == 1
    none = failed(await executor.run(job("(module)")))
    assert none.startswith("module exports no workflow")


async def test_inputs_are_read_only(executor: WasiExecutor, job: Any, tmp_path: Path) -> None:
    # path_open("/in/new.txt", O_CREAT) and exit with its errno
    creator = wasi_module(
        '(func (export "_start") (call $proc_exit (call $path_open (i32.const 3) (i32.const 0)'
        " (i32.const 1024) (i32.const 7) (i32.const 1) (i64.const 64) (i64.const 0)"
        " (i32.const 0) (i32.const 8))))",
        b"new.txt",
    )
    error = failed(await executor.run(job(creator)))
    assert error.startswith("workflow exited with code ") and error != "workflow exited with code 0"
    assert os.listdir(tmp_path / "in") == []


async def test_symlinks_in_output_are_not_published(
    executor: WasiExecutor, job: Any, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "text").write_text("one two")
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "kept.txt").write_text("x")
    (tmp_path / "out" / "leak").symlink_to("/etc/hostname")
    result = await executor.run(job("wordcount"))
    assert result.ok and result.result == {"words": 2}
    assert sorted(result.outputs) == ["count.txt", "sub/kept.txt"]


async def test_bad_input_is_reported(executor: WasiExecutor, job: Any) -> None:
    error = failed(await executor.run(job("echo", input={1, 2})))
    assert error.startswith("job input is not JSON: ")


async def test_stack_overflow_keeps_logs_small(executor: WasiExecutor, job: Any) -> None:
    result = await executor.run(job('(module (func $f (export "_start") (call $f)))'))
    assert failed(result) == "trap: call stack exhausted"
    assert len(result.logs) < 5000


async def test_compiled_modules_are_cached_by_hash(job: Any, tmp_path: Path) -> None:
    executor = WasiExecutor(cache_dir=tmp_path / "compiled", cache_bytes=1)  # room for the newest
    first = job(printing('"first"'))
    second = job(printing('"second"'))
    assert not executor.has_module(first.module_hash)
    assert (await executor.run(first)).result == "first"
    assert executor.has_module(first.module_hash)  # the worker need not place the file
    first.module_path.unlink()
    assert (await executor.run(first)).result == "first"  # from the cache, file not needed
    assert (await executor.run(second)).result == "second"  # evicts the first
    assert not executor.has_module(first.module_hash)
    assert failed(await executor.run(first)).startswith("cannot read module ")
    [artifact] = (tmp_path / "compiled").glob("*.cwasm")
    artifact.unlink()  # removed behind the runner's back: a run finds out, and it is not known
    second.module_path.unlink()
    assert executor.has_module(second.module_hash)
    assert failed(await executor.run(second)).startswith("cannot read module ")
    assert not executor.has_module(second.module_hash)


async def test_compile_cache_survives_a_restart(job: Any, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"
    req = job(printing('"cached"'))
    before = WasiExecutor(cache_dir=cache)
    assert (await before.run(req)).result == "cached" and before.compilations == 1
    [artifact] = cache.glob("*.cwasm")
    assert artifact.name.startswith(req.module_hash)
    req.module_path.unlink()  # only the cache can run it now
    after = WasiExecutor(cache_dir=cache)
    assert (await after.run(req)).result == "cached" and after.compilations == 0


async def test_concurrent_jobs_of_a_new_module_compile_it_once(job: Any, tmp_path: Path) -> None:
    executor = WasiExecutor(cache_dir=tmp_path / "compiled")
    module = printing('"once"')
    results: list[ExecutionResult] = []

    async def run(i: int) -> None:
        # Four jobs of one module, each with its own folders, as four workers' jobs would have.
        req = job(module).model_copy(update={"output_dir": tmp_path / f"out{i}"})
        results.append(await executor.run(req))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(run, i)
    assert [r.result for r in results] == ["once"] * 4, [r.error for r in results]
    assert executor.compilations == 1


async def test_damaged_cache_entry_is_compiled_again(job: Any, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"
    req = job(printing('"fresh"'))
    await WasiExecutor(cache_dir=cache).run(req)
    [artifact] = cache.glob("*.cwasm")
    artifact.write_bytes(b"not machine code")
    executor = WasiExecutor(cache_dir=cache)
    assert (await executor.run(req)).result == "fresh" and executor.compilations == 1


async def test_compile_cache_evicts_the_least_recently_used(job: Any, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"
    reqs = [job(printing(f'"{name}"')) for name in ("a", "b", "c")]
    sizing = WasiExecutor(cache_dir=tmp_path / "sizing")
    await sizing.run(reqs[0])
    [artifact] = (tmp_path / "sizing").glob("*.cwasm")
    # Room for two entries (the three differ by a byte or so), not for three.
    executor = WasiExecutor(cache_dir=cache, cache_bytes=artifact.stat().st_size * 5 // 2)
    for req in reqs[:2]:
        await executor.run(req)
    assert (await executor.run(reqs[0])).compile_note == "compile cache hit"  # a used last
    await executor.run(reqs[2])  # evicts b, the least recently used
    left = {path.name.partition("-")[0] for path in cache.glob("*.cwasm")}
    assert left == {reqs[0].module_hash, reqs[2].module_hash}
    assert executor.compilations == 3


async def test_compile_time_is_reported(job: Any, tmp_path: Path) -> None:
    executor = WasiExecutor(cache_dir=tmp_path / "compiled")
    req = job(printing('"timed"'))
    first, second = await executor.run(req), await executor.run(req)
    assert first.ok and re.fullmatch(r"compiled in \d+\.\d s", first.compile_note), first
    assert second.ok and second.compile_note == "compile cache hit"


async def test_compilation_has_its_own_time_limit(job: Any, tmp_path: Path) -> None:
    # Far below what starting the compiler takes, while the run's own limit is generous.
    executor = WasiExecutor(cache_dir=tmp_path / "compiled", max_compile_s=0.001)
    req = job(printing('"never"'), limits={"time_s": 600})
    with trio.fail_after(30):
        result = await executor.run(req)
    assert failed(result) == "compiling the module took longer than the limit of 0.001 s"
    assert list((tmp_path / "compiled").iterdir()) == []  # no entry, no partial file
    assert executor.compilations == 0


async def test_a_compile_memory_bomb_hits_the_childs_memory_limit(job: Any, tmp_path: Path) -> None:
    # A 350 KB function that takes ~260 MB to compile (measured): far over a 128 MiB limit.
    body = " ".join(["global.get 0 i32.const 7 i32.mul global.set 0"] * 50_000)
    bomb = f'(module (global (mut i32) (i32.const 1)) (func (export "_start") {body}))'
    executor = WasiExecutor(cache_dir=tmp_path / "compiled", max_compile_bytes=128 << 20)
    with trio.fail_after(60):
        result = await executor.run(job(bomb))
    assert failed(result).startswith(
        "compiler failed with status -6 (its memory is limited to 128 MiB): memory allocation of"
    ), result.error
    assert list((tmp_path / "compiled").iterdir()) == []
    assert executor.compilations == 0


async def test_partial_compilations_of_a_killed_node_are_removed(job: Any, tmp_path: Path) -> None:
    cache = tmp_path / "compiled"
    cache.mkdir()
    (cache / "abc-engine.0123456789abcdef.part").write_bytes(b"half of a compilation")
    executor = WasiExecutor(cache_dir=cache)
    assert list(cache.glob("*.part")) == []
    assert (await executor.run(job(printing('"ok"')))).result == "ok"
