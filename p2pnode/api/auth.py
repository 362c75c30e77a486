"""Who may use the local API: the holder of the node's API token, from the node's own origin.

The token lives in `DATA/api-token` (mode 0600 in a 0700 folder; `p2pnode.apitoken`), so only the
node's own user can read it; the CLI sends it as `Authorization: Bearer <token>`. `ApiGuard` is the
one place every request passes through, before routing: it refuses foreign `Host` names (DNS
rebinding), cross-site browser requests, missing or wrong tokens, and request bodies of the wrong
type or size.

Light on purpose (stdlib only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

MAX_JSON_BODY = 17 << 20
"""Bound of a JSON request body: room for a 16 MiB job input and the rest of the submission."""

PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""Answered without the token: a liveness probe and the API's own documentation, which describes
only what the source code does (a browser opening /docs cannot send a bearer header; the page's
Authorize button sends the token with every request it makes)."""
DOCS_ASSETS = "/static-offline-docs/"
UPLOAD_PATHS = frozenset({"/blobs"})
"""Where a raw `application/octet-stream` body of any size is streamed (PUT only)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiGuard:
    """ASGI middleware in front of the whole API; every refusal is one JSON line
    `{"detail": ...}`."""

    def __init__(self, app: Asgi, *, token: str, host: str, port: int) -> None:
        self.app = app
        self._token = token.encode()
        self._ip = ipaddress.ip_address(host)
        self._port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(
            scope, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        )
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if not self._own_host(headers.get("host", "")):
            return (
                421,
                f"this API answers only to its own address (http://{self._netloc()}), "
                f"not Host {headers.get('host', '')!r}",
            )
        if headers.get("sec-fetch-site", "none") not in (
            "same-origin",
            "none",
        ) or not self._own_origin(headers.get("origin")):
            return 403, "cross-site requests are refused"
        path = scope["path"]
        if path not in PUBLIC_PATHS and not path.startswith(DOCS_ASSETS):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return 401, "no API token: send Authorization: Bearer <the token in DATA/api-token>"
            if not hmac.compare_digest(given.strip().encode(), self._token):
                return 401, "wrong API token: it is not this node's DATA/api-token"
        return self._body_refusal(scope["method"], path, headers)

    def _body_refusal(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, str] | None:
        length = headers.get("content-length")
        if (length is None or length == "0") and "transfer-encoding" not in headers:
            return None
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if method == "PUT" and path in UPLOAD_PATHS:
            return (
                None
                if content_type == "application/octet-stream"
                else (415, "upload the content as application/octet-stream")
            )
        if content_type != "application/json":
            return 415, "request bodies must be JSON sent as application/json"
        if length is None:
            return 411, "JSON request bodies need a Content-Length"
        if not length.isdigit() or int(length) > MAX_JSON_BODY:
            return 413, f"request body over {MAX_JSON_BODY >> 20} MiB"
        return None

    def _own_host(self, value: str) -> bool:
        parts = urlsplit(f"//{value}")
        try:
            port = parts.port
        except ValueError:
            return False
        if port != self._port or parts.hostname is None:
            return False
        if parts.hostname == "localhost":
            return self._ip.is_loopback or self._ip.is_unspecified
        try:
            ip = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return False  # a DNS name pointing here is how a rebinding page would reach us
        return ip == self._ip or self._ip.is_unspecified

    def _own_origin(self, origin: str | None) -> bool:
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme == "http" and not parts.path and self._own_host(parts.netloc)

    def _netloc(self) -> str:
        return f"[{self._ip}]:{self._port}" if self._ip.version == 6 else f"{self._ip}:{self._port}"
