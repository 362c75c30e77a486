"""Compile cache: a large module's first run, a repeated run, and the first run after a restart.

    python benchmarks/compile_cache.py [--mib 30]

Generates a WebAssembly module of about --mib MiB (thousands of functions of straight-line
arithmetic, as big generated code is), then runs it as a command job on the embedded runner three
times: with an empty cache (it compiles), again (a cache hit), and on a new runner over the same
cache folder, which is what a restarted worker is (nothing in memory, the compiled file on disk).
Prints the three side by side (wall time, and CPU time of this process and the compiler process
together, which a loaded machine does not inflate) with what each run's history says, and the
cache entry's size.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import script  # noqa: E402
from p2pnode.executors.base import ExecutionRequest, Invocation  # noqa: E402
from p2pnode.executors.wasm import WasiExecutor  # noqa: E402

_FUNCTION_BYTES = 1500
_WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)


def leb(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    """Signed LEB128."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def section(code: int, *items: bytes) -> bytes:
    body = leb(len(items)) + b"".join(items)
    return bytes([code]) + leb(len(body)) + body


def big_module(size: int) -> bytes:
    """A valid module of about ``size`` bytes: ``_start`` calls the first of many functions
    ``(i32) -> i32``, each a long chain of add, mul and xor with constants."""
    count = max(size // _FUNCTION_BYTES, 1)
    bodies = []
    for index in range(count):
        ops = bytearray(b"\x00\x20\x00")  # no locals; local.get 0
        step = 0
        while len(ops) < _FUNCTION_BYTES:
            constant = sleb((index * 7919 + step * 104729) % 100_000)
            ops += b"\x41" + constant + bytes([(0x6A, 0x6C, 0x73)[step % 3]])
            step += 1
        ops += b"\x0b"
        bodies.append(leb(len(ops)) + ops)
    start = b"\x00\x41\x07\x10\x01\x1a\x0b"  # i32.const 7; call 1; drop
    return b"".join(
        [
            b"\0asm\x01\0\0\0",
            section(1, b"\x60\x00\x00", b"\x60\x01\x7f\x01\x7f"),
            section(3, *([b"\x00"] + [b"\x01"] * count)),
            section(7, leb(6) + b"_start" + b"\x00\x00"),
            section(10, leb(len(start)) + start, *bodies),
        ]
    )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the compiler)."""
    own, children = (resource.getrusage(who) for who in _WHO)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def timed_run(executor: WasiExecutor, module: Path, work: Path) -> tuple[float, float, str]:
    req = ExecutionRequest(
        module_path=module,
        module_hash=hashlib.sha256(module.read_bytes()).hexdigest(),
        artifacts_dir=work / "in",
        output_dir=work / "out",
        scratch_dir=work / "scratch",
        command=Invocation(argv=["big.wasm"]),
    )
    started, cpu = time.perf_counter(), cpu_seconds()
    result = await executor.run(req)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if not result.ok:
        raise SystemExit(f"error: the module failed: {result.error}")
    return elapsed, cpu, result.compile_note


async def main() -> None:
    args = script.parser(__doc__)
    args.add_argument("--mib", type=float, default=30.0, help="module size in MiB")
    mib = args.parse_args().mib
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        root = Path(tmp)
        module = root / "big.wasm"
        module.write_bytes(big_module(int(mib * 1024 * 1024)))
        print(f"module: {module.stat().st_size / 1e6:.1f} MB, generated", flush=True)
        cache = root / "compiled"
        runner = WasiExecutor(cache_dir=cache)
        rows = [("first run", *await timed_run(runner, module, root / "1"))]
        rows.append(("repeated run", *await timed_run(runner, module, root / "2")))
        restarted = WasiExecutor(cache_dir=cache)
        rows.append(("after a restart", *await timed_run(restarted, module, root / "3")))
        [entry] = cache.glob("*.cwasm")
        print(f"compiled entry on disk: {entry.stat().st_size / 1e6:.1f} MB")
        peaks = (resource.getrusage(who).ru_maxrss / 1024 for who in _WHO)
        print("peak RSS: runner {:.0f} MiB, compiler process {:.0f} MiB".format(*peaks))
        print(f"{'':16} {'wall s':>8} {'cpu s':>8}  history")
        for name, seconds, cpu, note in rows:
            print(f"{name:16} {seconds:8.2f} {cpu:8.2f}  {note}")


if __name__ == "__main__":
    trio.run(main)
