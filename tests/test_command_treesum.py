"""Scenario (#11.6): examples/treesum, a real C program compiled to WASI, run unmodified as a
command job on another node's worker, from the CLI: argv, env, stdin, a mounted nested tree, /tmp,
an output file under /out, stdout and stderr via `job get`, and a bad flag's non-zero exit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

TREESUM = Path(__file__).resolve().parent.parent / "examples" / "treesum"
BUILD = ["clang", "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-s"]
"""The build command of examples/README.md, without its output and source."""
WASI_LIBC = Path("/usr/include/wasm32-wasi")

TREE = {
    "a/one.txt": b"The cat sat on the mat.\n",
    "a/b/two.txt": b"the end, THE END\n",
    "a/b/c/three.txt": b"cat 42 cat\n",
    "z.txt": b"",
}
STDIN = b"hello the cat\n"


def listing(label: str) -> str:
    """What treesum prints for TREE mounted at /in/data, then stdin."""
    streams = [(f"/in/data/{name}", TREE[name]) for name in sorted(TREE)] + [("-", STDIN)]
    words = [w.lower() for _, data in streams for w in re.findall(rb"[A-Za-z0-9]+", data)]
    lines = [f"# {label}"] + [
        f"{zlib.crc32(data):08x} {len(data):10d} {len(re.findall(rb'[A-Za-z0-9]+', data)):8d}  "
        f"{name}"
        for name, data in streams
    ]
    total = sum(len(data) for _, data in streams)
    lines.append(
        f"{len(streams)} files, {total} bytes, {len(words)} words ({len(set(words))} distinct)"
    )
    return "\n".join(lines) + "\n"


def top_words(count: int) -> str:
    words = Counter(
        w.lower() for data in [*TREE.values(), STDIN] for w in re.findall(rb"[A-Za-z0-9]+", data)
    )
    ranked = sorted(words.items(), key=lambda item: (-item[1], item[0]))[:count]
    return "".join(f"{n} {word.decode()}\n" for word, n in ranked)


@pytest.fixture
def cluster(tmp_path: Path):
    origin = NodeProcess(tmp_path / "origin", "--max-jobs", "0")
    worker = NodeProcess(tmp_path / "worker", "--join", origin.ticket)
    yield origin, worker
    worker.kill()
    origin.kill()


def test_treesum_runs_unmodified_on_a_worker(
    cluster: tuple[NodeProcess, NodeProcess], tmp_path: Path
) -> None:
    origin, worker = cluster
    data = tmp_path / "data"
    for name, content in TREE.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
    stdin = tmp_path / "stdin.txt"
    stdin.write_bytes(STDIN)
    ran = origin.cli(
        "job", "submit", "--module", str(TREESUM / "treesum.wasm"), "--mount", f"data={data}",
        "--env", "TREESUM_LABEL=nightly", "--stdin", str(stdin), "--wait",
        "--", "-n", "3", "-o", "/out/report/top.txt", "/in/data", "-",
    )  # fmt: skip
    job_id, result = ran.stdout.splitlines()
    assert json.loads(result) == {"exit_code": 0}
    out = tmp_path / "got"
    origin.cli("job", "get", job_id, "-o", str(out))
    assert (out / "stdout").read_text() == listing("nightly")
    assert (out / "report" / "top.txt").read_text() == top_words(3) == "5 the\n4 cat\n2 end\n"
    assert (out / "stderr").read_text() == ""
    shown = json.loads(origin.cli("job", "show", job_id, "--json").stdout)
    assert shown["worker"] == worker.id
    assert any(event["note"].startswith("compiled in ") for event in shown["history"])

    # A bad flag: the usage on stderr, exit status 2, a failed job; `job run` fetches its outputs.
    bad = origin.cli(
        "job", "run", "--module", str(TREESUM / "treesum.wasm"), "--attempts", "1",
        "-o", str(tmp_path / "bad"), "--", "-x", "/in",
        check=False,
    )  # fmt: skip
    bad_id = bad.stdout.splitlines()[0]
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[-1] == f"error: job {bad_id} failed: command exited with code 2"
    assert (tmp_path / "bad" / "stderr").read_text().splitlines()[-1].startswith("usage: treesum")
    assert (tmp_path / "bad" / "stdout").read_text() == ""


@pytest.mark.skipif(
    shutil.which("clang") is None or not WASI_LIBC.is_dir(),
    reason="needs clang and wasi-libc (apt-get install clang lld wasi-libc)",
)
def test_committed_binary_matches_its_source(tmp_path: Path) -> None:
    built = tmp_path / "treesum.wasm"
    subprocess.run([*BUILD, "-o", str(built), str(TREESUM / "treesum.c")], check=True)
    assert built.read_bytes() == (TREESUM / "treesum.wasm").read_bytes()
