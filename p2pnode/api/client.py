"""The CLI's side of the local API: a thin typed client that turns every failure into one clear line."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

log = logging.getLogger(__name__)

BAD_INPUT_STATUS = frozenset({400, 413, 422})
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class ApiError(Exception):
    """The node is not reachable, or refused the request; the message is for a person.

    `exit_code` is 2 when the request itself was wrong (the node answered 400, 413 or 422, or the
    API URL is malformed), 1 otherwise.
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def normalize_url(url: str) -> str:
    """Accept `127.0.0.1:3020` as well as `http://127.0.0.1:3020`: people type it both ways."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = normalize_url(base_url)
        try:
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        except httpx.InvalidURL:
            raise self._bad_url() from None

    def request(self, method: str, path: str, model: type[T], **kwargs: Any) -> T:
        with self._errors():
            started = time.monotonic()
            response = self._http.request(method, path, **kwargs)
            log.info("%s %s: HTTP %d in %.0f ms", method, response.url, response.status_code, (time.monotonic() - started) * 1e3)
        self._raise_for_status(response)
        return self._parse(response.content, model)

    def stream(self, method: str, path: str, model: type[T], **kwargs: Any) -> Iterator[T]:
        """Iterate an NDJSON response line by line, as the node sends it."""
        with self._errors(), self._http.stream(method, path, timeout=None, **kwargs) as response:
            log.info("%s %s: HTTP %d, streaming", method, response.url, response.status_code)
            if response.status_code >= 400:
                response.read()
                self._raise_for_status(response)
            for line in response.iter_lines():
                if line:
                    yield self._parse(line, model)

    def reachable(self) -> bool:
        try:
            return self._http.get("/health", timeout=2.0).status_code == 200
        except (httpx.HTTPError, httpx.InvalidURL):
            return False

    def delete(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("DELETE", path, model, **kwargs)

    def get(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("GET", path, model, **kwargs)

    def post(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("POST", path, model, **kwargs)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise ApiError(f"no p2pnode answering at {self.base_url} (start one with `p2pnode start`, or pass --api)") from None
        except httpx.TimeoutException:
            raise ApiError(f"the node at {self.base_url} did not answer in time") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            raise self._bad_url() from None
        except httpx.HTTPError as exc:  # the other end speaks something, but not the HTTP we expect
            raise ApiError(f"the server at {self.base_url} broke off the exchange ({exc or type(exc).__name__}); is it a p2pnode?") from None

    def _bad_url(self) -> ApiError:
        return ApiError(f"--api {self.base_url} is not an API URL such as http://127.0.0.1:3020", EXIT_BAD_INPUT)

    def _parse(self, content: bytes, model: type[T]) -> T:
        try:
            return model.model_validate_json(content)
        except ValidationError:
            raise ApiError(f"the server at {self.base_url} answered {_describe_body(content)}, not a p2pnode reply; is it a p2pnode?") from None

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        code = EXIT_BAD_INPUT if response.status_code in BAD_INPUT_STATUS else EXIT_FAILURE
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                f"the server at {self.base_url} answered HTTP {response.status_code} with {_describe_body(response.content)}; is it a p2pnode?", code
            ) from None
        raise ApiError(_describe_detail(detail) or f"the node refused the request (HTTP {response.status_code})", code)


def _describe_detail(detail: Any) -> str:
    """FastAPI's detail in one line: our own message, or its validation errors as `field: problem`."""
    if isinstance(detail, str):
        return " ".join(detail.split())
    if isinstance(detail, list):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}" for e in detail if isinstance(e, dict)]
        return "request refused: " + "; ".join(problems) if problems else ""
    return ""


def _describe_body(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip()
    if not text:
        return "an empty body"
    if text[:1] == "<":
        return "an HTML page"
    first = text.splitlines()[0]
    return f"{first[:80]!r}" + ("..." if len(text) > 80 else "")
