"""The refs table (tags and pins): what is fsynced, and what a blob's description costs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_tag_costs_no_fsync_and_a_pin_does(tmp_path: Path) -> None:
    """Job submits tag their blobs (no fsync: the job store's own durability, see refs.py); a
    person's pin is fsynced before it returns."""
    script = textwrap.dedent(
        f"""
        import os
        from p2pnode.blobs.refs import RefTable
        refs = RefTable({str(tmp_path / "meta.sqlite")!r})
        os.access("/mark-tags", os.F_OK)
        for n in range(20):
            refs.set_tag(f"job/{{n}}/module", "ab" * 32)
        os.access("/mark-pin", os.F_OK)
        refs.pin("cd" * 32)
        os.access("/mark-end", os.F_OK)
        """
    )
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=fsync,fdatasync,access"]
        + [sys.executable, "-c", script],
        cwd=REPO,
        check=True,
    )
    phase, syncs = "open", {"open": 0, "tags": 0, "pin": 0, "end": 0}
    for line in trace.read_text().splitlines():
        if "/mark-" in line:
            phase = line.partition("/mark-")[2].partition('"')[0]
        elif "fsync(" in line or "fdatasync(" in line:
            syncs[phase] += 1
    assert syncs["tags"] == 0
    assert syncs["pin"] >= 1
