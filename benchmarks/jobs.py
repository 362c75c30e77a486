"""Job throughput and latency: one origin and three worker processes on loopback, tiny jobs on the
embedded runner.

    python benchmarks/jobs.py [--jobs 500] [--workers 3] [--rate 5] [--rate-jobs 50]
                              [--baseline DIR]

After a warm-up (every worker has run a job, so its compile cache holds the module), two runs:
a burst (the jobs submitted through the origin's API as fast as it accepts them, by 8 concurrent
clients: jobs/s from first submit to last success, and p50/p99 from submit to succeeded) and a
low rate (jobs submitted `--rate` per second: p50/p99 from submit to succeeded, and where that
time goes, from the job's history: pending -> claimed -> running -> succeeded). Every figure
comes from the origin's own job records (one clock). `--baseline DIR` runs the same measurement
first on the p2pnode sources in DIR (e.g. a `git worktree` of main) and prints both.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402
from p2pnode.executors.wasm import load_module_bytes  # noqa: E402

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


def cpu_seconds(node: NodeProcess) -> float:
    """User + system CPU the node's process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(jobs: int, workers: int, rate: float, rate_jobs: int, sources: Path | None) -> None:
    env = None if sources is None else {"PYTHONPATH": str(sources)}
    with tempfile.TemporaryDirectory(prefix="p2pnode-jobs-") as tmp:
        work = Path(tmp)
        origin = NodeProcess(work / "origin", "--max-jobs", "0", env=env)
        started = [
            NodeProcess(work / f"worker{i}", "--join", origin.ticket, "--max-jobs", "4", env=env)
            for i in range(workers)
        ]
        try:
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

                cpu = [cpu_seconds(node) for node in [origin, *started]]
                with ThreadPoolExecutor(SUBMITTERS) as pool:  # as fast as the origin accepts
                    ids = list(pool.map(lambda n: submit(api, module, n), range(jobs)))
                burst = finished(api, ids)
                cpu = [
                    cpu_seconds(node) - c for node, c in zip([origin, *started], cpu, strict=True)
                ]

                ids, start = [], time.monotonic()
                for n in range(rate_jobs):
                    time.sleep(max(0.0, start + n / rate - time.monotonic()))  # the pace
                    ids.append(submit(api, module, n))
                slow = finished(api, ids)
        finally:
            for node in [origin, *started]:
                node.kill()
    burst_p50, burst_p99 = quantiles([r["finished_at"] - r["created_at"] for r in burst])
    span = max(r["finished_at"] for r in burst) - min(r["created_at"] for r in burst)
    submitting = max(r["created_at"] for r in burst) - min(r["created_at"] for r in burst)
    rate_s = f"{jobs / span:.1f} jobs/s (submitted at {jobs / submitting:.0f}/s)"
    slowest = max(burst, key=lambda r: r["finished_at"] - r["created_at"])
    took = (slowest["finished_at"] - slowest["created_at"]) * 1e3
    print(f"  burst of {jobs}: {rate_s}, p50 {burst_p50:.0f} ms, p99 {burst_p99:.0f} ms", end="")
    print(f", max {took:.0f} ms")
    print(f"    slowest job's history: {history(slowest)}")
    per_job = f"origin {cpu[0] / jobs * 1e3:.1f} ms, workers {sum(cpu[1:]) / jobs * 1e3:.1f} ms"
    print(f"    CPU per job (load-independent): {per_job}")
    slow_p50, slow_p99 = quantiles([r["finished_at"] - r["created_at"] for r in slow])
    print(f"  {rate_jobs} at {rate:g}/s: p50 {slow_p50:.1f} ms, p99 {slow_p99:.1f} ms")
    times = [phase_times(r) for r in slow]
    steps = ", ".join(
        f"{a} -> {b} {statistics.median(t[b] - t[a] for t in times) * 1e3:.1f}"
        for a, b in zip(PHASES, PHASES[1:], strict=False)
    )
    print(f"    p50 ms of each step: {steps}")


def main(jobs: int, workers: int, rate: float, rate_jobs: int, baseline: Path | None) -> None:
    print(f"echo jobs, 1 origin + {workers} workers (4 slots each), embedded WASI runner")
    if baseline is not None:
        print(f"baseline ({baseline}):")
        here = Path.cwd()
        os.chdir(baseline)  # `python -m p2pnode` imports from its working folder first
        try:
            measure(jobs, workers, rate, rate_jobs, baseline.resolve())
        finally:
            os.chdir(here)
        print(f"this tree ({os.path.relpath(Path(__file__).resolve().parent.parent)}):")
    measure(jobs, workers, rate, rate_jobs, None)


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=5.0, help="jobs per second, low-rate run")
    parser.add_argument("--rate-jobs", type=int, default=50)
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to measure first")
    args = parser.parse_args()
    main(args.jobs, args.workers, args.rate, args.rate_jobs, args.baseline)
