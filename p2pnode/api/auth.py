"""Who may use the local API: the holder of the node's API token, from the node's own origin.

The token lives in `DATA/api-token` (mode 0600 in a 0700 folder; `p2pnode.apitoken`), so only the
node's own user can read it; the CLI sends it as `Authorization: Bearer <token>`. `ApiGuard` is the
one place every request passes through, before routing: it refuses foreign `Host` names (DNS
rebinding), cross-site browser requests, missing or wrong credentials, and request bodies of the
wrong type or size.

A browser cannot send the bearer header when it opens a page, so the dashboard logs in once (with
the token, or a one-time code the CLI prints) and gets a session secret (`Sessions`) that its own
script keeps in `localStorage` and sends as the `X-P2pnode-Session` header: it reads anything
(GET), and may POST only the dashboard's own actions under `/ui/`. Never a cookie: browsers send a
host's cookies to every port of it, so any local account's web server on 127.0.0.1 would receive
it, while `localStorage` belongs to one origin (scheme, host and port). The custom header is also
the CSRF defence: another origin cannot send it without a CORS preflight, which the node never
grants. Sessions live in memory only: a restart logs every browser out.

A browser cannot send the header when it follows a link either, so a download is a link the
script mints with its session (`Sessions.new_download`): `GET /blobs/HASH?download=...`, good once,
for that blob, within `DOWNLOAD_TTL_S`, while the session lives. The browser follows it and saves
the bytes to disk as they stream, instead of the script holding the whole output in memory.

Light on purpose (stdlib only).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
"""The dashboard's login page and its JSON login: answered without a credential, since they take
one."""
STATIC_ASSETS = "/static/"
"""The dashboard's stylesheet, script and vendored htmx: public code, needed by the login page."""
SHELLS = re.compile(r"/|/ui/jobs/[^/]+")
"""The dashboard's pages as a browser navigates to them, without the session header: data-free
shells (nothing but what their URL says) whose script loads the content with the header."""
DASHBOARD = "/ui/"
"""The dashboard's fragments and actions: the only place a session may POST."""
SESSION_HEADER = "x-p2pnode-session"
MAX_LOGIN_BODY = 4096
"""Bound of the login request's body (a token or a code, nothing more)."""
SESSION_TTL_S = 12 * 3600.0
LOGIN_CODE_TTL_S = 60.0
MAX_SESSIONS = 64
MAX_LOGIN_CODES = 16
DOWNLOAD_PARAM = "download"
"""The query parameter of a download link: its one-time credential."""
DOWNLOAD_TTL_S = 60.0
MAX_DOWNLOADS = 64

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def session_cookie(port: int) -> str:
    """The cookie that carried the session before it moved to a header: the login and the logout
    delete it from browsers that still hold one. It never grants anything."""
    return f"p2pnode_session_{port}"


@dataclass(frozen=True)
class Session:
    secret: str
    expires_at: float


@dataclass(frozen=True)
class _Download:
    path: str
    session: str | None
    expires_at: float


class Sessions:
    """Dashboard sessions and one-time login codes, in memory, both bounded (the oldest go first)
    and short-lived. Secrets and codes are 256-bit random strings."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._codes: OrderedDict[str, float] = OrderedDict()
        self._downloads: OrderedDict[str, _Download] = OrderedDict()

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
        session = Session(secrets.token_urlsafe(32), self._clock() + SESSION_TTL_S)
        self._sessions[session.secret] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, secret: str) -> Session | None:
        session = self._sessions.get(secret)
        if session is None:
            return None
        if session.expires_at < self._clock():
            del self._sessions[secret]
            return None
        return session

    def close(self, secret: str) -> None:
        self._sessions.pop(secret, None)

    def new_download(self, path: str, session: Session | None) -> str:
        """The credential of a download link: one GET of `path`, for `DOWNLOAD_TTL_S`, while
        `session` (None: the token holder's) lives."""
        token = secrets.token_urlsafe(32)
        secret = session.secret if session is not None else None
        self._downloads[token] = _Download(path, secret, self._clock() + DOWNLOAD_TTL_S)
        while len(self._downloads) > MAX_DOWNLOADS:
            self._downloads.popitem(last=False)
        return token

    def spend_download(self, token: str, path: str) -> bool:
        """Whether `token` opens `path`; any try spends it."""
        download = self._downloads.pop(token, None)
        return (
            download is not None
            and download.path == path
            and download.expires_at >= self._clock()
            and (download.session is None or self.get(download.session) is not None)
        )


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
            if "hx-request" in headers and SESSION_HEADER not in headers:
                # A dashboard page from before the session header (it polls with the old cookie):
                # its htmx follows this to the login page. Today's script handles a 401 itself.
                answer.append((b"hx-redirect", LOGIN_PATH.encode()))
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if not self._own_host(headers.get("host", "")):
            return (
                421,
                f"this API answers only to its own address (http://{self._netloc()}), "
                f"not Host {headers.get('host', '')!r}",
            )
        path = scope["path"]
        if (
            headers.get("sec-fetch-site", "none") not in ("same-origin", "none")
            or not self._own_origin(headers.get("origin"))
        ) and not (scope["method"] == "GET" and path == LOGIN_PATH):
            # The login page alone opens from anywhere (`p2pnode dashboard --open` leads there
            # from a local file): it holds nothing, and its script posts only to its own origin.
            return 403, "cross-site requests are refused"
        public = (
            path in PUBLIC_PATHS
            or path == LOGIN_PATH
            or path.startswith((DOCS_ASSETS, STATIC_ASSETS))
            or (scope["method"] in ("GET", "HEAD") and SHELLS.fullmatch(path) is not None)
        )
        if not public and "authorization" not in headers and SESSION_HEADER in headers:
            return self._session_refusal(scope, headers)
        if not public and "authorization" not in headers and (token := download_of(scope)):
            if scope["method"] != "GET" or not self._sessions.spend_download(token, path):
                return 401, "this download link was used already or has expired: download again"
            return None
        if not public:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return 401, "no API token: send Authorization: Bearer <the token in DATA/api-token>"
            if not hmac.compare_digest(given.strip().encode(), self._token):
                return 401, "wrong API token: it is not this node's DATA/api-token"
        return self._body_refusal(scope["method"], path, headers)

    def _session_refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """The dashboard's script with its session header: it may read, and POST the dashboard's
        own actions; the session rides in the scope's state for the logout."""
        session = self._sessions.get(headers[SESSION_HEADER])
        if session is None:
            return 401, "no valid session: log in again at /login"
        method = scope["method"]
        if method not in ("GET", "HEAD") and (
            method != "POST" or not scope["path"].startswith(DASHBOARD)
        ):
            return 403, "a dashboard session may only read, and use the dashboard's buttons"
        scope.setdefault("state", {})["session"] = session
        return self._body_refusal(method, scope["path"], headers)

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
        if path == LOGIN_PATH and int(length) > MAX_LOGIN_BODY:
            return 413, f"the login request is over {MAX_LOGIN_BODY} bytes"
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


def download_of(scope: Scope) -> str | None:
    """The download link's credential in the request's query, if any."""
    query_string: bytes = scope.get("query_string", b"")
    return next(iter(parse_qs(query_string.decode("latin-1")).get(DOWNLOAD_PARAM, [])), None)


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
