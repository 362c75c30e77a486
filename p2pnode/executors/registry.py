"""The executors a node has, and the ones it offers right now.

One loop asks every executor whether it is `available()` and keeps `offered` (the worker's view)
in step, so an executor kind needs no special case in the node: it is listed once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from p2pnode.executors.base import Executor

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 30.0  # a worker notices a local Flawless coming or going within this


class ExecutorRegistry:
    def __init__(
        self, executors: Iterable[Executor], probe_interval_s: float = PROBE_INTERVAL_S
    ) -> None:
        self._executors = list(executors)
        self._interval = probe_interval_s
        self.offered: dict[str, Executor] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Started once every executor answered its first probe (a probe is bounded by its
        executor: Flawless's takes at most 2 s), then probes each one every interval."""
        async with trio.open_nursery() as nursery:
            for executor in self._executors:
                await nursery.start(self._watch, executor)
            task_status.started()

    async def _watch(
        self, executor: Executor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self._probe(executor)
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self._probe(executor)

    async def _probe(self, executor: Executor) -> None:
        kind = executor.kind
        if await executor.available():
            if kind not in self.offered:
                log.info("executor %s available: taking %s jobs", kind, kind)
            self.offered[kind] = executor
        elif self.offered.pop(kind, None) is not None:
            log.warning("executor %s stopped answering: no longer taking %s jobs", kind, kind)
