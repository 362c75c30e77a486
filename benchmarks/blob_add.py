"""Blob add against the disk's own speed, in one run on the same filesystem.

    python benchmarks/blob_add.py [--mib 256] [--runs 3] [--baseline DIR] [--floor]

Prints, for a file of random bytes already in the page cache: `dd conv=fsync` copying it (the
disk's speed for the same bytes); `p2pnode blob add` (the CLI has the node read the file itself),
whole and without the CLI's fixed cost (its Python start-up and one API call, measured as the add
of a 1-byte file); the upload the CLI falls back to when the node cannot see the file (`PUT
/blobs`, streamed); the API's path add (`POST /blobs`, the node reads the file); and `blob add
--in-place` (hashing only, no copy). Each is the best of `--runs` rounds, the methods taking
turns within a round, with its ratio to dd (best against best, and the median of each round's
ratio) and the node's CPU seconds for it. `--baseline DIR`
(a checkout of the code before a change) runs a second node from DIR's sources beside this one
and measures its CLI add, path add and in-place add in the same rounds.

`--floor` measures instead what a path add is made of, each piece alone and in this process,
beside dd in the same rounds: the copy (sendfile, writeback started per chunk, fsync) without
hashing; the whole-content hash and the block hashes over the page-cached file (mapped, as
the add hashes its copy), each alone and both in two threads; and the store's path add without
the API (`BlobStore.add_path`, in a child process per tree: this one and `--baseline`). Best
wall time of `--runs`, and the CPU seconds of that run (all threads).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess, run_cli  # noqa: E402

from benchmarks import script  # noqa: E402
from p2pnode.api.client import ApiClient  # noqa: E402
from p2pnode.api.schemas import BlobAdded  # noqa: E402
from p2pnode.blobs.blocks import BLOCK_SIZE, READ_CHUNK  # noqa: E402
from p2pnode.blobs.diskio import start_writeback  # noqa: E402

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


class Method:
    """One way to add the file: its best wall time and the node's CPU for that run."""

    def __init__(self, name: str, node: NodeProcess | None, once: Callable[[], str | None]) -> None:
        self.name, self.node, self.once = name, node, once
        self.runs: list[tuple[float, float]] = []

    def run(self, forget: Callable[[NodeProcess, str], None]) -> None:
        cpu = cpu_s(self.node.proc.pid) if self.node else 0.0
        started = time.perf_counter()
        added = self.once()
        wall = time.perf_counter() - started
        if self.node:
            self.runs.append((wall, cpu_s(self.node.proc.pid) - cpu))
            if added:
                forget(self.node, added)
        else:
            self.runs.append((wall, 0.0))

    @property
    def best(self) -> tuple[float, float]:
        return min(self.runs)


def main(mib: int, runs: int, baseline: Path | None) -> None:
    size = mib << 20
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = script.random_file(work / "random.bin", mib)
        (work / "one.bin").write_bytes(b"1")
        node = NodeProcess(work / "node")
        old = None
        if baseline is not None:
            with contextlib.chdir(baseline):  # `python -m p2pnode` imports from there first
                old = NodeProcess(work / "old", env={"PYTHONPATH": str(baseline.resolve())})
        try:
            with httpx.Client(timeout=None) as http:

                def forget(on: NodeProcess, blob_hash: str) -> None:
                    url = f"{on.api}/blobs/{blob_hash}"
                    http.delete(url, params={"force": True}, headers=on.headers)

                def dd() -> None:
                    subprocess.run(
                        ["dd", f"if={source}", f"of={work / 'dd.out'}", "bs=8M", "conv=fsync"],
                        check=True,
                        capture_output=True,
                    )
                    return None

                def cli_add(on: NodeProcess, path: Path) -> Callable[[], str]:
                    sources = baseline if on is old else None

                    def once() -> str:
                        argv = ["--api", on.api, "--data", str(on.data_dir), "blob", "add"]
                        with contextlib.chdir(sources) if sources else contextlib.nullcontext():
                            out = run_cli(*argv, str(path)).stdout
                        return out.split("hash:", 1)[1].split()[0]

                    return once

                def upload() -> str:
                    client = ApiClient(node.api, token_file=node.data_dir / "api-token")
                    with open(source, "rb") as f:
                        chunks = iter(lambda: f.read(1 << 20), b"")
                        added = client.upload("/blobs", chunks, size, BlobAdded, timeout=None)
                    return added.blob.hash

                def path_add(on: NodeProcess, in_place: bool = False) -> Callable[[], str]:
                    def once() -> str:
                        body = {"path": str(source), **({"in_place": True} if in_place else {})}
                        added = http.post(f"{on.api}/blobs", json=body, headers=on.headers)
                        return str(added.json()["blob"]["hash"])

                    return once

                methods = [
                    Method("dd conv=fsync", None, dd),
                    Method("blob add (CLI)", node, cli_add(node, source)),
                    Method("CLI fixed cost", node, cli_add(node, work / "one.bin")),
                    Method("upload (PUT /blobs)", node, upload),
                    Method("path add (API)", node, path_add(node)),
                    Method("blob add --in-place", node, path_add(node, in_place=True)),
                ]
                if old is not None:
                    methods += [
                        Method("before: blob add (CLI)", old, cli_add(old, source)),
                        Method("before: path add (API)", old, path_add(old)),
                        Method("before: --in-place", old, path_add(old, in_place=True)),
                    ]
                for _ in range(runs):
                    for method in methods:
                        method.run(forget)
        finally:
            node.kill()
            if old is not None:
                old.kill()
    rate = lambda seconds: size / seconds / 1e6  # noqa: E731
    by_name = {m.name: m for m in methods}
    dd = by_name.pop("dd conv=fsync")
    dd_s = dd.best[0]
    fixed_s = by_name.pop("CLI fixed cost").best[0]

    def round_ratio(method: Method) -> float:
        """Median over the rounds of dd's time / the method's, each pair measured back to back:
        steadier than the best-of ratio when the machine's load moves between rounds."""
        ratios = sorted(d / m for (d, _), (m, _) in zip(dd.runs, method.runs, strict=True))
        return ratios[len(ratios) // 2]

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"blob add of {mib} MiB (page-cached source, best of {runs}), same filesystem")
    print(f"  load average {load} on {os.cpu_count()} cores")
    print(f"  {'dd conv=fsync':<30}{rate(dd_s):8.1f} MB/s")
    for name, method in by_name.items():
        seconds, cpu = method.best
        print(
            f"  {name:<30}{rate(seconds):8.1f} MB/s   {dd_s / seconds:5.2f}x dd   "
            f"(per round {round_ratio(method):4.2f}x)   node CPU {cpu:.2f} s"
        )
        if name == "blob add (CLI)":
            bare = max(seconds - fixed_s, 1e-9)
            print(
                f"  {'  without CLI start-up':<30}{rate(bare):8.1f} MB/s   {dd_s / bare:5.2f}x dd"
                f"   (the CLI's fixed cost: {fixed_s:.2f} s, a 1-byte add)"
            )


def dd_fsync(source: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `dd conv=fsync` copying `source` to `out`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["dd", f"if={source}", f"of={out}", "bs=8M", "conv=fsync"], stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out.unlink()
    return wall, usage.ru_utime + usage.ru_stime


ADD_IN_A_CHILD = """
import resource, sys, tempfile, time, trio
from p2pnode.blobs.store import BlobStore
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
async def add():
    with tempfile.TemporaryDirectory(dir=sys.argv[2]) as root, await BlobStore.open(root) as store:
        cpu0, started = cpu(), time.perf_counter()
        await store.add_path(sys.argv[1])
        print(time.perf_counter() - started, cpu() - cpu0)
trio.run(add)
"""
"""The store's path add of argv[1] into a fresh store under argv[2]: wall and CPU seconds."""


def floor(mib: int, runs: int, baseline: Path | None) -> None:
    size = mib << 20

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as tmp:
        work = Path(tmp)
        source = script.random_file(work / "random.bin", mib)

        def mapped() -> mmap.mmap:
            with open(source, "rb") as f:
                return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)

        def copy() -> None:
            with open(source, "rb") as src, open(work / "copy", "wb") as dst:
                offset = 0
                while offset < size:
                    sent = os.sendfile(dst.fileno(), src.fileno(), offset, READ_CHUNK)
                    start_writeback(dst.fileno(), offset, sent)
                    offset += sent
                os.fsync(dst.fileno())
            (work / "copy").unlink()

        def whole(threads: int) -> Callable[[], None]:
            def run() -> None:
                with mapped() as m, memoryview(m) as view:
                    hasher = blake3.blake3(max_threads=threads)
                    for offset in range(0, size, READ_CHUNK):
                        hasher.update(view[offset : offset + READ_CHUNK])

            return run

        def blocks() -> None:
            with mapped() as m, memoryview(m) as view:
                for offset in range(0, size, BLOCK_SIZE):
                    blake3.blake3(view[offset : offset + BLOCK_SIZE]).digest()

        def both() -> None:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda step: step(), [whole(blake3.blake3.AUTO), blocks]))

        def in_process(step: Callable[[], None]) -> Callable[[], tuple[float, float]]:
            def run() -> tuple[float, float]:
                cpu0, started = cpu(), time.perf_counter()
                step()
                return time.perf_counter() - started, cpu() - cpu0

            return run

        def child(tree: Path) -> Callable[[], tuple[float, float]]:
            def run() -> tuple[float, float]:
                out = subprocess.run(
                    [sys.executable, "-c", ADD_IN_A_CHILD, str(source), str(work)],
                    cwd=tree,  # `python -c` imports from its folder first
                    env={**os.environ, "PYTHONPATH": str(tree)},
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                return float(out[0]), float(out[1])

            return run

        pieces: dict[str, Callable[[], tuple[float, float]]] = {
            "dd conv=fsync": lambda: dd_fsync(source, work / "dd.out"),
            "copy + writeback + fsync": in_process(copy),
            "whole hash, 1 thread": in_process(whole(1)),
            "whole hash, AUTO threads": in_process(whole(blake3.blake3.AUTO)),
            "block hashes, 1 thread": in_process(blocks),
            "both hashes, 2 threads": in_process(both),
            "store path add": child(Path(__file__).resolve().parent.parent),
        }
        if baseline is not None:
            pieces["before: store path add"] = child(baseline.resolve())
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in pieces}
        for _ in range(runs):
            for name, piece in pieces.items():
                results[name].append(piece())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"what a path add of {mib} MiB is made of (page-cached source, best of {runs})")
    print(f"  load average {load} on {os.cpu_count()} cores")
    dd_s = min(results["dd conv=fsync"])[0]
    for name, runs_of in results.items():
        seconds, cpu_s_ = min(runs_of)
        print(
            f"  {name:<28}{size / seconds / 1e6:8.1f} MB/s  {seconds * 1e3:6.0f} ms  "
            f"{dd_s / seconds:5.2f}x dd   CPU {cpu_s_ * 1e3:4.0f} ms"
        )


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before a change")
    parser.add_argument("--floor", action="store_true", help="the pieces of a path add, alone")
    args = parser.parse_args()
    (floor if args.floor else main)(args.mib, args.runs, args.baseline)
