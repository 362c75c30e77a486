"""`GET /jobs/{id}/logs`: a job's stdout and stderr, live while it runs (from the origin's bounded
buffer, see `p2pnode.jobs.logs`) and whole once it ended (from its output blobs)."""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import get_args

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from p2pnode.api.schemas import LogEvent
from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.store import StoreError
from p2pnode.jobs import logs
from p2pnode.jobs.model import Job, JobId, LogStream
from p2pnode.jobs.worker import provider_addrs
from p2pnode.node import Node

NDJSON = "application/x-ndjson"

Seen = dict[tuple[int, str], int]
"""(attempt, stream) -> the byte of that attempt's stream a reader has been sent up to."""


def log_routes(node: Node, job_or_404: Callable[[str], Job]) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/jobs/{job_id}/logs",
        response_class=StreamingResponse,
        responses={
            200: {
                "model": LogEvent,
                "content": {NDJSON: {}},
                "description": "NDJSON, one LogEvent per line; the last one has the job's `state`.",
            },
            404: {"description": "No such job"},
        },
    )
    async def job_logs(
        job_id: JobId, follow: bool = False, stream: LogStream | None = None
    ) -> StreamingResponse:
        """A job's output: on its origin, what a running job wrote lately (the newest 1 MiB) and,
        with `follow`, what it writes until it ends; once it ended, the rest of its stdout and
        stderr (a command's output blobs; a workflow's stderr is its logs). `stream` picks one."""
        job = job_or_404(job_id)
        streams: list[LogStream] = [stream] if stream else list(get_args(LogStream))
        live = not job.state.terminal and job.origin == node.id
        buffer = node.jobs.logs.buffer(job_id) if live else None

        async def lines() -> AsyncIterator[bytes]:
            seen: Seen = {}
            if buffer is not None:
                async for event in _live(buffer, follow, streams, seen):
                    yield _line(event)
            elif not job.state.terminal:
                yield _line(LogEvent(note=f"live output is kept by the job's origin {job.origin}"))
            final = node.jobs.store.get(job_id) or job
            if final.state.terminal:
                async for event in _rest(node, final, streams, seen):
                    yield _line(event)
            yield _line(LogEvent(state=final.state))

        return StreamingResponse(lines(), media_type=NDJSON)

    return router


def _line(event: LogEvent) -> bytes:
    return event.model_dump_json(exclude_defaults=True).encode() + b"\n"


async def _live(
    buffer: logs.LogBuffer, follow: bool, streams: list[LogStream], seen: Seen
) -> AsyncIterator[LogEvent]:
    attempt = None
    async for item in logs.read(buffer, follow):
        if isinstance(item, int):
            yield LogEvent(
                note=f"{item} chunks of live output dropped (the node keeps the newest "
                f"{logs.BUFFER_CHARS >> 20} MiB); all of it is in the job's outputs once it ends"
            )
            continue
        if attempt is not None and item.attempt != attempt:
            yield LogEvent(note=f"attempt {item.attempt}")
        attempt = item.attempt
        seen[(item.attempt, item.stream)] = item.end
        if item.stream in streams:
            yield LogEvent(stream=item.stream, text=item.text)


async def _rest(
    node: Node, job: Job, streams: list[LogStream], seen: Seen
) -> AsyncIterator[LogEvent]:
    """What a reader has not seen of an ended job's streams."""
    if job.spec.command is None:
        if "stderr" in streams and not any(name == "stderr" for _, name in seen) and job.logs:
            yield LogEvent(stream="stderr", text=job.logs.rstrip("\n") + "\n")
        return
    for name in streams:
        ref = job.outputs.get(name)
        start = seen.get((job.attempts, name), 0)
        if ref is None or start >= ref.size:
            continue
        try:
            await node.blobs.fetch(ref.hash, provider_addrs(ref, node.peer_addr), root=ref.root)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            async with contextlib.aclosing(node.blobs.read_range(ref.hash, start)) as chunks:
                async for data in chunks:
                    yield LogEvent(stream=name, text=decoder.decode(data))
            if tail := decoder.decode(b"", final=True):
                yield LogEvent(stream=name, text=tail)
        except (FetchError, StoreError, OSError) as exc:
            yield LogEvent(note=f"the {name} of job {job.id} cannot be read: {exc}")
