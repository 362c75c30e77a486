"""Who may use the local API: the holder of the node's API token, from the node's own origin.

The token lives in `DATA/api-token` (mode 0600 in a 0700 folder), so only the node's own user can
read it; the CLI sends it as `Authorization: Bearer <token>`. `ApiGuard` is the one place every
request passes through, before routing: it refuses foreign `Host` names (DNS rebinding), cross-site
browser requests, missing or wrong tokens, and request bodies of the wrong type or size.

A browser cannot send the bearer header, so the dashboard logs in once (with the token, or a
one-time code the CLI prints) and then carries a session cookie (`Sessions`): it reads anything
(GET), and may POST only the dashboard's own actions under `/ui/`, with the session's CSRF token
in a header. Sessions live in memory only: a restart logs every browser out.

Light on purpose (stdlib only): the CLI imports it to read the token.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2pnode.fsutil import create_once

TOKEN_FILE = "api-token"
MAX_JSON_BODY = 17 << 20
"""Bound of a JSON request body: room for a 16 MiB job input and the rest of the submission."""

PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""Answered without the token: a liveness probe and the API's own documentation, which describes
only what the source code does (a browser opening /docs cannot send a bearer header; the page's
Authorize button sends the token with every request it makes)."""
DOCS_ASSETS = "/static-offline-docs/"
UPLOAD_PATHS = frozenset({"/blobs"})
"""Where a raw `application/octet-stream` body of any size is streamed (PUT only)."""
LOGIN_PATH = "/login"
"""The dashboard's login page and form: answered without a credential, since it takes one."""
STATIC_ASSETS = "/static/"
"""The dashboard's stylesheet and vendored htmx: public code, needed by the login page too."""
DASHBOARD = "/ui/"
"""The dashboard's pages and fragments (and `/`), where a browser without a credential is sent to
the login page; also the only place a session cookie may POST (with its CSRF token)."""
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BODY = 4096
"""Bound of the login form's body (a token, nothing more)."""
SESSION_TTL_S = 12 * 3600.0
LOGIN_CODE_TTL_S = 60.0
MAX_SESSIONS = 64
MAX_LOGIN_CODES = 16

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenError(Exception):
    """No usable API token; the message says where one was looked for, for a person."""


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The node's API token, generated at first start (mode 0600 from the first instant)."""
    path = token_path(data_dir)
    if not path.exists():
        create_once(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"no API token: {path} does not exist") from None
    except OSError as exc:
        raise TokenError(f"no API token: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"no API token: {path} is empty")
    return token


def session_cookie(port: int) -> str:
    """The session cookie's name: browsers share cookies between ports of one host, so each node's
    API on 127.0.0.1 needs its own name, or logging in to one would log out of the other."""
    return f"p2pnode_session_{port}"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    expires_at: float


class Sessions:
    """Dashboard sessions and one-time login codes, in memory, both bounded (the oldest go first)
    and short-lived. Ids, codes and CSRF tokens are 256-bit random strings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._codes: OrderedDict[str, float] = OrderedDict()

    def new_code(self) -> str:
        """A login code the token holder hands to a browser: good once, for `LOGIN_CODE_TTL_S`."""
        code = secrets.token_urlsafe(32)
        self._codes[code] = self._clock() + LOGIN_CODE_TTL_S
        while len(self._codes) > MAX_LOGIN_CODES:
            self._codes.popitem(last=False)
        return code

    def redeem(self, code: str) -> Session | None:
        """A new session for a valid unused code (which is spent), else None."""
        expires_at = self._codes.pop(code, None)
        if expires_at is None or expires_at < self._clock():
            return None
        return self.open()

    def open(self) -> Session:
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._clock() + SESSION_TTL_S
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at < self._clock():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class ApiGuard:
    """ASGI middleware in front of the whole API; every refusal is one JSON line
    `{"detail": ...}`."""

    def __init__(
        self, app: Asgi, *, token: str, host: str, port: int, sessions: Sessions | None = None
    ) -> None:
        self.app = app
        self._token = token.encode()
        self._ip = ipaddress.ip_address(host)
        self._port = port
        self._sessions = sessions or Sessions()
        self._cookie = session_cookie(port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = headers_of(scope)
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        answer = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            answer.append((b"www-authenticate", b"Bearer"))
            if _is_page(scope["path"]) and scope["method"] in ("GET", "HEAD"):
                # A person's browser: to the login page (htmx follows HX-Redirect, not a 303).
                if "hx-request" in headers:
                    answer.append((b"hx-redirect", LOGIN_PATH.encode()))
                else:
                    status = 303
                    answer.append((b"location", LOGIN_PATH.encode()))
        await send({"type": "http.response.start", "status": status, "headers": answer})
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
        public = (
            path in PUBLIC_PATHS
            or path == LOGIN_PATH
            or path.startswith((DOCS_ASSETS, STATIC_ASSETS))
        )
        if not public and "authorization" not in headers and self._cookie_value(headers):
            return self._session_refusal(scope, headers)
        if not public:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return 401, "no API token: send Authorization: Bearer <the token in DATA/api-token>"
            if not hmac.compare_digest(given.strip().encode(), self._token):
                return 401, "wrong API token: it is not this node's DATA/api-token"
        return self._body_refusal(scope["method"], path, headers)

    def _session_refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """A browser with a session cookie: it may read, and POST the dashboard's own actions with
        its CSRF token; the session rides in the scope's state for the pages."""
        session = self._sessions.get(self._cookie_value(headers))
        if session is None:
            return 401, "no valid session: log in again at /login"
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            if method != "POST" or not scope["path"].startswith(DASHBOARD):
                return 403, "a dashboard session may only read, and use the dashboard's buttons"
            if not hmac.compare_digest(
                headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()
            ):
                return 403, "missing or wrong CSRF token"
        scope.setdefault("state", {})["session"] = session
        return self._body_refusal(method, scope["path"], headers)

    def _cookie_value(self, headers: dict[str, str]) -> str:
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(headers.get("cookie", ""))
        morsel = cookies.get(self._cookie)
        return morsel.value if morsel is not None else ""

    def _body_refusal(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, str] | None:
        length = headers.get("content-length")
        if (length is None or length == "0") and "transfer-encoding" not in headers:
            return None
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if method == "POST" and path == LOGIN_PATH:
            if content_type != "application/x-www-form-urlencoded":
                return 415, "the login form is sent as application/x-www-form-urlencoded"
            if length is None or not length.isdigit() or int(length) > MAX_FORM_BODY:
                return 413, f"the login form is over {MAX_FORM_BODY} bytes"
            return None
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


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _is_page(path: str) -> bool:
    return path == "/" or path.startswith(DASHBOARD)
