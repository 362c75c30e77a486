"""The CLI's side of the local API: a thin typed client that turns transport errors into one clear line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


class ApiError(Exception):
    """The node is not reachable, or refused the request; the message is for a person."""


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(self, method: str, path: str, model: type[T], **kwargs: Any) -> T:
        with self._errors():
            response = self._http.request(method, path, **kwargs)
        _raise_for_status(response)
        return model.model_validate_json(response.content)

    def stream(self, method: str, path: str, model: type[T], **kwargs: Any) -> Iterator[T]:
        """Iterate an NDJSON response line by line, as the node sends it."""
        with self._errors(), self._http.stream(method, path, timeout=None, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_status(response)
            for line in response.iter_lines():
                if line:
                    yield model.model_validate_json(line)

    def reachable(self) -> bool:
        try:
            return self._http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

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


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise ApiError(detail if isinstance(detail, str) else f"request refused: {detail}")
