"""The local HTTP API: what the CLI and people use to drive a running node."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import trio
from fastapi import FastAPI, HTTPException
from fastapi import Path as FastApiPath
from fastapi.responses import StreamingResponse

import p2pnode
import tickets
from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.store import BlobInfo, BlobInUse, BlobNotFound, GcResult, StoreError
from p2pnode.jobs.model import Job, JobState
from p2pnode.jobs.service import JobSubmission, SubmissionError
from p2pnode.jobs.store import Refused
from p2pnode.jobs.worker import provider_addrs
from p2pnode.api.schemas import BlobAdded, BlobFetchRequest, Done, FetchEvent, Health, JoinTicketReply, MemberStatus, NodeId, NodeStatus, PathRequest

if TYPE_CHECKING:
    from p2pnode.node import Node


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="p2pnode", version=p2pnode.__version__, description="Local control API of one p2pnode.")

    @app.get("/health")
    async def health() -> Health:
        return Health(ok=True, id=node.id, version=p2pnode.__version__)

    @app.get("/status")
    async def status() -> NodeStatus:
        return node.status()

    @app.post("/tickets/join")
    async def join_ticket() -> JoinTicketReply:
        return JoinTicketReply(ticket=node.join_ticket())

    @app.get("/blobs")
    async def list_blobs() -> list[BlobInfo]:
        return await node.blobs.store.list()

    @app.post("/blobs")
    async def add_blob(request: PathRequest) -> BlobAdded:
        with store_errors():
            info = await node.blobs.add(request.path)
        return BlobAdded(blob=info, ticket=node.blobs.ticket(info))

    @app.get("/blobs/{blob_hash}/ticket")
    async def blob_ticket(blob_hash: str) -> BlobAdded:
        with store_errors():
            info = await node.blobs.store.info(blob_hash)
        return BlobAdded(blob=info, ticket=node.blobs.ticket(info))

    @app.delete("/blobs/{blob_hash}")
    async def remove_blob(blob_hash: str, force: bool = False) -> Done:
        with store_errors():
            await node.blobs.store.remove(blob_hash, force=force)
        return Done()

    @app.post("/blobs/{blob_hash}/pin")
    async def pin_blob(blob_hash: str) -> Done:
        with store_errors():
            await node.blobs.store.pin(blob_hash)
        return Done()

    @app.delete("/blobs/{blob_hash}/pin")
    async def unpin_blob(blob_hash: str) -> Done:
        with store_errors():
            await node.blobs.store.unpin(blob_hash)
        return Done()

    @app.post("/blobs/gc")
    async def collect_garbage() -> GcResult:
        """Remove unpinned, untagged blobs that no live job needs (the node also does this every 10 min)."""
        return await node.collect_garbage()

    @app.post("/blobs/{blob_hash}/export")
    async def export_blob(blob_hash: str, request: PathRequest) -> BlobInfo:
        with store_errors():
            return await node.blobs.store.export(blob_hash, request.path)

    @app.post("/blobs/fetch")
    async def fetch_blob(request: BlobFetchRequest) -> StreamingResponse:
        """Fetch by blob ticket; streams NDJSON progress lines, the last one says how it ended."""
        try:
            ticket = tickets.parse_blob(request.ticket)
        except tickets.TicketError as exc:
            raise HTTPException(422, f"invalid blob ticket: {exc}") from None
        send, receive = trio.open_memory_channel[FetchEvent](16)

        def emit(event: FetchEvent) -> None:
            # Progress is best-effort: a slow or departed reader never slows or breaks the fetch.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                send.send_nowait(event)

        async def run() -> None:
            async with send:
                try:
                    info = await node.blobs.fetch_ticket(ticket, lambda p: emit(FetchEvent(progress=p)))
                except (FetchError, StoreError) as exc:
                    final = FetchEvent(error=str(exc))
                else:
                    final = FetchEvent(blob=info)
                with contextlib.suppress(trio.BrokenResourceError):
                    await send.send(final)

        async def lines() -> AsyncIterator[bytes]:
            async with receive:
                async for event in receive:
                    yield event.model_dump_json(exclude_none=True).encode() + b"\n"

        node.background.start_soon(run)  # a dropped client leaves the fetch to finish into the store
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/jobs")
    async def submit_job(request: JobSubmission) -> Job:
        try:
            return await node.jobs.submit_files(request)
        except SubmissionError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/jobs")
    async def list_jobs(state: JobState | None = None, limit: int = 100) -> list[Job]:
        return node.jobs.store.list(state=state, limit=limit)

    @app.get("/jobs/{job_id}")
    async def show_job(job_id: str) -> Job:
        return _job_or_404(node, job_id)

    @app.post("/jobs/{job_id}/wait")
    async def wait_job(job_id: str, timeout: float = 30.0) -> Job:
        """Long poll: answers when the job is terminal, or with its current state after `timeout` s."""
        _job_or_404(node, job_id)
        with trio.move_on_after(timeout):
            await node.jobs.wait(job_id)
        return _job_or_404(node, job_id)

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Job:
        try:
            return await node.jobs.cancel(job_id)
        except Refused as exc:
            raise HTTPException(409, f"cannot cancel job {job_id}: {exc.reason}") from None

    @app.post("/jobs/{job_id}/outputs")
    async def get_outputs(job_id: str, request: PathRequest) -> dict[str, Path]:
        """Fetch the job's output artifacts (from this node or whoever has them) into a folder."""
        job = _job_or_404(node, job_id)
        if job.state != JobState.SUCCEEDED:
            raise HTTPException(409, f"job {job_id} is {job.state.value}; only a succeeded job has outputs")
        written: dict[str, Path] = {}
        with store_errors():
            request.path.mkdir(parents=True, exist_ok=True)
            for name, ref in job.outputs.items():
                try:
                    info = await node.blobs.fetch(ref.hash, provider_addrs(ref, node.peer_addr), root=ref.root)
                except FetchError as exc:
                    raise HTTPException(502, str(exc)) from None
                written[name] = request.path / name
                await node.blobs.store.export(info.hash, written[name])
        return written

    @app.get("/members")
    async def list_members() -> list[MemberStatus]:
        return node.members()

    @app.delete("/members/{member_id}")
    async def remove_member(member_id: Annotated[NodeId, FastApiPath()]) -> Done:
        """Forget a member and refuse it from then on (router and join handshake; persisted)."""
        if not node.remove_member(member_id):
            raise HTTPException(404, f"no member {member_id} on this node")
        return Done()

    return app


def _job_or_404(node: Node, job_id: str) -> Job:
    job = node.jobs.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id} on this node")
    return job


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Map store errors to HTTP answers whose detail is the store's own human message."""
    try:
        yield
    except BlobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except BlobInUse as exc:
        raise HTTPException(409, str(exc)) from None
    except (StoreError, OSError) as exc:
        raise HTTPException(400, str(exc)) from None
