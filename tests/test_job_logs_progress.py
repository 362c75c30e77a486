"""Progress on long work (#13.7): `start.sh` says what its first install does and lets pip show
its progress; `job submit --wait` shows the job's state changes on a terminal and stays quiet
when piped."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ROOT / "examples" / "command.wat"

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3: `-m venv DIR` makes DIR/bin/python (this script again); `-m pip` records
# its arguments, prints like pip, and installs a p2pnode that says how it was started.
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
if [ "$1 $2" = "-m pip" ]; then
  echo "$@" > pip-args
  echo "Installing collected packages: p2pnode"
  printf '#!/bin/sh\\necho "p2pnode $*"\\n' > .venv/bin/p2pnode && chmod +x .venv/bin/p2pnode
  exit 0
fi
exit 1
"""


def test_start_sh_says_what_its_first_install_does(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "start.sh", repo / "start.sh")
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python)}

    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(repo / "start.sh"), "--data", "x"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )

    first = start()
    assert first.stdout == "p2pnode start --data x\n"  # stdout stays the node's
    said, *pip_output = first.stderr.splitlines()
    assert said == (
        "start.sh: first run: installing p2pnode and its dependencies into .venv "
        "(takes about a minute)"
    )
    assert pip_output == ["Installing collected packages: p2pnode"]
    assert "--quiet" not in (repo / "pip-args").read_text().split()
    again = start()
    assert (again.stdout, again.stderr) == ("p2pnode start --data x\n", "")


@pytest.fixture
def node(tmp_path: Path):
    started = NodeProcess(tmp_path / "node")
    yield started
    started.kill()


def submit_wait(node: NodeProcess, *, terminal: bool) -> tuple[str, str]:
    """`job submit --wait` of a command that succeeds, its stderr a terminal or a pipe."""
    argv = [sys.executable, "-m", "p2pnode", "--api", node.api, "--data", str(node.data_dir)]
    argv += ["job", "submit", "--module", str(COMMAND), "--wait", "--", "0"]
    if not terminal:
        piped = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
        return piped.stdout, piped.stderr
    controller, tty = pty.openpty()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=tty, text=True) as proc:
        os.close(tty)
        shown = b""
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed, the CLI exited
                break
            if not data:
                break
            shown += data
        out, _ = proc.communicate(timeout=120)
    os.close(controller)
    assert proc.returncode == 0
    return out, shown.decode().replace("\r\n", "\n")


def test_submit_wait_shows_state_changes_on_a_terminal_only(node: NodeProcess) -> None:
    out, err = submit_wait(node, terminal=True)
    job_id, result = out.splitlines()
    assert json.loads(result) == {"exit_code": 0}
    lines = [line.split(maxsplit=2) for line in err.splitlines()]
    assert [[job, state] for job, state, _ in lines] == [
        [job_id, "pending"],
        [job_id, "claimed"],
        [job_id, "running"],
        [job_id, "running"],
        [job_id, "succeeded"],
    ], err
    assert lines[3][2].startswith("compiled in "), err  # the worker's compile note
    assert f"claimed  attempt 1 by {node.id[:16]}" in err
    out, err = submit_wait(node, terminal=False)
    assert err == "" and json.loads(out.splitlines()[1]) == {"exit_code": 0}
