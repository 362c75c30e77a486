"""Live output of running jobs, as their origin holds it: a bounded buffer per job that followers
read and wait on.

The lease holder sends what its run writes, in `model.LogChunk`s; the origin keeps the newest
`BUFFER_CHARS` of them per job in memory, dropping the oldest (a follower is told how many it
missed), and closes and forgets a job's buffer when the job ends: its whole stdout and stderr are
then output blobs. All jobs' buffers together hold at most `TOTAL_BUFFER_BYTES`: with many jobs
running each keeps an equal share, so what workers send costs the origin a bounded amount however
many of its jobs run at once.
"""

from __future__ import annotations

import itertools
import sys
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from p2pnode.jobs.model import LogChunk, LogStream

BUFFER_CHARS = 1 << 20
"""Bytes of memory the live output an origin keeps per job (the newest) may take: text counted
as Python holds it (4 bytes a character once one is outside the BMP), not by its length."""
TOTAL_BUFFER_BYTES = 64 << 20
"""What the live output of all running jobs of one origin may take together."""
PIECE_COST = 160
"""What one piece costs besides its text (the `Piece`, its fields, its place in the deque:
~150 bytes measured), so a flood of empty chunks is bounded too."""


@dataclass(frozen=True)
class Piece:
    """One chunk as the origin keeps it, stamped with the attempt that sent it."""

    attempt: int
    stream: LogStream
    offset: int
    size: int
    text: str

    @property
    def cost(self) -> int:
        return sys.getsizeof(self.text) + PIECE_COST

    @property
    def end(self) -> int:
        """Where the next byte of this attempt's stream starts."""
        return self.offset + self.size


class LogBuffer:
    """The newest pieces of one job's output, numbered from 0 in arrival order."""

    def __init__(self, limit: int = BUFFER_CHARS) -> None:
        self._limit = limit
        self._pieces: deque[Piece] = deque()
        self._held = 0
        self.end = 0
        """Number of the next piece."""
        self.closed = False
        self._changed = trio.Event()

    @property
    def start(self) -> int:
        """Number of the oldest piece held."""
        return self.end - len(self._pieces)

    @property
    def held(self) -> int:
        """What the held pieces cost, never more than the limit."""
        return self._held

    def append(self, attempt: int, chunk: LogChunk, limit: int | None = None) -> None:
        """Keep the chunk, dropping the oldest pieces beyond `limit` (default: the buffer's)."""
        piece = Piece(attempt, chunk.stream, chunk.offset, chunk.size, chunk.text)
        self._pieces.append(piece)
        self._held += piece.cost
        self.end += 1
        self.trim(self._limit if limit is None else min(limit, self._limit))
        self._wake()

    def trim(self, limit: int) -> None:
        """Drop the oldest pieces until the rest cost at most `limit`."""
        while self._held > limit:
            self._held -= self._pieces.popleft().cost

    def since(self, number: int) -> tuple[int, list[Piece]]:
        """How many pieces from `number` on were dropped, and those held from there."""
        skip = max(number - self.start, 0)
        return max(self.start - number, 0), list(itertools.islice(self._pieces, skip, None))

    async def wait(self, number: int) -> None:
        """Return once piece `number` arrived or the buffer is closed."""
        while number >= self.end and not self.closed:
            await self._changed.wait()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


async def read(buffer: LogBuffer, follow: bool) -> AsyncIterator[Piece | int]:
    """The pieces held, and with `follow` those that arrive, until the buffer closes; an int
    says how many pieces were dropped before the next one could be read (first: since the job
    began)."""
    number = 0
    while True:
        dropped, pieces = buffer.since(number)
        if dropped:
            yield dropped
        number += dropped
        for piece in pieces:
            number += 1
            yield piece
        if not follow or buffer.closed:
            return
        await buffer.wait(number)


class JobLogs:
    """The buffers of the jobs this node originates that have sent output or have followers."""

    def __init__(self, limit: int = BUFFER_CHARS, total: int = TOTAL_BUFFER_BYTES) -> None:
        self._limit = limit
        self._total = total
        self._buffers: dict[str, LogBuffer] = {}
        self.held = 0
        """What all buffers hold together, never more than `total`."""

    def append(self, job_id: str, attempt: int, chunk: LogChunk) -> None:
        """Keep a running job's chunk within its share of the total."""
        buffer = self.buffer(job_id)
        share = self._total // len(self._buffers)
        before = buffer.held
        buffer.append(attempt, chunk, share)
        self.held += buffer.held - before
        if self.held > self._total:  # more jobs than when the others filled up: shrink them
            for other in self._buffers.values():
                before = other.held
                other.trim(share)
                self.held += other.held - before

    def buffer(self, job_id: str) -> LogBuffer:
        """The job's buffer; only for a job that has not ended (`ended` forgets it)."""
        if (buffer := self._buffers.get(job_id)) is None:
            buffer = self._buffers[job_id] = LogBuffer(self._limit)
        return buffer

    def ended(self, job_id: str) -> None:
        """The job is over: its followers finish what is held, and the buffer goes."""
        if (buffer := self._buffers.pop(job_id, None)) is not None:
            self.held -= buffer.held
            buffer.close()

    def __len__(self) -> int:
        return len(self._buffers)
