"""The WASI runner within the host's limits: the memory limit covers the whole store, the node's
maxima cap what any job asks, and output bytes are enforced while the guest writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from p2pnode.executors.base import (
    MIB,
    ExecutionLimits,
    ExecutionRequest,
    ExecutionResult,
    JobMaxima,
)
from p2pnode.executors.wasm import MAX_OUTPUTS, WasiExecutor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FILES = """
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_set_size"
    (func $set_size (param i32 i64) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  ;; create the file named at [ptr, ptr+len) under /out (fd 4) and return its fd;
  ;; exit with the errno on failure
  (func $create (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (local.set $err (call $path_open (i32.const 4) (i32.const 0) (local.get $ptr) (local.get $len)
      (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16)))
    (if (local.get $err) (then (call $exit (local.get $err))))
    (i32.load (i32.const 16)))
  ;; write the 64 KiB at 65536 to fd, count times (-1: about forever)
  (func $fill (param $fd i32) (param $count i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (block $done (loop $more
      (br_if $done (i32.eqz (local.get $count)))
      (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $count (i32.sub (local.get $count) (i32.const 1)))
      (br $more))))
  ;; print the JSON result 0
  (func $done
    (i32.store8 (i32.const 32) (i32.const 48))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
"""


def files_module(body: str, names: list[str]) -> str:
    """A module whose ``_start`` runs ``body``; name ``i`` is at ``1024 + 256 * i`` (``$name{i}``
    in ``body`` is replaced by ``(i32.const ptr) (i32.const len)``)."""
    data = []
    for i, name in enumerate(names):
        encoded = name.encode()
        escaped = "".join(f"\\{byte:02x}" for byte in encoded)
        data.append(f'(data (i32.const {1024 + 256 * i}) "{escaped}")')
        body = body.replace(f"$name{i}", f"(i32.const {1024 + 256 * i}) (i32.const {len(encoded)})")
    return f'(module {FILES} {" ".join(data)} (func (export "_start") {body}))'


@pytest.fixture(name="job")
def job_fixture(tmp_path: Path):
    def make(module: str, out: str = "out", **limits: Any) -> ExecutionRequest:
        path = EXAMPLES / f"{module}.wat" if not module.startswith("(") else tmp_path / "module.wat"
        if module.startswith("("):
            path.write_text(module)
        return ExecutionRequest(
            module_path=path,
            module_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
            artifacts_dir=tmp_path / "in",
            output_dir=tmp_path / out,
            scratch_dir=Path(tempfile.mkdtemp(dir=tmp_path, prefix="scratch-")),
            limits=ExecutionLimits(**limits),
        )

    return make


def failed(result: ExecutionResult) -> str:
    assert not result.ok and result.outputs == {} and result.error is not None, result
    return result.error


def disk_bytes(folder: Path) -> int:
    return sum(
        os.lstat(Path(root, name)).st_blocks * 512
        for root, dirs, files in os.walk(folder)
        for name in dirs + files
    )


async def test_eight_memories_do_not_multiply_the_memory_limit(job: Any) -> None:
    eight = "(module " + "(memory 1024) " * 8 + '(func (export "_start")))'
    error = failed(await WasiExecutor().run(job(eight, memory_bytes=64 * MIB)))
    assert error == (
        "cannot instantiate module: resource limit exceeded: memory count too high at 8"
        " (a job gets at most 1 linear memory and 4 tables)"
    )
    two_small = '(module (memory 1) (memory 1) (func (export "_start")))'
    assert "memory count too high" in failed(
        await WasiExecutor().run(job(two_small, memory_bytes=64 * MIB))
    )


async def test_tables_count_against_the_memory_limit(job: Any) -> None:
    # 10M elements of 8 bytes: 80 MB of table under a 64 MiB limit.
    large = '(module (table 10000000 funcref) (func (export "_start")))'
    error = failed(await WasiExecutor().run(job(large, memory_bytes=64 * MIB)))
    assert (
        error
        == "cannot instantiate module: table minimum size of 10000000 elements exceeds table limits"
    )
    many = "(module " + "(table 1 funcref) " * 5 + '(func (export "_start")))'
    assert "table count too high at 5" in failed(
        await WasiExecutor().run(job(many, memory_bytes=64 * MIB))
    )
    # A table grown at run time is refused past the budget: table.grow answers -1, the guest traps.
    grower = """(module (table 1 funcref)
      (func (export "_start")
        (if (i32.eq (table.grow (ref.null func) (i32.const 10000000)) (i32.const -1))
          (then unreachable))))"""
    assert failed(await WasiExecutor().run(job(grower, memory_bytes=64 * MIB))).startswith(
        "trap: wasm `unreachable`"
    )
    # Memory and tables together stay within the limit: a full-size memory still fits beside the
    # tables.
    fits = '(module (memory 960) (table 1000 funcref) (func (export "_start")))'
    assert failed(await WasiExecutor().run(job(fits, memory_bytes=64 * MIB))).startswith(
        "workflow wrote non-JSON"
    )


async def test_node_maxima_cap_what_a_job_asks(job: Any) -> None:
    executor = WasiExecutor(maxima=JobMaxima(time_s=0.5, memory_bytes=MIB, fuel=10**6))
    # A job asking 1 TiB of memory gets the node's 1 MiB: 20 pages do not fit.
    huge = '(module (memory 20) (func (export "_start")))'
    result = await executor.run(job(huge, memory_bytes=1 << 40))
    assert (
        failed(result)
        == "cannot instantiate module: memory minimum size of 20 pages exceeds memory limits"
    )
    assert (
        "[p2pnode] memory limit of 1099511627776 bytes lowered to this node's maximum"
        " of 1048576 bytes" in result.logs
    )
    # 1e6 s and 1e30 fuel become the node's 0.5 s and 10**6.
    result = await executor.run(job("spin", time_s=1e6, fuel=10**30, memory_bytes=MIB))
    assert failed(result) == "out of fuel (limit 1000000)"
    assert result.logs.endswith(
        "[p2pnode] time limit of 1e+06 s lowered to this node's maximum of 0.5 s\n"
        "[p2pnode] fuel limit of 1000000000000000000000000000000 lowered to this node's maximum"
        " of 1000000\n"
    )
    timed = WasiExecutor(maxima=JobMaxima(time_s=0.5))
    result = await timed.run(job("spin", time_s=1e6, fuel=10**18))
    assert failed(result) == "timed out after 0.5 s"
    # The default maxima never cap a job with default limits.
    assert JobMaxima().cap(ExecutionLimits()) == (ExecutionLimits(), {})
    # A job within the maxima runs as asked, with nothing added to its logs.
    result = await executor.run(job("echo", time_s=0.5, fuel=10**6, memory_bytes=MIB))
    assert result.ok and "[p2pnode]" not in result.logs


async def test_output_cap_stops_a_writer_while_it_writes(job: Any, tmp_path: Path) -> None:
    cap = 4 * MIB
    executor = WasiExecutor(maxima=JobMaxima(output_bytes=cap))
    forever = files_module(
        "(call $fill (call $create $name0) (i32.const -1)) (call $done)", ["big.bin"]
    )
    result = await executor.run(
        job(forever, time_s=10, fuel=10**18)
    )  # bounded even if the guard failed
    assert failed(result) == f"outputs exceed this node's limit of {cap} bytes"
    written = disk_bytes(tmp_path / "out")
    assert cap < written <= cap + 64 * MIB, written
    print(f"overshoot {(written - cap) / MIB:.1f} MiB")
    # Just under the cap is fine; just over it fails on the final check even if the guard missed it.
    under = files_module("(call $fill (call $create $name0) (i32.const 64)) (call $done)", ["x"])
    assert (await executor.run(job(under, out="under"))).ok
    over = files_module("(call $fill (call $create $name0) (i32.const 65)) (call $done)", ["y"])
    assert (
        failed(await executor.run(job(over, out="over")))
        == f"outputs exceed this node's limit of {cap} bytes"
    )


async def test_sparse_output_counts_at_its_published_size(job: Any, tmp_path: Path) -> None:
    # 1 TiB of holes takes no disk but would be a 1 TiB blob.
    sparse = files_module(
        "(drop (call $set_size (call $create $name0) (i64.const 1099511627776))) (call $done)",
        ["holes"],
    )
    result = await WasiExecutor(maxima=JobMaxima(output_bytes=MIB)).run(job(sparse))
    assert failed(result) == f"outputs exceed this node's limit of {MIB} bytes"


async def test_too_many_output_files_fail_the_job(job: Any) -> None:
    names = [f"f{i}" for i in range(MAX_OUTPUTS + 1)]
    body = "".join(
        f"(drop (call $create (i32.const {1024 + 8 * i}) (i32.const {len(n)})))"
        for i, n in enumerate(names)
    )
    data = "".join(f'(data (i32.const {1024 + 8 * i}) "{n}")' for i, n in enumerate(names))
    module = f'(module {FILES} {data} (func (export "_start") {body} (call $done)))'
    assert failed(await WasiExecutor().run(job(module))) == f"more than {MAX_OUTPUTS} output files"


async def test_node_hands_its_maxima_to_the_executors(start_node, monkeypatch) -> None:
    monkeypatch.setenv("P2PNODE_MAX_JOB_TIME", "7.5")
    monkeypatch.setenv("P2PNODE_MAX_JOB_OUTPUT_MIB", "3")
    node = await start_node(max_job_memory_mib=64)
    expected = JobMaxima(time_s=7.5, memory_bytes=64 * MIB, output_bytes=3 * MIB)
    assert node.jobs.worker.executors["wasi"].maxima == expected
    assert node.flawless.maxima == expected


async def test_wall_time_governs_a_job_with_default_limits(job: Any) -> None:
    # Fuel is generous by default: a job asking nothing gets the node's most, which outlasts the
    # default time limit at the rate measured here (see DEFAULT_FUEL); spin stops on its time.
    assert ExecutionLimits().fuel == JobMaxima().fuel
    assert ExecutionLimits().fuel > 1.6e9 * ExecutionLimits().time_s
    result = await WasiExecutor().run(job("spin", time_s=0.5, fuel=ExecutionLimits().fuel))
    assert failed(result) == "timed out after 0.5 s"
