"""Log lines about what peers do, aggregated: a flood of bad peers costs a few lines, not one each.

The first event of a kind in an interval is logged in full, so a lone failure reads as before;
the rest of that interval's events of the kind become one summary line when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

LOG_INTERVAL_S = 10.0
_PEERS_COUNTED = 1000  # distinct peers a summary counts exactly; beyond that it says "at least"


@dataclass
class _Window:
    start: float
    level: int
    more: int = 0
    peers: set[str] = field(default_factory=set)


class PeerLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def event(
        self, kind: str, peer: str, message: str, *args: object, level: int = logging.INFO
    ) -> None:
        """Record one event of `kind` caused by `peer`; `message % args` is logged if it opens an
        interval."""
        now = self._clock()
        self.flush(now)
        window = self._windows.get(kind)
        if window is None:
            self._windows[kind] = _Window(start=now, level=level)
            self._log.log(level, message, *args)
            return
        window.more += 1
        if len(window.peers) < _PEERS_COUNTED:
            window.peers.add(peer)

    def flush(self, now: float | None = None) -> None:
        """Summarise every interval that has ended."""
        now = self._clock() if now is None else now
        for kind, window in list(self._windows.items()):
            if now - window.start < self._interval:
                continue
            del self._windows[kind]
            if window.more:
                peers = len(window.peers)
                at_least = "at least " if peers >= _PEERS_COUNTED else ""
                self._log.log(
                    window.level,
                    "%s: %d more from %s%d peer%s in the last %.0f s",
                    kind,
                    window.more,
                    at_least,
                    peers,
                    "" if peers == 1 else "s",
                    now - window.start,
                )

    async def run(self) -> None:
        """Flush on time, so the summary of a flood that stopped is not left unsaid."""
        while True:
            await trio.sleep(self._interval)
            self.flush()
