"""Job throughput and latency: one origin and three worker processes on loopback, tiny jobs on the
embedded runner.

    python benchmarks/jobs.py [--jobs 500] [--workers 3] [--rate 5] [--rate-jobs 50]
                              [--baseline DIR] [--profile DIR]

After a warm-up (every worker has run a job, so its compile cache holds the module), three runs:
a burst (the jobs submitted through the origin's API as fast as it accepts them, by 8 concurrent
clients, one request per job, each job waited for by its own long poll: jobs/s from first submit
to last success, and p50/p99 from submit to succeeded); the same burst as a sweep is submitted
(`POST /jobs/batch`, 500 jobs a request) and waited for (`POST /jobs/wait`, one long poll), when
the tree has them; and a low rate (jobs submitted `--rate` per second: p50/p99 from submit to
succeeded, and where that time goes, from the job's history: pending -> claimed -> running ->
succeeded). Every figure comes from the origin's own job records (one clock); CPU per job is each
process's, by thread. `--baseline DIR` runs the same measurement first on the p2pnode sources in
DIR (e.g. a `git worktree` of main) and prints both. `--profile DIR` profiles each burst in every
node (cProfile of the main thread, see `profiled.py`) and prints where the time went, by area.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402
from benchmarks.profiled import thread_cpu  # noqa: E402
from p2pnode.executors.wasm import load_module_bytes  # noqa: E402

PROFILED = Path(__file__).resolve().parent / "profiled.py"
ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo.wat"
PHASES = ("pending", "claimed", "running", "succeeded")
"""The states a job passes through, in order: the low-rate breakdown's steps."""
SUBMITTERS = 8
"""Concurrent API calls submitting the burst: one at a time, the client would be the limit."""


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99, in milliseconds."""
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


def submit(api: httpx.Client, module: str, n: int) -> str:
    reply = api.post("/jobs", json={"module_blob": module, "input": {"n": n}})
    reply.raise_for_status()
    return str(reply.json()["id"])


def finished(api: httpx.Client, ids: list[str]) -> list[dict]:
    records = [api.post(f"/jobs/{i}/wait", params={"timeout": 120}).json() for i in ids]
    if failed := [r for r in records if r["state"] != "succeeded"]:
        raise SystemExit(f"error: {len(failed)} jobs did not succeed, e.g. {failed[0]}")
    return records


def phase_times(record: dict) -> dict[str, float]:
    """When the job first reached each state, by the origin's clock."""
    times: dict[str, float] = {}
    for event in record["history"]:
        times.setdefault(event["state"], event["at"])
    return times


def history(record: dict) -> str:
    """A job's history as milliseconds after its creation: which step took the time."""
    return ", ".join(
        f"+{(e['at'] - record['created_at']) * 1e3:.0f} {e['state']}"
        + (f" ({e['note']})" if e["note"] else "")
        for e in record["history"]
    )


BATCH = 500
"""Jobs per `POST /jobs/batch` request in the batched burst."""


def submit_batch(api: httpx.Client, module: str, numbers: range) -> list[str]:
    body = [{"module_blob": module, "input": {"n": n}} for n in numbers]
    reply = api.post("/jobs/batch", json=body)
    reply.raise_for_status()
    return [str(i) for i in reply.json()["ids"]]


def drain(pipe: IO[str]) -> None:
    """Read a node's output until it ends (its log lines, one per job, fill a pipe's 64 KiB
    after a thousand jobs)."""
    with contextlib.suppress(ValueError):  # closed by `NodeProcess.kill`
        while pipe.read(1 << 16):
            pass


class Nodes:
    """The origin and the workers, their CPU (whole process, and by thread) and profiles."""

    def __init__(self, work: Path, workers: int, env: dict[str, str] | None, profile: Path | None):
        self.profile = profile
        self.origin = self._start("origin", work, profile, "--max-jobs", "0", env=env)
        self.workers = [
            self._start(
                f"worker{i}",
                work,
                profile,
                "--join",
                self.origin.ticket,
                "--max-jobs",
                "4",
                env=env,
            )
            for i in range(workers)
        ]
        self.all = [self.origin, *self.workers]

    @staticmethod
    def _start(
        name: str, work: Path, profile: Path | None, *args: str, env: dict[str, str] | None
    ) -> NodeProcess:
        prefix: tuple[str, ...] = ()
        if profile is not None:
            prefix = (sys.executable, str(PROFILED), str(profile / f"{name}.prof"))
        node = NodeProcess(work / name, *args, env=env, prefix=prefix)
        for pipe in (node.proc.stdout, node.proc.stderr):  # a full pipe would stop the node
            threading.Thread(target=drain, args=(pipe,), daemon=True).start()
        return node

    def cpu(self) -> list[dict[str, float]]:
        return [thread_cpu(node.proc.pid) for node in self.all]

    def kill(self) -> None:
        for node in self.all:
            node.kill()

    def profiling(self, on: bool, label: str) -> None:
        """Start (SIGUSR1) or stop and write (SIGUSR2) every node's profile."""
        if self.profile is None:
            return
        for node in self.all:
            node.proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
        if not on:  # the profiles are written by each node's main thread: wait for all
            files = [
                self.profile / f"{n}.prof"
                for n in ("origin", *(f"worker{i}" for i in range(len(self.workers))))
            ]
            deadline = time.monotonic() + 30
            while not all(f.exists() for f in files) and time.monotonic() < deadline:
                time.sleep(0.1)
            for f in files:
                f.rename(f.with_name(f"{label}-{f.name}"))


def finished_together(api: httpx.Client, ids: list[str]) -> list[dict]:
    """`finished`, as a sweep's submitter waits: one long poll for all (`POST /jobs/wait`)."""
    while True:
        records = api.post("/jobs/wait", json={"ids": ids, "timeout": 120}).json()
        if all(r["state"] in ("succeeded", "failed", "cancelled") for r in records):
            break
    if failed := [r for r in records if r["state"] != "succeeded"]:
        raise SystemExit(f"error: {len(failed)} jobs did not succeed, e.g. {failed[0]}")
    return list(records)


def burst(
    api: httpx.Client, nodes: Nodes, jobs: int, submit_all, label: str, wait=finished
) -> None:
    """Submit `jobs` at once with `submit_all`, wait for all, print throughput and CPU per job."""
    before = nodes.cpu()
    nodes.profiling(True, label)
    ids = submit_all()
    records = wait(api, ids)
    nodes.profiling(False, label)
    used = [
        {kind: after.get(kind, 0.0) - was.get(kind, 0.0) for kind in after}
        for after, was in zip(nodes.cpu(), before, strict=True)
    ]
    p50, p99 = quantiles([r["finished_at"] - r["created_at"] for r in records])
    span = max(r["finished_at"] for r in records) - min(r["created_at"] for r in records)
    submitting = max(r["created_at"] for r in records) - min(r["created_at"] for r in records)
    accepted = f"{jobs / submitting:.0f}/s" if submitting > 0 else "at once"
    slowest = max(records, key=lambda r: r["finished_at"] - r["created_at"])
    took = (slowest["finished_at"] - slowest["created_at"]) * 1e3
    print(
        f"  burst of {jobs}, {label}: {jobs / span:.1f} jobs/s (submitted {accepted}), "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {took:.0f} ms"
    )
    print(f"    slowest job's history: {history(slowest)}")
    origin, workers = used[0], used[1:]

    def per_job(cpu: dict[str, float]) -> str:
        return ", ".join(
            f"{k} {v / jobs * 1e3:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v
        )

    total_workers = sum(sum(w.values()) for w in workers)
    print(
        f"    CPU per job (load-independent): origin {sum(origin.values()) / jobs * 1e3:.1f} ms, "
        f"workers {total_workers / jobs * 1e3:.1f} ms"
    )
    merged: dict[str, float] = {}
    for w in workers:
        for k, v in w.items():
            merged[k] = merged.get(k, 0.0) + v
    print(f"      by thread, ms per job: origin {per_job(origin)}; workers {per_job(merged)}")


def measure(
    jobs: int, workers: int, rate: float, rate_jobs: int, sources: Path | None, profile: Path | None
) -> None:
    env = None if sources is None else {"PYTHONPATH": str(sources)}
    with tempfile.TemporaryDirectory(prefix="p2pnode-jobs-") as tmp:
        nodes = Nodes(Path(tmp), workers, env, profile)
        try:
            origin = nodes.origin
            with httpx.Client(base_url=origin.api, headers=origin.headers, timeout=120) as api:
                wasm = load_module_bytes(ECHO)
                module = api.put(
                    "/blobs", content=wasm, headers={"Content-Type": "application/octet-stream"}
                ).json()["blob"]["hash"]
                deadline = time.monotonic() + 60
                while len(api.get("/workers").json()) < workers:  # every worker has joined
                    if time.monotonic() > deadline:
                        raise SystemExit("error: the workers did not join within 60 s")
                    time.sleep(0.1)
                finished(api, [submit(api, module, n) for n in range(workers * 8)])  # warm-up

                def one_each() -> list[str]:
                    with ThreadPoolExecutor(SUBMITTERS) as pool:  # as fast as the origin accepts
                        return list(pool.map(lambda n: submit(api, module, n), range(jobs)))

                burst(api, nodes, jobs, one_each, f"one request per job, {SUBMITTERS} clients")
                if api.post("/jobs/batch", json=[]).status_code in (404, 405):
                    print("  batched burst: no POST /jobs/batch in this tree")
                else:

                    def batched() -> list[str]:
                        return [
                            i
                            for first in range(0, jobs, BATCH)
                            for i in submit_batch(
                                api, module, range(first, min(jobs, first + BATCH))
                            )
                        ]

                    burst(
                        api,
                        nodes,
                        jobs,
                        batched,
                        f"batches of {BATCH}, one wait for all",
                        finished_together,
                    )

                ids, start = [], time.monotonic()
                for n in range(rate_jobs):
                    time.sleep(max(0.0, start + n / rate - time.monotonic()))  # the pace
                    ids.append(submit(api, module, n))
                slow = finished(api, ids)
        finally:
            nodes.kill()
    slow_p50, slow_p99 = quantiles([r["finished_at"] - r["created_at"] for r in slow])
    print(f"  {rate_jobs} at {rate:g}/s: p50 {slow_p50:.1f} ms, p99 {slow_p99:.1f} ms")
    times = [phase_times(r) for r in slow]
    steps = ", ".join(
        f"{a} -> {b} {statistics.median(t[b] - t[a] for t in times) * 1e3:.1f}"
        for a, b in zip(PHASES, PHASES[1:], strict=False)
    )
    print(f"    p50 ms of each step: {steps}")
    if profile is not None:
        for prof in sorted(profile.glob("*.prof")):
            print(f"  profile {prof.name} (main thread, tottime):")
            print_profile(prof, jobs)


CATEGORIES = (
    (
        "HTTP (hypercorn, h11, starlette, fastapi)",
        ("hypercorn", "/h11/", "starlette", "fastapi", "anyio"),
    ),
    ("pydantic", ("pydantic",)),
    ("sqlite", ("sqlite3",)),
    ("gossip", ("p2pnode/gossip",)),
    ("bindings + bridge", ("iroh_ffi", "/iroh/", "p2pnode/net/bridge")),
    ("net (framing, dialer, router)", ("p2pnode/net",)),
    ("blobs", ("p2pnode/blobs",)),
    ("jobs", ("p2pnode/jobs",)),
    ("executor (wasm)", ("p2pnode/executors", "wasmtime")),
    ("trio", ("/trio/",)),
    ("crypto", ("cryptography", "blake3", "hmac", "hashlib", "secrets")),
    ("json", ("json",)),
)


def print_profile(path: Path, jobs: int) -> None:
    """Where a node's main thread spent its time, per job: by area (tottime of the functions
    in each area's files), then the top functions."""
    stats = pstats.Stats(str(path))
    areas: dict[str, float] = {}
    total = 0.0
    rows = []
    for (filename, line, name), (_, calls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        where = f"{filename}:{name}"
        area = next((a for a, keys in CATEGORIES if any(k in where for k in keys)), "other")
        areas[area] = areas.get(area, 0.0) + tottime
        rows.append((tottime, calls, where, line))
    print(
        f"    total {total / jobs * 1e6:.0f} us/job; "
        + ", ".join(
            f"{a} {t / jobs * 1e6:.0f}" for a, t in sorted(areas.items(), key=lambda kv: -kv[1])
        )
    )
    for tottime, calls, where, line in sorted(rows, reverse=True)[:12]:
        short = where.split("site-packages/")[-1].split("/p2pnode/", 1)[-1]
        print(f"      {tottime / jobs * 1e6:7.0f} us/job {calls / jobs:6.1f} calls  {short}:{line}")


def main(
    jobs: int,
    workers: int,
    rate: float,
    rate_jobs: int,
    baseline: Path | None,
    profile: Path | None,
) -> None:
    print(f"echo jobs, 1 origin + {workers} workers (4 slots each), embedded WASI runner")
    if baseline is not None:
        print(f"baseline ({baseline}):")
        here = Path.cwd()
        os.chdir(baseline)  # `python -m p2pnode` imports from its working folder first
        try:
            measure(jobs, workers, rate, rate_jobs, baseline.resolve(), None)
        finally:
            os.chdir(here)
        print(f"this tree ({os.path.relpath(Path(__file__).resolve().parent.parent)}):")
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    measure(jobs, workers, rate, rate_jobs, None, profile)


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="jobs per second, low-rate run")
    parser.add_argument("--rate-jobs", type=int, default=50)
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to measure first")
    parser.add_argument(
        "--profile", type=Path, help="profile each burst in every node (cProfile) into this folder"
    )
    args = parser.parse_args()
    main(args.jobs, args.workers, args.rate, args.rate_jobs, args.baseline, args.profile)
