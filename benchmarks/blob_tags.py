"""What a blob's tags cost: describing a blob held by many jobs, and tagging one (a job submit).

    python benchmarks/blob_tags.py [--tags 5000] [--calls 300] [--baseline DIR]

In a fresh store on the temp folder's disk: CPU per `BlobStore.info` of a blob with 10 tags and
of one with `--tags` tags (and their ratio: 1 means the cost does not grow with tags), and wall
time and CPU per `BlobStore.set_tag` (what every job submit pays for its module's tag, fsync
included). `--baseline DIR` measures the p2pnode sources in DIR (e.g. a `git worktree` of main)
first, in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import script  # noqa: E402

MEASURE = """
import json, sys, time, trio
from p2pnode.blobs.store import BlobStore

async def main(root, tags, calls):
    store = await BlobStore.open(root)
    few = (await store.add_bytes(b"few")).hash
    many = (await store.add_bytes(b"many")).hash
    for n in range(tags):
        await store.set_tag(f"job/{n:06}/module", many)
    for n in range(10):
        await store.set_tag(f"job/{n:06}/input", few)
    out = {}
    for name, h in (("info_10", few), ("info_many", many)):
        began = time.process_time()
        for _ in range(calls):
            await store.info(h)
        out[name] = (time.process_time() - began) / calls
    began, cpu = time.perf_counter(), time.process_time()
    for n in range(calls):
        await store.set_tag(f"job/{n:06}/artifact/x", few)
    out["tag_wall"] = (time.perf_counter() - began) / calls
    out["tag_cpu"] = (time.process_time() - cpu) / calls
    store.close()
    print(json.dumps(out))

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""


def measure(sources: Path, tags: int, calls: int) -> dict[str, float]:
    """Run the measurement in a fresh interpreter importing p2pnode from `sources`."""
    with tempfile.TemporaryDirectory(prefix="p2pnode-tags-") as tmp:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(Path(tmp) / "store"), str(tags), str(calls)],
            cwd=sources,
            env={**os.environ, "PYTHONPATH": str(sources)},
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def show(label: str, r: dict[str, float], tags: int) -> None:
    ratio = r["info_many"] / r["info_10"]
    print(f"{label}:")
    print(
        f"  info CPU: {r['info_10'] * 1e3:.3f} ms at 10 tags, {r['info_many'] * 1e3:.3f} ms at"
        f" {tags} ({ratio:.1f}x)"
    )
    print(f"  set_tag: {r['tag_wall'] * 1e3:.3f} ms wall, {r['tag_cpu'] * 1e3:.3f} ms CPU")


def main(tags: int, calls: int, baseline: Path | None) -> None:
    if baseline is not None:
        show(f"baseline ({baseline})", measure(baseline.resolve(), tags, calls), tags)
    here = Path(__file__).resolve().parent.parent
    show(f"this tree ({os.path.relpath(here)})", measure(here, tags, calls), tags)


if __name__ == "__main__":
    parser = script.parser(__doc__)
    parser.add_argument("--tags", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--baseline", type=Path, help="p2pnode sources to measure first")
    args = parser.parse_args()
    main(args.tags, args.calls, args.baseline)
