"""Scenario (#11.1): a command job from the CLI, `p2pnode job submit ... -- ARG...`, and its
outputs, stdout and stderr fetched with `job get`, for a failed job too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

COMMAND = Path(__file__).resolve().parent.parent / "examples" / "command.wat"
MODULES = Path(__file__).resolve().parent / "modules"


@pytest.fixture
def node(tmp_path: Path):
    started = NodeProcess(tmp_path / "node")
    yield started
    started.kill()


def test_command_job_from_the_cli(node: NodeProcess, tmp_path: Path) -> None:
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("typed in\n")
    common = ["job", "submit", "--module", str(COMMAND), "--env", "LANG=C", "--stdin", str(stdin)]
    ok = node.cli(*common, "--wait", "--", "0", "--flag")
    job_id, result = ok.stdout.splitlines()
    assert json.loads(result) == {"exit_code": 0}
    failed = node.cli(*common, "--attempts", "1", "--wait", "--", "3", check=False)
    failed_id = failed.stdout.splitlines()[0]
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"error: job {failed_id} failed: command exited with code 3"

    for got, argv in ((job_id, "0\n--flag\n"), (failed_id, "3\n")):
        out = tmp_path / got
        node.cli("job", "get", got, "-o", str(out))
        assert (out / "stdout").read_text() == f"command.wat\n{argv}LANG=C\ntyped in\n"
        assert (out / "stderr").read_text() == "done\n"
        assert (out / "sub" / "f.txt").read_text() == "partial\n"
    shown = json.loads(node.cli("job", "show", failed_id, "--json").stdout)
    assert shown["result"] == {"exit_code": 3}
    assert shown["spec"]["command"]["argv"] == ["command.wat", "3"]


def test_mounts_from_the_cli(node: NodeProcess, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "deeper" / "x.txt").write_text("nested\n")
    (folder / "top.txt").write_text("top\n")
    cat = str(MODULES / "cat.wat")
    for mount, args in (
        (f"data={folder}", ["3", "data/sub/deeper/x.txt"]),
        (f"tree={folder}:/srv/tree", ["6", "top.txt"]),
        (f"one={folder / 'top.txt'}:/etc/one/top.txt", ["6", "top.txt"]),
    ):
        ran = node.cli("job", "submit", "--module", cat, "--mount", mount, "--wait", "--", *args)
        job_id = ran.stdout.splitlines()[0]
        out = tmp_path / job_id
        node.cli("job", "get", job_id, "-o", str(out))
        assert (out / "stdout").read_text() == (folder / args[1].removeprefix("data/")).read_text()
    bad = node.cli("job", "submit", "--module", cat, "--mount", "x=/nonexistent", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --mount x: no file or folder at /nonexistent"
    )


def test_job_run_follows_the_job_and_writes_its_outputs(node: NodeProcess, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "top.txt").write_text("top\n")
    ran = node.cli(
        "job", "run", "--module", str(COMMAND), "--mount", f"data={folder}", "-o",
        str(tmp_path / "ok"), "--env", "A=B", "--", "0", "x",
    )  # fmt: skip
    job_id = ran.stdout.splitlines()[0]
    assert json.loads(ran.stdout.splitlines()[-1]) == {"exit_code": 0}
    states = [line.split()[1] for line in ran.stderr.splitlines() if line.startswith(job_id)]
    assert states[0] == "pending" and states[-1] == "succeeded", ran.stderr
    assert (tmp_path / "ok" / "stdout").read_text() == "command.wat\n0\nx\nA=B\n"
    assert (tmp_path / "ok" / "sub" / "f.txt").read_text() == "partial\n"

    # Without -o the outputs go to out/JOB_ID, for a failed program too.
    failed = subprocess.run(
        [sys.executable, "-m", "p2pnode", "--api", node.api, "--data", str(node.data_dir)]
        + ["job", "run", "--module", str(COMMAND), "--attempts", "1", "--", "3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    job_id = failed.stdout.splitlines()[0]
    assert failed.returncode == 1, failed.stderr
    assert (
        failed.stderr.splitlines()[-1] == f"error: job {job_id} failed: command exited with code 3"
    )
    assert (tmp_path / "out" / job_id / "stdout").read_text() == "command.wat\n3\n"
    assert (tmp_path / "out" / job_id / "stderr").read_text() == "done\n"
