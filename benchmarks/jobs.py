"""Job throughput: one origin and three worker processes on loopback, tiny jobs on the embedded
runner.

    python benchmarks/jobs.py [--jobs 500] [--workers 3]

Submits the jobs through the origin's API as fast as it accepts them, waits for all to finish,
then prints jobs/s (first submit to last success) and p50/p99 latency from submit to succeeded,
both taken from the origin's own job records (one clock).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.nodeproc import NodeProcess  # noqa: E402

from benchmarks import script  # noqa: E402
from p2pnode.executors.wasm import load_module_bytes  # noqa: E402

ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo.wat"


def main(jobs: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pnode-jobs-") as tmp:
        work = Path(tmp)
        origin = NodeProcess(work / "origin", "--max-jobs", "0")
        started = [
            NodeProcess(work / f"worker{i}", "--join", origin.ticket, "--max-jobs", "4")
            for i in range(workers)
        ]
        try:
            with httpx.Client(base_url=origin.api, headers=origin.headers, timeout=120) as api:
                wasm = load_module_bytes(ECHO)
                module = api.put(
                    "/blobs", content=wasm, headers={"Content-Type": "application/octet-stream"}
                ).json()["blob"]["hash"]
                ids = [
                    api.post("/jobs", json={"module_blob": module, "input": {"n": n}}).json()["id"]
                    for n in range(jobs)
                ]
                records = [
                    api.post(f"/jobs/{job_id}/wait", params={"timeout": 120}).json()
                    for job_id in ids
                ]
        finally:
            for node in [origin, *started]:
                node.kill()
    succeeded = [r for r in records if r["state"] == "succeeded"]
    latencies = sorted(r["finished_at"] - r["created_at"] for r in succeeded)
    span = max(r["finished_at"] for r in succeeded) - min(r["created_at"] for r in records)
    q = statistics.quantiles(latencies, n=100)
    print(f"{jobs} echo jobs, 1 origin + {workers} workers (4 slots each), embedded WASI runner")
    print(f"  succeeded      {len(succeeded)}/{jobs}")
    print(f"  throughput     {len(succeeded) / span:.1f} jobs/s")
    print(f"  latency p50    {q[49] * 1e3:.0f} ms")
    print(f"  latency p99    {q[98] * 1e3:.0f} ms")


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    main(args.jobs, args.workers)
