"""The CLI's side of the local API: a thin typed client that turns transport errors into one clear line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from p2pnode.api.auth import TokenError, read_token

T = TypeVar("T", bound=BaseModel)

DOWNLOAD_CHUNK = 1 << 20


class ApiError(Exception):
    """The node is not reachable, or refused the request; the message is for a person."""


class ApiClient:
    """Talks to one node; its token comes from `token`, else from `token_file` when first needed."""

    def __init__(self, base_url: str, *, token: str | None = None, token_file: Path | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._token_file = token_file
        self._token_source = "--api-token / P2PNODE_API_TOKEN" if token is not None else str(token_file)
        self._no_token: str | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(self, method: str, path: str, model: type[T], *, headers: dict[str, str] | None = None, **kwargs: Any) -> T:
        with self._errors():
            response = self._http.request(method, path, headers={**self._auth(), **(headers or {})}, **kwargs)
        self._raise_for_status(response)
        return model.model_validate_json(response.content)

    def stream(self, method: str, path: str, model: type[T], **kwargs: Any) -> Iterator[T]:
        """Iterate an NDJSON response line by line, as the node sends it."""
        with self._open(method, path, **kwargs) as response:
            for line in response.iter_lines():
                if line:
                    yield model.model_validate_json(line)

    def download(self, path: str) -> Iterator[bytes]:
        """The raw bytes of a GET answer, in chunks, never all in memory."""
        with self._open("GET", path) as response:
            yield from response.iter_bytes(DOWNLOAD_CHUNK)

    def upload(self, path: str, content: Iterable[bytes], size: int, model: type[T], **kwargs: Any) -> T:
        """PUT a raw body streamed from `content` (`size` bytes in all)."""
        if not self._auth():  # the node would refuse the body at once, which reads as a broken pipe
            raise ApiError(self._no_token or "no API token")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        return self.request("PUT", path, model, content=content, headers=headers, **kwargs)

    def reachable(self) -> bool:
        try:
            return self._http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    @contextlib.contextmanager
    def _open(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        with self._errors(), self._http.stream(method, path, headers=self._auth(), timeout=None, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_status(response)
            yield response

    def _auth(self) -> dict[str, str]:
        """The bearer header. Without a token the request still goes: a node that is not there
        is the clearer error, and the node's 401 then becomes `_no_token`'s message."""
        if self._token is None and self._no_token is None:
            try:
                if self._token_file is None:
                    raise TokenError("no API token")
                self._token = read_token(self._token_file)
            except TokenError as exc:
                self._no_token = f"{exc} (pass --data with the node's data folder, --api-token, or set P2PNODE_API_TOKEN)"
        return {} if self._token is None else {"Authorization": f"Bearer {self._token}"}

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code == 401 and self._no_token is not None:
            raise ApiError(self._no_token)
        _raise_for_status(response, self._token_source)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise ApiError(f"no p2pnode answering at {self.base_url} (start one with `p2pnode start`, or pass --api)") from None
        except httpx.TimeoutException:
            raise ApiError(f"the node at {self.base_url} did not answer in time") from None

    def delete(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("DELETE", path, model, **kwargs)

    def get(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("GET", path, model, **kwargs)

    def post(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("POST", path, model, **kwargs)


def _raise_for_status(response: httpx.Response, token_source: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 401:
        raise ApiError(f"the node refused the API token ({detail}); the token came from {token_source}")
    raise ApiError(detail if isinstance(detail, str) else f"request refused: {detail}")
