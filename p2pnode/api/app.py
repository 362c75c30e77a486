"""The local HTTP API: what the CLI and people use to drive a running node.

Every request has passed `ApiGuard` (auth.py) before it gets here. Parameters and bodies are
validated by their models (a malformed hash or id, or an unknown field, is a 422), and every
error answer is `{"detail": "<one line>"}` so the CLI can print it as is. File contents travel in
the request and response bodies (`PUT /blobs`, `GET /blobs/{hash}`); the path-based add and export
serve the node's own user (the token holder) and never touch the data folder or a non-regular file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import trio
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import p2pnode
import tickets
from p2pnode.api.auth import DOCS_ASSETS, PUBLIC_PATHS, Sessions
from p2pnode.api.dashboard import dashboard_router
from p2pnode.api.job_routes import job_routes
from p2pnode.api.log_routes import log_routes
from p2pnode.api.metrics_routes import metrics_router
from p2pnode.api.schemas import (
    BlobAdded,
    BlobEntry,
    BlobFetchRequest,
    Done,
    ErrorReply,
    ExportRequest,
    FetchEvent,
    Health,
    JobView,
    JoinTicketReply,
    MemberStatus,
    NodeStatus,
    PathRequest,
    invalid_request,
)
from p2pnode.api.server import serve_api
from p2pnode.api.worker_routes import worker_routes
from p2pnode.blobs.errors import StoreFull
from p2pnode.blobs.fetch import FetchError
from p2pnode.blobs.store import BlobInfo, BlobInUse, BlobNotFound, GcResult, StoreError
from p2pnode.fsutil import FileReplaced, NotRegularFile, disk_full, open_real
from p2pnode.ids import BlobHashField, NodeIdField
from p2pnode.jobs.model import Job, JobId, JobState, tag_job
from p2pnode.jobs.store import Refused
from p2pnode.jobs.submission import JobSubmission, SubmissionError, SubmissionTooLarge
from p2pnode.node import Node


async def serve_node_api(
    node: Node, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """The node's local API, on its configured address, behind the token in its data folder."""
    settings = node.settings
    sessions = Sessions()
    await serve_api(
        create_app(node, sessions),
        settings.http_host,
        settings.http_port,
        node.api_token,
        sessions=sessions,
        task_status=task_status,
    )


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error answers as OpenAPI documents them: always JSON `{"detail": "<one line>"}`."""
    content = {"application/json": {"schema": ErrorReply.model_json_schema()}}
    return {code: {"description": HTTPStatus(code).phrase, "content": content} for code in codes}


COMMON_ERRORS = _errors(401, 403, 421, 422)
BODY_ERRORS = _errors(411, 413, 415)
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Disposition": "attachment",
    "Content-Security-Policy": "sandbox",
}
"""A member's blob may be HTML; opened on this origin with a dashboard session it would run as the
dashboard, so a browser only ever saves it (and would run it sandboxed, without the origin)."""


class NdjsonResponse(StreamingResponse):
    media_type = "application/x-ndjson"


def create_app(node: Node, sessions: Sessions) -> FastAPI:
    app = FastAPIOffline(
        title="p2pnode",
        version=p2pnode.__version__,
        description="Local control API of one p2pnode. Every endpoint but /health (and these docs) "
        "needs `Authorization: Bearer <token>`, the token being the node's DATA/api-token.",
        responses=COMMON_ERRORS,
        static_url=DOCS_ASSETS.rstrip("/"),
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _refused)
    for failure in (OSError, StoreError, sqlite3.Error):
        app.add_exception_handler(failure, _disk_full)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    api = APIRouter()

    @app.get("/health")
    async def health() -> Health:
        """Liveness, without the token."""
        return Health(ok=True, id=node.id, version=p2pnode.__version__)

    @api.get("/status")
    async def status() -> NodeStatus:
        status = node.status()
        status.disk = await node.disk()
        return status

    @api.post("/tickets/join")
    async def join_ticket() -> JoinTicketReply:
        return JoinTicketReply(ticket=node.join_ticket())

    @api.get("/blobs")
    async def list_blobs() -> list[BlobEntry]:
        return [
            BlobEntry(
                **dict(info), jobs=sorted({j for t in info.tags if (j := tag_job(t)) is not None})
            )
            for info in await node.blobs.list_blobs()
        ]

    @api.put(
        "/blobs",
        responses=_errors(400, 415),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload_blob(request: Request, pin: bool = True) -> BlobAdded:
        """Add the request body (application/octet-stream, streamed, any size) as a blob. An
        unpinned one is spared by GC for an hour, or until a job submitted with it holds it."""
        try:
            with store_errors():
                info = await node.blobs.add_stream(request.stream(), pin=pin)
        except ClientDisconnect:
            raise HTTPException(400, "the upload was abandoned") from None
        if not info.pinned:
            node.blobs.expect_holder(info.hash)
        return BlobAdded(blob=info, ticket=node.blobs.ticket(info))

    @api.post("/blobs", responses={**_errors(400, 403, 412), **BODY_ERRORS})
    async def add_blob(request: PathRequest) -> BlobAdded:
        """Add a regular file the node can read (its own user's; never inside its data folder);
        with `in_place`, without copying it: the node then serves from the file, verifying each
        block, and the blob goes missing if the file changes. With `expect`, only if the node
        opens that very file: 412 otherwise (it cannot read it, or sees another file there), so
        that the caller uploads its content instead (`PUT /blobs`)."""
        refused = 400 if request.expect is None else 412
        try:
            f, real = await trio.to_thread.run_sync(open_real, request.path)
        except (NotRegularFile, FileReplaced) as exc:
            raise HTTPException(refused, str(exc)) from None
        except OSError as exc:
            raise HTTPException(refused, f"cannot read {request.path}: {exc.strerror}") from None
        with f:
            if request.expect is not None and not request.expect.matches(os.fstat(f.fileno())):
                raise HTTPException(
                    412, f"{request.path} is not the caller's file where the node sees it"
                )
            # Only now: the caller's file at what is a private path here (another container)
            # was answered 412 above, to be uploaded; this node's own file is refused.
            source = _outside_private_dirs(node, real)
            with store_errors():
                if request.in_place:
                    info = await node.blobs.add_in_place(source, opened=f, pin=request.pin)
                else:
                    info = await node.blobs.add_file(f, pin=request.pin)
        if not info.pinned:
            node.blobs.expect_holder(info.hash)
        return BlobAdded(blob=info, ticket=node.blobs.ticket(info))

    @api.get(
        "/blobs/{blob_hash}",
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "The blob's bytes."},
            **_errors(404),
        },
    )
    async def download_blob(blob_hash: BlobHashField) -> StreamingResponse:
        """The blob's content, streamed (Content-Length set); the blob stays in use while it is
        read."""
        with store_errors():
            info = await node.blobs.info(blob_hash)

        async def content() -> AsyncIterator[bytes]:
            async with contextlib.aclosing(node.blobs.read_range(blob_hash)) as chunks:
                async for chunk in chunks:
                    yield chunk

        headers = {"Content-Length": str(info.size), **DOWNLOAD_HEADERS}
        return StreamingResponse(content(), media_type="application/octet-stream", headers=headers)

    @api.get("/blobs/{blob_hash}/ticket", responses=_errors(404))
    async def blob_ticket(blob_hash: BlobHashField) -> BlobAdded:
        with store_errors():
            info = await node.blobs.info(blob_hash)
        return BlobAdded(blob=info, ticket=node.blobs.ticket(info))

    @api.delete("/blobs/{blob_hash}", responses=_errors(404, 409))
    async def remove_blob(blob_hash: BlobHashField, force: bool = False) -> Done:
        with store_errors():
            await node.blobs.remove(blob_hash, force=force)
        return Done()

    @api.post("/blobs/{blob_hash}/pin", responses=_errors(404))
    async def pin_blob(blob_hash: BlobHashField) -> Done:
        with store_errors():
            await node.blobs.keep(blob_hash)
        return Done()

    @api.delete("/blobs/{blob_hash}/pin", responses=_errors(404))
    async def unpin_blob(blob_hash: BlobHashField) -> Done:
        with store_errors():
            await node.blobs.unpin(blob_hash)
        return Done()

    @api.post("/blobs/gc")
    async def collect_garbage() -> GcResult:
        """Remove unpinned, untagged blobs that no live job needs (the node also does this every
        10 min)."""
        return await node.collect_garbage()

    @api.post("/blobs/{blob_hash}/export", responses={**_errors(400, 403, 404, 409), **BODY_ERRORS})
    async def export_blob(blob_hash: BlobHashField, request: ExportRequest) -> BlobInfo:
        """Write a blob to a file of the node's own user (not in its data folder); an existing file
        only with `force`."""
        real_parent = await trio.to_thread.run_sync(os.path.realpath, request.path.parent)
        dest = _outside_private_dirs(node, Path(real_parent) / request.path.name)
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(dest).st_mode
            if not request.force:
                raise HTTPException(
                    409, f"{request.path} exists; export with force to overwrite it"
                )
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise HTTPException(400, f"{request.path} is not a regular file")
        with store_errors():
            return await node.blobs.export(blob_hash, dest)

    @api.post(
        "/blobs/fetch",
        response_class=NdjsonResponse,
        responses={
            200: {
                "model": FetchEvent,
                "description": "NDJSON, one FetchEvent per line: progress, then a last line with "
                "`blob` or `error`.",
            },
            **BODY_ERRORS,
        },
    )
    async def fetch_blob(request: BlobFetchRequest) -> NdjsonResponse:
        """Fetch by blob ticket into the store. A client that goes away stops the fetch (the
        verified blocks stay, so the next fetch resumes)."""
        try:
            ticket = tickets.parse_blob(request.ticket)
        except tickets.TicketError as exc:
            raise HTTPException(422, f"invalid blob ticket: {exc}") from None
        send, receive = trio.open_memory_channel[FetchEvent](16)
        fetching = trio.CancelScope()

        def emit(event: FetchEvent) -> None:
            # Progress is best-effort: a slow reader never slows the fetch.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                send.send_nowait(event)

        async def run() -> None:
            with fetching:
                async with send:
                    try:
                        info = await node.blobs.fetch_ticket(
                            ticket, lambda p: emit(FetchEvent(progress=p))
                        )
                    except (FetchError, StoreError) as exc:
                        final = FetchEvent(error=_failure(exc))
                    else:
                        final = FetchEvent(blob=info)
                    with contextlib.suppress(trio.BrokenResourceError):
                        await send.send(final)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async with receive:
                    async for event in receive:
                        yield event.model_dump_json(exclude_none=True).encode() + b"\n"
            finally:
                fetching.cancel()

        node.background.start_soon(run)
        return NdjsonResponse(lines())

    @api.post("/jobs", responses={**_errors(400), **BODY_ERRORS})
    async def submit_job(request: JobSubmission) -> Job:
        """Submit a job; 413 when the input is over the limit, 400 when a module or blob cannot be
        used."""
        # The node opens no caller-chosen path for a job.
        if request.module is not None or request.artifacts:
            raise HTTPException(
                422,
                "upload the module and artifacts first (PUT /blobs) "
                "and send module_blob and artifact_blobs",
            )
        try:
            return await node.jobs.submit_files(request)
        except SubmissionTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except SubmissionError as exc:
            raise HTTPException(400, str(exc)) from None

    @api.get("/jobs")
    async def list_jobs(
        state: JobState | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[Job]:
        return node.jobs.store.list(state=state, limit=limit)

    @api.get("/jobs/{job_id}", responses=_errors(404))
    async def show_job(job_id: JobId) -> JobView:
        return _job_view(node, _job_or_404(node, job_id))

    @api.post("/jobs/{job_id}/wait", responses=_errors(404))
    async def wait_job(
        job_id: JobId, timeout: Annotated[float, Query(ge=0, le=600)] = 30.0
    ) -> JobView:
        """Long poll: answers when the job is terminal, or with its current state after
        `timeout` s."""
        _job_or_404(node, job_id)
        with trio.move_on_after(timeout):
            await node.jobs.wait(job_id)
        return _job_view(node, _job_or_404(node, job_id))

    @api.post("/jobs/{job_id}/cancel", responses=_errors(404, 409))
    async def cancel_job(job_id: JobId) -> Job:
        _job_or_404(node, job_id)
        try:
            return await node.jobs.cancel(job_id)
        except Refused as exc:
            raise HTTPException(409, f"cannot cancel job {job_id}: {exc.reason}") from None

    @api.delete("/jobs/{job_id}", responses=_errors(404, 409))
    async def remove_job(job_id: JobId, force: bool = False) -> Job:
        """Forget a finished job and release the blobs only it holds to GC; a live job is refused
        (409) unless `force`, which cancels it first."""
        _job_or_404(node, job_id)
        try:
            with store_errors():
                return await node.jobs.remove(job_id, force=force)
        except Refused as exc:
            raise HTTPException(
                409, f"cannot remove job {job_id}: {exc.reason}; cancel it first or use --force"
            ) from None

    @api.post("/jobs/{job_id}/outputs", responses=_errors(404, 409, 502))
    async def get_outputs(job_id: JobId) -> dict[str, BlobInfo]:
        """Bring the job's output artifacts into this node's store (held by the job), from whoever
        has them;
        `GET /blobs/{hash}` then downloads each. A failed job has those of its last attempt (a
        command's partial outputs, stdout and stderr)."""
        job = _job_or_404(node, job_id)
        if job.state not in (JobState.SUCCEEDED, JobState.FAILED):
            raise HTTPException(
                409, f"job {job_id} is {job.state.value}; only a finished job has outputs"
            )
        outputs: dict[str, BlobInfo] = {}
        with store_errors():
            for name, ref in job.outputs.items():
                try:
                    outputs[name] = await node.jobs.fetch_output(job, name, ref)
                except FetchError as exc:
                    raise HTTPException(502, str(exc)) from None
        return outputs

    @api.get("/members")
    async def list_members() -> list[MemberStatus]:
        return node.members()

    @api.delete("/members/{member_id}", responses=_errors(404))
    async def remove_member(member_id: NodeIdField) -> Done:
        """Forget a member and refuse it from then on (router and join handshake; persisted)."""
        if not node.remove_member(member_id):
            raise HTTPException(404, f"no member {member_id} on this node")
        return Done()

    app.include_router(api)
    app.include_router(log_routes(node, lambda job_id: _job_or_404(node, job_id)))
    app.include_router(worker_routes(node))
    app.include_router(job_routes(node))
    app.include_router(dashboard_router(node, sessions))
    app.include_router(metrics_router(node))
    return app


def _job_or_404(node: Node, job_id: str) -> Job:
    job = node.jobs.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id} on this node")
    return job


def _job_view(node: Node, job: Job) -> JobView:
    return JobView(**dict(job), waiting_for=node.workers.waiting_for(job))


def _outside_private_dirs(node: Node, path: Path) -> Path:
    """`path` (symlinks resolved), unless it is in the data folder or the blob store: those hold
    the node's key, secrets and token, which a path-based add or export must never reach."""
    for private in (node.settings.data_dir, node.settings.blobs_dir):
        if path.is_relative_to(os.path.realpath(private)):
            raise HTTPException(
                403, f"refused: {path} is inside the node's data folder or blob store"
            )
    return path


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Map store errors to HTTP answers whose detail is the store's own human message."""
    try:
        yield
    except BlobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except BlobInUse as exc:
        raise HTTPException(409, str(exc)) from None
    except (StoreError, OSError, ValueError) as exc:  # ValueError: not a blob hash
        raise HTTPException(400, str(exc)) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """A 422 as one line naming the first bad part (the CLI says the same of a body it checks)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": invalid_request(exc.errors())}, status_code=422)


def _full_disk_in(exc: BaseException) -> bool:
    """Whether a full disk (or quota) caused `exc`, however the layers between rewrapped it (an
    OSError made a StoreError made a 400 keeps it as cause or context)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, StoreFull):
            return True
        if disk_full(cause):
            return True
        if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _failure(exc: Exception) -> str:
    """The one line that tells a person why: a full disk says so first, whatever the route."""
    detail = _one_line(str(exc.detail if isinstance(exc, StarletteHTTPException) else exc))
    return f"the node's disk is full: {detail}" if _full_disk_in(exc) else detail


def _disk_full_answer(exc: Exception) -> JSONResponse:
    """507, not 400: the request was fine, the node cannot store it (the CLI exits 1, not 2)."""
    return JSONResponse({"detail": _failure(exc)}, status_code=HTTPStatus.INSUFFICIENT_STORAGE)


async def _disk_full(_request: Request, exc: Exception) -> Response:
    """An OSError, store or database error no route answered: 507 when the disk is full; anything
    else stays the server error it is."""
    if not _full_disk_in(exc):
        raise exc
    return _disk_full_answer(exc)


async def _refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    if exc.status_code >= 400 and _full_disk_in(exc):
        return _disk_full_answer(exc)
    return JSONResponse(
        {"detail": _one_line(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers
    )


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the bearer scheme, so /docs' Authorize button sends the token."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["security"] = [] if path in PUBLIC_PATHS else [{"bearer": []}]
                if path in PUBLIC_PATHS:
                    operation["responses"].pop("401", None)
        app.openapi_schema = schema
    return app.openapi_schema
