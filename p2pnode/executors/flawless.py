"""Client of a local Flawless server (1.0.0-beta.x) and the executor that runs jobs on it.

The server is closed source and can't run here, so this follows, call for call, the HTTP API the
Rust ``flawless-utils`` crate speaks:

- ``GET /version``: readiness probe;
- ``POST /api/module/deploy``: multipart, one part ``module`` of type ``application/wasm``;
  answers ``{"ok": {"name", "version"}}``;
- ``POST /api/workflow/start``: ``{"module", "version", "workflow", "input"}`` where ``input`` is
  the JSON-encoded input *as a string*; answers ``{"ok": {"id", "response"}}`` once the workflow
  responds, ``response`` being a JSON-encoded string or null;
- ``POST /api/workflow/send-msg/<id>``: ``{"type", "data"}`` (data JSON-encoded); answers ``"ok"``;
- an optional ``Authorization: Bearer <token>`` header on every call.

Anything else the server says (error bodies, other statuses, non-JSON, other shapes) and any
transport failure becomes a ``FlawlessError`` whose message is the reason.
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
import trio
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from p2pnode.executors.base import (
    DEFAULT_MAXIMA,
    ExecutionRequest,
    ExecutionResult,
    ExecutorKind,
    JobMaxima,
)
from p2pnode.ids import BlobHash

DEFAULT_URL = "http://localhost:27288"
PROBE_TIMEOUT = 2.0
CALL_TIMEOUT = 60.0
"""For deploy and send-msg; a start waits for the workflow's response and is bounded by the job."""
_SNIPPET = 200

_Answer = TypeVar("_Answer", bound=BaseModel)


class FlawlessError(Exception):
    """A Flawless call failed; the message says why."""


class FlawlessUnavailable(FlawlessError):
    """Nothing usable answers at the server address."""

    def __init__(self, base_url: str, cause: str) -> None:
        super().__init__(f"no Flawless server answering at {base_url}: {cause}")
        self.cause = cause


class DeployedModule(BaseModel):
    """A module as the server knows it; starting a workflow names both parts."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int | str


class StartedWorkflow(BaseModel):
    id: str
    response: str | None = None
    """The workflow's response, JSON-encoded; None if it sent none."""


class _DeployAnswer(BaseModel):
    ok: DeployedModule


class _StartAnswer(BaseModel):
    ok: StartedWorkflow


class _SendMsgAnswer(RootModel[Literal["ok"]]):
    pass


class _StartBody(BaseModel):
    module: str
    version: int | str
    workflow: str
    input: str


class _MessageBody(BaseModel):
    type: str
    data: str


class FlawlessClient:
    """HTTP client for one Flawless server; remembers what it deployed, by module hash."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http if http is not None else httpx.AsyncClient()
        self._owns_http = http is None
        self._deployed: dict[str, DeployedModule] = {}
        self._deploy_lock = trio.Lock()

    async def __aenter__(self) -> FlawlessClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def version(self, timeout: float = PROBE_TIMEOUT) -> str:
        """One ``GET /version`` probe."""
        response = await self._request("version probe", "GET", "/version", timeout=timeout)
        return response.text.strip()

    async def wait_ready(self, timeout: float = 10.0) -> str:
        """Probe ``/version`` with exponential back-off until it answers; return the version.

        Raises ``FlawlessUnavailable`` with the last failure once ``timeout`` seconds have passed.
        """
        cause = f"no answer within {timeout:g} s"
        delay = 0.01
        with trio.move_on_after(timeout):
            while True:
                try:
                    return await self.version(timeout=min(PROBE_TIMEOUT, timeout))
                except FlawlessUnavailable as exc:
                    cause = exc.cause
                except FlawlessError as exc:
                    cause = str(exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise FlawlessUnavailable(self.base_url, cause)

    async def deploy(self, module_hash: BlobHash, module: bytes) -> DeployedModule:
        """Deploy a module once; later calls with the same hash answer from the cache."""
        async with self._deploy_lock:
            if (known := self._deployed.get(module_hash)) is not None:
                return known
            answer = await self._call(
                "deploy",
                _DeployAnswer,
                "POST",
                "/api/module/deploy",
                files={"module": (None, module, "application/wasm")},
                timeout=CALL_TIMEOUT,
            )
            self._deployed[module_hash] = answer.ok
            return answer.ok

    def forget(self, module_hash: BlobHash) -> None:
        """Drop a cached deployment, so the next ``deploy`` really deploys (server restarted?)."""
        self._deployed.pop(module_hash, None)

    async def start(self, module: DeployedModule, workflow: str, input: Any) -> StartedWorkflow:
        """Start a workflow and wait for its response; bound the wait with a cancel scope."""
        body = _StartBody(
            module=module.name, version=module.version, workflow=workflow, input=json.dumps(input)
        )
        answer = await self._call(
            f"start of workflow {workflow!r}",
            _StartAnswer,
            "POST",
            "/api/workflow/start",
            json=body.model_dump(),
            timeout=None,
        )
        return answer.ok

    async def send_msg(self, workflow_id: str, type: str, data: Any) -> None:
        """Send a message of ``type`` to a running workflow."""
        await self._call(
            "send-msg",
            _SendMsgAnswer,
            "POST",
            f"/api/workflow/send-msg/{quote(workflow_id, safe='')}",
            json=_MessageBody(type=type, data=json.dumps(data)).model_dump(),
            timeout=CALL_TIMEOUT,
        )

    async def _call(
        self, what: str, answer: type[_Answer], method: str, path: str, **kwargs: Any
    ) -> _Answer:
        response = await self._request(what, method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            raise FlawlessError(
                f"{what}: Flawless answered non-JSON: {_snippet(response.content)!r}"
            ) from None
        if isinstance(data, dict) and "error" in data:
            raise FlawlessError(f"{what}: Flawless reported an error: {_text(data['error'])}")
        try:
            return answer.model_validate(data)
        except ValidationError:
            raise FlawlessError(
                f"{what}: unexpected answer from Flawless: {_snippet(response.content)}"
            ) from None

    async def _request(self, what: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(
                method, self.base_url + path, headers=self._headers, **kwargs
            )
        except httpx.TransportError as exc:
            raise FlawlessUnavailable(self.base_url, _describe(exc)) from None
        if response.status_code != 200:
            raise FlawlessError(
                f"{what}: HTTP {response.status_code} from Flawless: {_error_text(response)}"
            )
        return response


class FlawlessExecutor:
    """Runs jobs on the local Flawless server: deploy (once per module hash), then start.

    Of the node's maxima only time applies: memory and fuel are the server's to govern, and a
    Flawless workflow writes no output files here.
    """

    kind: ExecutorKind = "flawless"

    def __init__(self, client: FlawlessClient, *, maxima: JobMaxima = DEFAULT_MAXIMA) -> None:
        self._client = client
        self.maxima = maxima

    def has_module(self, module_hash: BlobHash) -> bool:
        """The server gets the module's bytes with every run."""
        return False

    async def available(self) -> bool:
        try:
            await self._client.version()
        except FlawlessError:
            return False
        return True

    async def run(self, req: ExecutionRequest) -> ExecutionResult:
        limits, notes = self.maxima.cap(req.limits)
        result = await self._bounded(req.model_copy(update={"limits": limits}))
        return result.noted([notes["time_s"]] if "time_s" in notes else [])

    async def _bounded(self, req: ExecutionRequest) -> ExecutionResult:
        if req.workflow is None:
            return ExecutionResult.failure("a Flawless job must name its workflow")
        with trio.move_on_after(req.limits.time_s):
            try:
                return await self._run(req, req.workflow)
            except FlawlessError as exc:
                return ExecutionResult.failure(str(exc))
            except OSError as exc:
                return ExecutionResult.failure(
                    f"cannot read module {req.module_path}: {exc.strerror or exc}"
                )
            except Exception as exc:  # a bug must not take the node down
                return ExecutionResult.failure(f"flawless executor error: {exc!r}")
        return ExecutionResult.failure(
            f"timed out after {req.limits.time_s:g} s waiting for Flawless"
        )

    async def _run(self, req: ExecutionRequest, workflow: str) -> ExecutionResult:
        module = await self._client.deploy(
            req.module_hash, await trio.Path(req.module_path).read_bytes()
        )
        try:
            started = await self._client.start(module, workflow, req.input)
        except FlawlessUnavailable:
            raise
        except FlawlessError:
            self._client.forget(req.module_hash)
            raise
        logs = f"flawless workflow {started.id}"
        if started.response is None:
            return ExecutionResult(ok=True, result=None, logs=logs)
        try:
            result = json.loads(started.response)
        except ValueError:
            return ExecutionResult.failure(
                f"workflow response is not JSON: {started.response[:_SNIPPET]!r}", logs
            )
        return ExecutionResult(ok=True, result=result, logs=logs)


def _describe(exc: httpx.TransportError) -> str:
    """A short cause such as "connection refused", dug out of httpx's wrapped exceptions."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return os.strerror(current.errno).lower()
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack += [current.__cause__, current.__context__]
    return str(exc) or type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return _snippet(response.content) or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return _text(data["error"])
    return _snippet(response.content)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _snippet(body: bytes) -> str:
    text = body[:_SNIPPET].decode("utf-8", errors="replace")
    return text + "..." if len(body) > _SNIPPET else text
