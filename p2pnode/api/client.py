"""The CLI's side of the local API: a thin typed client that turns every failure into one clear
line.

Built on the standard library's `http.client` on purpose: a CLI call to the local node is one small
loopback request, and httpx drags in httpcore, trio, h2 and rich (about 0.3 s of imports here),
which would make every `p2pnode status` slow. Importing this module loads neither `http.client`
(with `ssl` and `email`) nor pydantic: the CLI imports it for its errors and builds a client for
every command, so they wait for the first request.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import logging
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from p2pnode.apitoken import TokenError, read_token

if TYPE_CHECKING:
    import http.client

    from pydantic import BaseModel

T = TypeVar("T", bound="BaseModel")

log = logging.getLogger(__name__)

BAD_INPUT_STATUS = frozenset({400, 413, 422})
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
"""What was typed (or sent) is wrong: click's own usage-error code; the CLI uses it too."""
HEALTH_TIMEOUT_S = 2.0
DOWNLOAD_CHUNK = 1 << 20
_DEFAULT = object()


class ApiError(Exception):
    """The node is not reachable, or refused the request; the message is for a person.

    `exit_code` is 2 when the request itself was wrong (the node answered 400, 413 or 422, or the
    API URL is malformed), 1 otherwise; `status` is the node's HTTP status when it answered one.
    """

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILURE, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status


def normalize_url(url: str) -> str:
    """Accept `127.0.0.1:3020` as well as `http://127.0.0.1:3020`: people type it both ways."""
    scheme, sep, rest = url.strip().partition("://")
    return f"{scheme}://{rest.rstrip('/')}" if sep else f"http://{scheme.rstrip('/')}"


class ApiClient:
    """Talks to one node; its token comes from `token`, else from `token_file` when first needed."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = normalize_url(base_url)
        self._timeout = timeout
        self._token = token
        self._token_file = token_file
        self._token_source = (
            "--api-token / P2PNODE_API_TOKEN" if token is not None else str(token_file)
        )
        self._no_token: str | None = None
        parts = urllib.parse.urlsplit(self.base_url)
        try:
            self._port = parts.port
        except ValueError:
            raise self._bad_url() from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
        ):
            raise self._bad_url()
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._prefix = parts.path

    def request(self, method: str, path: str, model: type[T], **kwargs: Any) -> T:
        with self._exchange(method, path, **kwargs) as response:
            body = response.read()
        return self._parse(body, model)

    def stream(self, method: str, path: str, model: type[T], **kwargs: Any) -> Iterator[T]:
        """Iterate an NDJSON response line by line, as the node sends it."""
        with self._exchange(method, path, timeout=None, **kwargs) as response:
            for line in response:
                if line.strip():
                    yield self._parse(line, model)

    def download(self, path: str) -> Iterator[bytes]:
        """The raw bytes of a GET answer, in chunks, never all in memory."""
        with self._exchange("GET", path, timeout=None) as response:
            while chunk := response.read(DOWNLOAD_CHUNK):
                yield chunk

    def upload(
        self, path: str, content: Iterable[bytes], size: int, model: type[T], **kwargs: Any
    ) -> T:
        """PUT a raw body streamed from `content` (`size` bytes in all)."""
        if not self._auth():  # the node would refuse the body at once, which reads as a broken pipe
            raise ApiError(self._no_token or "no API token")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with self._exchange("PUT", path, content=content, headers=headers, **kwargs) as response:
            body = response.read()
        return self._parse(body, model)

    def reachable(self) -> bool:
        try:
            with self._exchange("GET", "/health", timeout=HEALTH_TIMEOUT_S) as response:
                return response.status == 200
        except ApiError:
            return False

    def delete(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("DELETE", path, model, **kwargs)

    def get(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("GET", path, model, **kwargs)

    def post(self, path: str, model: type[T], **kwargs: Any) -> T:
        return self.request("POST", path, model, **kwargs)

    @contextlib.contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: Any = _DEFAULT,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request; yields a successful response, raises ApiError for everything else."""
        target = self._prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
            )
        body: bytes | Iterable[bytes] | None = content
        sent = {"Accept": "application/json"} | self._auth()
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        sent |= headers or {}
        connection = self._connection(self._timeout if timeout is _DEFAULT else timeout)
        started = time.monotonic()
        try:
            try:
                connection.connect()
            except OSError:
                raise ApiError(
                    f"no p2pnode answering at {self.base_url} "
                    "(start one with `p2pnode start`, or pass --api)"
                ) from None
            if "Authorization" in sent:
                self._check_listener(connection)
            with self._errors():
                connection.request(method, target, body=body, headers=sent)
                response = connection.getresponse()
                log.info(
                    "%s %s%s: HTTP %d in %.0f ms",
                    method,
                    self.base_url,
                    path,
                    response.status,
                    (time.monotonic() - started) * 1e3,
                )
                if response.status >= 400:
                    self._raise_for_status(response.status, response.read())
                yield response
        finally:
            connection.close()

    def _check_listener(self, connection: http.client.HTTPConnection) -> None:
        """Refuse before the token leaves if another account holds the loopback port (see
        `p2pnode.api.listener` for what holds off Linux and off loopback)."""
        from p2pnode.api.listener import ForeignListener, check_listener

        try:
            check_listener(connection.sock.getpeername()[:2])
        except ForeignListener as exc:
            raise ApiError(f"{self.base_url}: {exc}") from None

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        import http.client

        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import http.client

        try:
            yield
        except TimeoutError:
            raise ApiError(f"the node at {self.base_url} did not answer in time") from None
        except (ConnectionError, http.client.IncompleteRead):
            # Hung up before or amid its answer (RemoteDisconnected is a ConnectionResetError):
            # what a node that stopped or was killed mid-request does.
            raise ApiError(
                f"the node at {self.base_url} closed the connection mid-request (did it stop?)"
            ) from None
        except (http.client.HTTPException, OSError) as exc:
            # The other end answered, but not in HTTP.
            raise ApiError(
                f"the server at {self.base_url} broke off the exchange ({type(exc).__name__}); "
                "is it a p2pnode?"
            ) from None

    def _auth(self) -> dict[str, str]:
        """The bearer header. Without a token the request still goes: a node that is not there
        is the clearer error, and the node's 401 then becomes `_no_token`'s message."""
        if self._token is None and self._no_token is None:
            try:
                if self._token_file is None:
                    raise TokenError("no API token")
                self._token = read_token(self._token_file)
            except TokenError as exc:
                self._no_token = (
                    f"{exc} (pass --data with the node's data folder, --api-token, "
                    "or set P2PNODE_API_TOKEN)"
                )
        return {} if self._token is None else {"Authorization": f"Bearer {self._token}"}

    def _bad_url(self) -> ApiError:
        return ApiError(
            f"--api {self.base_url} is not an API URL such as http://127.0.0.1:3020", EXIT_USAGE
        )

    def _parse(self, content: bytes, model: type[T]) -> T:
        from pydantic import ValidationError

        try:
            return model.model_validate_json(content)
        except ValidationError:
            raise ApiError(
                f"the server at {self.base_url} answered {_describe_body(content)}, "
                "not a p2pnode reply; is it a p2pnode?"
            ) from None

    def _raise_for_status(self, status: int, content: bytes) -> None:
        code = EXIT_USAGE if status in BAD_INPUT_STATUS else EXIT_FAILURE
        try:
            detail = jsonlib.loads(content)["detail"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                f"the server at {self.base_url} answered HTTP {status} "
                f"with {_describe_body(content)}; is it a p2pnode?",
                code,
            ) from None
        if status == 401:
            raise ApiError(
                self._no_token
                or f"the node refused the API token ({_describe_detail(detail)}); "
                f"the token came from {self._token_source}"
            )
        raise ApiError(
            _describe_detail(detail) or f"the node refused the request (HTTP {status})",
            code,
            status,
        )


def _describe_detail(detail: Any) -> str:
    """FastAPI's detail in one line: our own message, or its validation errors as
    `field: problem`."""
    if isinstance(detail, str):
        return " ".join(detail.split())
    if isinstance(detail, list):
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
            for e in detail
            if isinstance(e, dict)
        ]
        return "request refused: " + "; ".join(problems) if problems else ""
    return ""


def _describe_body(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip()
    if not text:
        return "an empty body"
    if text[:1] == "<":
        return "an HTML page"
    first = text.splitlines()[0]
    return repr(first[:80]) + ("..." if len(text) > 80 else "")
