"""Progress of long transfers: a live bar with rate and ETA on a terminal, plain lines when
piped."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PLAIN_STEP = 0.1


class TransferProgress:
    def __init__(self, label: str, total: int) -> None:
        self._label = label
        self._total = total
        self._tty = sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._next_report = 0.0

    def __enter__(self) -> TransferProgress:
        if self._tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )  # only on a terminal

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self._total)
        return self

    def update(self, done: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done)
            return
        fraction = done / self._total if self._total else 1.0
        if fraction >= self._next_report:
            click.echo(
                f"{self._label}: {done / 1e6:.1f} of {self._total / 1e6:.1f} MB ({fraction:.0%})",
                err=True,
            )
            self._next_report = fraction + PLAIN_STEP

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
