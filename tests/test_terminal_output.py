"""`job logs` on a terminal: a job's bytes cannot drive the user's terminal (escape sequences
are shown, not obeyed), while into a pipe they pass through exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.slow

CAT = Path(__file__).resolve().parent / "modules" / "cat.wat"
HOSTILE = "title\x1b]0;pwned\x07 clear\x1b[2J csi\x9b31m cr\rok\ttab\n"


@pytest.fixture
def node(tmp_path: Path):
    started = NodeProcess(tmp_path / "node")
    yield started
    started.kill()


def _argv(node: NodeProcess, *args: str) -> list[str]:
    return [sys.executable, "-m", "p2pnode", "--api", node.api, "--data", str(node.data_dir), *args]


def _into_a_pipe(node: NodeProcess, *args: str) -> bytes:
    return subprocess.run(_argv(node, *args), capture_output=True, check=True, timeout=60).stdout


def _on_a_terminal(node: NodeProcess, *args: str) -> str:
    """What the CLI writes to stdout when stdout is a terminal (a pty), newlines as written."""
    main, sub = os.openpty()
    proc = subprocess.Popen(
        _argv(node, *args),
        stdout=sub,
        stderr=subprocess.PIPE,
    )
    os.close(sub)
    shown = b""
    try:
        while chunk := os.read(main, 65536):
            shown += chunk
    except OSError:  # EIO: the CLI exited and closed the terminal
        pass
    finally:
        os.close(main)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return shown.decode().replace("\r\n", "\n")


def test_job_logs_shows_control_sequences_on_a_terminal_and_passes_them_to_a_pipe(
    node: NodeProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "out.txt").write_text(HOSTILE)
    ran = node.cli(
        "job", "submit", "--module", str(CAT), "--mount", f"data={folder}", "--wait",
        "--", "3", "data/out.txt",
    )  # fmt: skip
    job_id = ran.stdout.splitlines()[0]
    assert _into_a_pipe(node, "job", "logs", job_id, "--stdout") == HOSTILE.encode()
    assert _on_a_terminal(node, "job", "logs", job_id, "--stdout") == (
        "title\\x1b]0;pwned\\x07 clear\\x1b[2J csi\\x9b31m cr\\x0dok\ttab\n"
    )
