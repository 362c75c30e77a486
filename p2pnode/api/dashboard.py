"""The web dashboard: server-rendered pages of what the JSON API serves, for a person's browser.

Pages read the same node calls as the JSON routes, so new fields show up here too. Live parts are
htmx fragments polled every second or two (`/ui/...`); htmx and the stylesheet are served from the
package, so the dashboard works offline. Everything a member controls (job names, arguments,
labels, logs, errors, outputs) is escaped by the templates' autoescaping.

Access (auth.py): a browser logs in at `/login`, with a one-time code from `p2pnode dashboard`
or by pasting the API token, and gets a session cookie; the dashboard's buttons POST under `/ui/`
with the session's CSRF token, which htmx sends as a header.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import shlex
import time
from importlib.resources import files
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import BaseModel, Field

from p2pnode.api.auth import (
    LOGIN_CODE_TTL_S,
    LOGIN_PATH,
    SESSION_TTL_S,
    Session,
    Sessions,
    session_cookie,
)
from p2pnode.api.schemas import LoginCode
from p2pnode.blobs.store import BlobNotFound
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
"""Only the node's own scripts run on its pages, nobody frames them, and a login link's code never
leaves in a Referer."""
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}


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


def dashboard_router(node: Node, sessions: Sessions) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    static = {
        path.name: (path.read_bytes(), STATIC_TYPES[PurePosixPath(path.name).suffix])
        for path in files("p2pnode.api").joinpath("static").iterdir()
        if PurePosixPath(path.name).suffix in STATIC_TYPES
    }

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        html = TEMPLATES.get_template(template).render(
            node_id=node.id, session=session, now=time.time(), **context
        )
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def cluster_context() -> dict[str, Any]:
        return {"members": node.members(), "workers": node.workers.workers()}

    async def blobs_context() -> dict[str, Any]:
        blobs = await node.blobs.list_blobs()
        summary = BlobStoreSummary(
            count=len(blobs), bytes=sum(b.size for b in blobs), pinned=sum(b.pinned for b in blobs)
        )
        return {"blobs": summary}

    def jobs_context() -> dict[str, Any]:
        return {"jobs": node.jobs.store.list(limit=JOBS_LISTED)}

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
            "waiting_for": node.workers.waiting_for(job),
            "result": json.dumps(job.result, indent=2),
            "local": local,
            "streams": streams,
        }

    @router.get("/")
    async def index(request: Request) -> HTMLResponse:
        return page(
            request,
            "index.html",
            cluster_id=node.status().cluster_id,
            ticket=node.join_ticket(),
            **cluster_context(),
            **await blobs_context(),
            **jobs_context(),
        )

    @router.get("/ui/cluster")
    async def cluster(request: Request) -> HTMLResponse:
        return page(request, "_cluster.html", **cluster_context())

    @router.get("/ui/blobs")
    async def blobs(request: Request) -> HTMLResponse:
        return page(request, "_blobs.html", **await blobs_context())

    @router.get("/ui/jobs")
    async def jobs(request: Request) -> HTMLResponse:
        return page(request, "_jobs.html", **jobs_context())

    @router.get("/ui/jobs/{job_id}")
    async def job(request: Request, job_id: JobId) -> HTMLResponse:
        return page(request, "job.html", **await job_context(job_id))

    @router.get("/ui/jobs/{job_id}/live")
    async def job_live(request: Request, job_id: JobId) -> HTMLResponse:
        return page(request, "_job.html", **await job_context(job_id))

    @router.post("/ui/jobs/{job_id}/cancel")
    async def cancel(request: Request, job_id: JobId) -> HTMLResponse:
        if node.jobs.store.get(job_id) is None:
            raise HTTPException(404, f"no job {job_id} on this node")
        try:
            await node.jobs.cancel(job_id)
        except Refused as exc:
            raise HTTPException(409, f"cannot cancel job {job_id}: {exc.reason}") from None
        return page(request, "_job.html", **await job_context(job_id))

    @router.post("/ui/logout")
    async def logout(request: Request) -> Response:
        session: Session | None = getattr(request.state, "session", None)
        if session is not None:
            sessions.close(session.id)
        response = Response(headers={"HX-Redirect": LOGIN_PATH})
        response.delete_cookie(_cookie_name(request), path="/", httponly=True, samesite="strict")
        return response

    @router.get(LOGIN_PATH)
    async def login_page(request: Request, code: str | None = None) -> Response:
        """The login form; with `code` (a one-time link from `p2pnode dashboard`) it logs in."""
        if code is None:
            return page(request, "login.html", error=None)
        session = sessions.redeem(code)
        if session is None:
            error = "This login link was used already or has expired: run p2pnode dashboard again."
            return page(request, "login.html", 400, error=error)
        return _logged_in(request, session)

    @router.post(LOGIN_PATH)
    async def login(request: Request) -> Response:
        """The pasted token (the guard bounds the form's size and type)."""
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        given = (form.get("token") or [""])[0].strip().encode()
        if not hmac.compare_digest(given, node.api_token.encode()):
            return page(request, "login.html", 401, error="Wrong token.")
        return _logged_in(request, sessions.open())

    @router.post("/login-codes")
    async def login_code() -> LoginCode:
        """A one-time login code for the dashboard (the token holder's way to hand a browser a
        session without the token appearing in a URL)."""
        return LoginCode(code=sessions.new_code(), expires_in=LOGIN_CODE_TTL_S)

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, f"no static file {name}")
        content, media_type = static[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    return router


def _cookie_name(request: Request) -> str:
    """The guard let the request through, so its Host names this API's own port."""
    port = request.url.port
    assert port is not None
    return session_cookie(port)


def _logged_in(request: Request, session: Session) -> Response:
    response = RedirectResponse("/", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        _cookie_name(request),
        session.id,
        max_age=int(SESSION_TTL_S),
        path="/",
        httponly=True,
        samesite="strict",
    )
    return response


async def _tail(node: Node, blob_hash: str, size: int) -> str:
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
