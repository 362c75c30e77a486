"""A fake Flawless server for tests: a real HTTP server (Starlette on hypercorn, trio) speaking the
documented API of Flawless 1.0.0-beta.x, with knobs to misbehave, that records every request.

Use ``async with serve_fake_flawless() as (url, state): ...``, or the ``fake_flawless`` fixture
(import it into a test module: ``from tests.fake_flawless import fake_flawless``).

To test a server that appears later, make the socket first with ``reserved_socket()``: it is
bound (so the URL is known) but not listening (so connections are refused) until
``serve_fake_flawless(sock=...)`` starts serving on it.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import hypercorn
import hypercorn.trio
import pytest
import trio
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

Endpoint = Literal["version", "deploy", "start", "send_msg"]
Misbehaviour = Literal["error_body", "http_500", "garbage", "wrong_shape", "hang"]
VERSION = "1.0.0-beta.3"


class RawResponse(str):
    """A workflow result sent verbatim as ``response``, not JSON-encoded (a broken workflow)."""


class RecordedPart(BaseModel):
    name: str | None
    filename: str | None
    content_type: str
    data: bytes


class RecordedRequest(BaseModel):
    endpoint: Endpoint
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    parts: list[RecordedPart] = []

    def json_body(self) -> Any:
        return json.loads(self.body)


def _echo(value: Any) -> Any:
    return value


def _silent(_value: Any) -> Any:
    return None


class FakeFlawlessState:
    """What the fake knows and how it should behave; tests read and change it freely.

    ``workflows`` maps a workflow name to a function of the decoded input whose value becomes the
    response; returning None sends a null response (no response), a ``RawResponse`` is sent as
    is. Built in: "echo", "silent".
    """

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.misbehave: dict[Endpoint, Misbehaviour] = {}
        self.workflows: dict[str, Callable[[Any], Any]] = {"echo": _echo, "silent": _silent}
        self.requests: list[RecordedRequest] = []
        self.modules: dict[str, int] = {}
        """Deployed module name -> latest version."""
        self.instances: set[str] = set()
        self.messages: list[tuple[str, str, str]] = []
        """(workflow id, type, data as sent)"""
        self.release = trio.Event()
        """Hanging handlers wait for this; set when the server stops."""

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]


def reserved_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port and not listening yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_fake_flawless(
    state: FakeFlawlessState | None = None, *, sock: socket.socket | None = None
) -> AsyncIterator[tuple[str, FakeFlawlessState]]:
    """Serve the fake until the block exits; yields its base URL and its state."""
    state = state if state is not None else FakeFlawlessState()
    sock = sock if sock is not None else reserved_socket()
    host, port = sock.getsockname()[:2]
    config = hypercorn.Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = None
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(hypercorn.trio.serve, _app(state), config, shutdown_trigger=shutdown.wait)
        )
        try:
            yield f"http://{host}:{port}", state
        finally:
            state.release.set()
            shutdown.set()


@pytest.fixture
async def fake_flawless() -> AsyncIterator[tuple[str, FakeFlawlessState]]:
    async with serve_fake_flawless() as served:
        yield served


def _app(state: FakeFlawlessState) -> Starlette:
    async def version(_request: Request, _body: bytes) -> Response:
        return PlainTextResponse(VERSION)

    async def deploy(request: Request, body: bytes) -> Response:
        parts = _multipart(request.headers.get("content-type", ""), body)
        module = next((p for p in parts if p.name == "module"), None)
        if module is None:
            return JSONResponse({"error": "missing multipart part 'module'"})
        name = "module-" + hashlib.sha256(module.data).hexdigest()[:12]
        state.modules[name] = state.modules.get(name, 0) + 1
        return JSONResponse({"ok": {"name": name, "version": state.modules[name]}})

    async def start(_request: Request, body: bytes) -> Response:
        try:
            args = json.loads(body)
            module, version, workflow, raw_input = (
                args["module"],
                args["version"],
                args["workflow"],
                args["input"],
            )
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "malformed start request"})
        if not isinstance(version, int):
            return JSONResponse({"error": "version must be the number deploy answered"})
        if not isinstance(raw_input, str):
            return JSONResponse({"error": "input must be a JSON-encoded string"})
        if state.modules.get(module, 0) < version:
            return JSONResponse({"error": f"module {module} version {version} not deployed"})
        if workflow not in state.workflows:
            return JSONResponse({"error": f"workflow {workflow} not found"})
        result = state.workflows[workflow](json.loads(raw_input))
        workflow_id = f"wkf_{len(state.instances) + 1:08d}"
        state.instances.add(workflow_id)
        if isinstance(result, RawResponse) or result is None:
            response = result
        else:
            response = json.dumps(result)
        return JSONResponse({"ok": {"id": workflow_id, "response": response}})

    async def send_msg(request: Request, body: bytes) -> Response:
        workflow_id = request.path_params["id"]
        args = json.loads(body)
        if workflow_id not in state.instances:
            return JSONResponse({"error": f"workflow {workflow_id} not found"})
        state.messages.append((workflow_id, args["type"], args["data"]))
        return JSONResponse("ok")

    handlers = {"version": version, "deploy": deploy, "start": start, "send_msg": send_msg}

    def route(path: str, method: str, endpoint: Endpoint) -> Route:
        async def handle(request: Request) -> Response:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            state.requests.append(
                RecordedRequest(
                    endpoint=endpoint,
                    method=request.method,
                    path=request.url.path,
                    headers=headers,
                    body=body,
                    parts=_multipart(headers.get("content-type", ""), body),
                )
            )
            if state.token is not None and headers.get("authorization") != f"Bearer {state.token}":
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            match state.misbehave.get(endpoint):
                case "error_body":
                    return JSONResponse({"error": f"fake {endpoint} failure"})
                case "http_500":
                    return PlainTextResponse("internal server error", status_code=500)
                case "garbage":
                    return PlainTextResponse("<html>definitely not json")
                case "wrong_shape":
                    return JSONResponse({"ok": {"unexpected": True}})
                case "hang":
                    await state.release.wait()
                    return PlainTextResponse("released", status_code=503)
            return await handlers[endpoint](request, body)

        return Route(path, handle, methods=[method])

    return Starlette(
        routes=[
            route("/version", "GET", "version"),
            route("/api/module/deploy", "POST", "deploy"),
            route("/api/workflow/start", "POST", "start"),
            route("/api/workflow/send-msg/{id}", "POST", "send_msg"),
        ]
    )


def _multipart(content_type: str, body: bytes) -> list[RecordedPart]:
    """Parse multipart/form-data with the stdlib (Starlette needs python-multipart for forms)."""
    if not content_type.startswith("multipart/"):
        return []
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    parts = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        payload = part.get_payload(decode=True)
        parts.append(
            RecordedPart(
                name=part.get_param("name", header="content-disposition"),
                filename=part.get_filename(),
                content_type=part.get_content_type(),
                data=payload if isinstance(payload, bytes) else b"",
            )
        )
    return parts
