"""The CLI's side of the local API: a thin typed client that turns transport errors into one clear line."""

from __future__ import annotations

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
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(f"no p2pnode answering at {self.base_url} (start one with `p2pnode start`, or pass --api)") from None
        except httpx.TimeoutException:
            raise ApiError(f"the node at {self.base_url} did not answer in time") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(f"{detail}" if isinstance(detail, str) else f"request refused: {detail}")
        return model.model_validate_json(response.content)

    def get(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("GET", path, model, **kwargs)

    def post(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("POST", path, model, **kwargs)
