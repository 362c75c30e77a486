"""Run a Python module under cProfile, profiling only from SIGUSR1 until SIGUSR2 (which writes
the stats), so that a benchmark profiles the part it measures and not a node's start-up.

    python benchmarks/profiled.py OUT.prof PYTHON -m MODULE ARGS...

(PYTHON is skipped: the form lets `tests.nodeproc.NodeProcess(prefix=...)` start a node under it.)
It counts the main thread's CPU time (waiting is free), and sees only that thread, where trio
runs; the process's other threads (iroh's Rust
runtime, `trio.to_thread` workers) are measured per thread from /proc by `thread_cpu`.
"""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the process's threads so far, summed by thread name with
    digits dropped, and as "ended" what threads that are gone used (trio's idle worker threads
    end after 10 s); the values add up to the process's CPU (Linux /proc)."""
    total: defaultdict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, used = _stat(task / "stat")
        except OSError:  # ended meanwhile
            continue
        total["main" if task.name == str(pid) else name.rstrip("0123456789 -").strip()] += used
    total["ended"] = _stat(Path(f"/proc/{pid}/stat"))[1] - sum(total.values())
    return dict(total)


def _stat(path: Path) -> tuple[str, float]:
    """A task's name and its CPU seconds."""
    stat = path.read_text()
    fields = stat.rpartition(")")[2].split()
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return stat[stat.index("(") + 1 : stat.rindex(")")], used


def main() -> None:
    out, _python, flag, module, *args = sys.argv[1:]
    assert flag == "-m", "usage: profiled.py OUT PYTHON -m MODULE ARGS..."
    profile = cProfile.Profile(time.thread_time)  # CPU, not wall: waiting costs nothing

    def start(_signum: int, _frame: object) -> None:
        profile.enable()

    def stop(_signum: int, _frame: object) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
