"""The web dashboard: server-rendered pages of what the JSON API serves, for a person's browser.

Fragments read the same node calls as the JSON routes, so new fields show up here too. htmx
loads them (`/ui/...`) and polls the live ones every second or two; htmx, the script and the
stylesheet are served from the package, so the dashboard works offline. Everything a member
controls (job names, arguments, labels, logs, errors, outputs) is escaped by the templates'
autoescaping.

Access (auth.py): a browser logs in at `/login`, with a one-time code from `p2pnode dashboard`
or by pasting the API token; the page's script receives a session secret, keeps it in
`localStorage` and sends it as a header with every htmx request. A navigation cannot carry that
header, so the pages a browser opens (`/`, `/ui/jobs/{id}`) are shells holding nothing their URL
does not say, and all data comes in the fragments; a download is a one-time link the script mints
with the header, which the browser follows and saves to disk as it streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import shlex
import time
from importlib.resources import files
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import BaseModel, ConfigDict, Field, model_validator

from p2pnode.api.auth import (
    DOWNLOAD_PARAM,
    DOWNLOAD_TTL_S,
    LOGIN_CODE_TTL_S,
    LOGIN_PATH,
    MAX_LOGIN_BODY,
    SESSION_TTL_S,
    Session,
    Sessions,
    session_cookie,
)
from p2pnode.api.schemas import LoginCode
from p2pnode.blobs.store import BlobNotFound
from p2pnode.ids import BlobHash, BlobHashField
from p2pnode.jobs.model import Job, JobId
from p2pnode.jobs.store import Refused
from p2pnode.node import Node

JOBS_LISTED = 50
LOG_TAIL_BYTES = 64 << 10
"""How much of a job's stdout/stderr a page shows (the end); the whole is a download away."""
STREAMS = ("stdout", "stderr")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Only the node's own scripts run on its pages, nobody frames them, nothing is cached, and nothing
leaves in a Referer."""
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
STATIC = {
    path.name: (path.read_bytes(), STATIC_TYPES[PurePosixPath(path.name).suffix])
    for path in files("p2pnode.api").joinpath("static").iterdir()
    if PurePosixPath(path.name).suffix in STATIC_TYPES
}
ASSET_URLS = {
    name: f"/static/{name}?v={hashlib.sha256(content).hexdigest()[:16]}"
    for name, (content, _) in STATIC.items()
}
"""Each static file's URL names its content, so a browser never runs a cached script of another
version (assets are cached for an hour)."""


class LoginRequest(BaseModel):
    """What the login page's script sends: the pasted API token, or the one-time code of a link."""

    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(None, max_length=MAX_LOGIN_BODY)
    code: str | None = Field(None, max_length=MAX_LOGIN_BODY)

    @model_validator(mode="after")
    def _one_credential(self) -> LoginRequest:
        if (self.token is None) == (self.code is None):
            raise ValueError("send either token or code")
        return self


class LoginSession(BaseModel):
    """The session secret, for the login page's script to keep in `localStorage`."""

    session: str
    expires_in: float


class DownloadLink(BaseModel):
    """A link the browser follows to save a blob: good once, within `expires_in` seconds."""

    url: str
    expires_in: float


class BlobStoreSummary(BaseModel):
    count: int = Field(ge=0)
    bytes: int = Field(ge=0)
    pinned: int = Field(ge=0)


def _ago(timestamp: float, now: float) -> str:
    if not timestamp:
        return "never"
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def _what(job: Job) -> str:
    """A job's name as a person knows it: its workflow, or the command line it runs."""
    spec = job.spec
    text = spec.workflow or (shlex.join(spec.command.argv) if spec.command else "-")
    return text if len(text) <= 200 else text[:199] + "…"


TEMPLATES = Environment(
    loader=PackageLoader("p2pnode.api", "templates"),
    autoescape=True,  # every template: what members send is text, never markup
    undefined=StrictUndefined,
)
TEMPLATES.filters.update(ago=_ago, what=_what, basename=lambda name: PurePosixPath(name).name)
TEMPLATES.globals["asset"] = ASSET_URLS.__getitem__


def dashboard_router(node: Node, sessions: Sessions) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def page(template: str, **context: Any) -> HTMLResponse:
        html = TEMPLATES.get_template(template).render(now=time.time(), **context)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    async def job_context(job_id: str) -> dict[str, Any]:
        job = node.jobs.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} on this node")
        local = {ref.hash for ref in job.outputs.values() if node.blobs.has(ref.hash)}
        streams = []
        if job.state.terminal:
            for name in STREAMS:
                ref = job.outputs.get(name)
                if ref is not None and ref.hash in local:
                    streams.append((name, await _tail(node, ref.hash, ref.size)))
        return {
            "job": job,
            # Polled until it can no longer change: ended, and its outputs here to download.
            "settled": job.state.terminal
            and all(ref.hash in local for ref in job.outputs.values()),
            "waiting_for": node.workers.waiting_for(job),
            "result": json.dumps(job.result, indent=2),
            "local": local,
            "streams": streams,
        }

    @router.get("/")
    async def index() -> HTMLResponse:
        return page("index.html")

    @router.get("/ui/jobs/{job_id}")
    async def job(job_id: JobId) -> HTMLResponse:
        return page("job.html", job_id=job_id)

    @router.get(LOGIN_PATH)
    async def login_page() -> HTMLResponse:
        """The login form; its script also redeems the code of a `p2pnode dashboard` link."""
        return page("login.html")

    @router.get("/ui/node")
    async def this_node() -> HTMLResponse:
        return page(
            "_node.html",
            node_id=node.id,
            cluster_id=node.status().cluster_id,
            ticket=node.join_ticket(),
        )

    @router.get("/ui/cluster")
    async def cluster() -> HTMLResponse:
        return page("_cluster.html", members=node.members(), workers=node.workers.workers())

    @router.get("/ui/blobs")
    async def blobs() -> HTMLResponse:
        listed = await node.blobs.list_blobs()
        summary = BlobStoreSummary(
            count=len(listed),
            bytes=sum(b.size for b in listed),
            pinned=sum(b.pinned for b in listed),
        )
        return page("_blobs.html", blobs=summary)

    @router.get("/ui/jobs")
    async def jobs() -> HTMLResponse:
        return page("_jobs.html", jobs=node.jobs.store.list(limit=JOBS_LISTED))

    @router.get("/ui/jobs/{job_id}/live")
    async def job_live(job_id: JobId) -> HTMLResponse:
        return page("_job.html", **await job_context(job_id))

    @router.post("/ui/jobs/{job_id}/cancel")
    async def cancel(job_id: JobId) -> HTMLResponse:
        if node.jobs.store.get(job_id) is None:
            raise HTTPException(404, f"no job {job_id} on this node")
        try:
            await node.jobs.cancel(job_id)
        except Refused as exc:
            raise HTTPException(409, f"cannot cancel job {job_id}: {exc.reason}") from None
        return page("_job.html", **await job_context(job_id))

    @router.post("/ui/blobs/{blob_hash}/download")
    async def download_link(
        blob_hash: BlobHashField, request: Request, response: Response
    ) -> DownloadLink:
        """A one-time link to `GET /blobs/{hash}`, for the browser to follow and save (it cannot
        send the session header, and the script would hold the whole blob in memory)."""
        if not node.blobs.has(blob_hash):
            raise HTTPException(404, f"blob {blob_hash} is not on this node")
        path = f"/blobs/{blob_hash}"
        token = sessions.new_download(path, getattr(request.state, "session", None))
        response.headers["Cache-Control"] = "no-store"
        return DownloadLink(url=f"{path}?{DOWNLOAD_PARAM}={token}", expires_in=DOWNLOAD_TTL_S)

    @router.post("/ui/logout", status_code=204)
    async def logout(request: Request, response: Response) -> None:
        """Ends the session here; the script forgets its secret."""
        session: Session | None = getattr(request.state, "session", None)
        if session is not None:
            sessions.close(session.secret)
        _forget_cookie(request, response)

    @router.post(LOGIN_PATH)
    async def login(body: LoginRequest, request: Request, response: Response) -> LoginSession:
        """A session for a one-time code or the pasted token, answered to the page's script
        (JSON, never HTML or a URL), which keeps it in `localStorage`."""
        if body.code is not None:
            session = sessions.redeem(body.code)
            if session is None:
                raise HTTPException(
                    400,
                    "this login link was used already or has expired: run p2pnode dashboard again",
                )
        elif body.token is not None and hmac.compare_digest(
            body.token.strip().encode(), node.api_token.encode()
        ):
            session = sessions.open()
        else:
            raise HTTPException(401, "wrong token")
        response.headers["Cache-Control"] = "no-store"
        _forget_cookie(request, response)
        return LoginSession(session=session.secret, expires_in=SESSION_TTL_S)

    @router.post("/login-codes")
    async def login_code() -> LoginCode:
        """A one-time login code for the dashboard (the token holder's way to hand a browser a
        session without the token appearing in a URL)."""
        return LoginCode(code=sessions.new_code(), expires_in=LOGIN_CODE_TTL_S)

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, f"no static file {name}")
        content, media_type = STATIC[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    return router


def _forget_cookie(request: Request, response: Response) -> None:
    """Deletes the session cookie a browser may keep from before sessions moved to a header (it
    grants nothing; the guard let the request through, so its Host names this API's own port)."""
    port = request.url.port
    assert port is not None
    response.delete_cookie(session_cookie(port), path="/", httponly=True, samesite="strict")


async def _tail(node: Node, blob_hash: BlobHash, size: int) -> str:
    """The end of a text output, for reading on the page."""
    offset = max(0, size - LOG_TAIL_BYTES)
    chunks = []
    try:
        async with contextlib.aclosing(node.blobs.read_range(blob_hash, offset)) as read:
            async for chunk in read:
                chunks.append(chunk)
    except BlobNotFound:
        return "(no longer on this node)"
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return f"(last {LOG_TAIL_BYTES >> 10} KiB of {size} bytes)\n{text}" if offset else text
