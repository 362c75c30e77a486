"""Serves an ASGI app with hypercorn on trio, behind the API guard, inside the caller's nursery.

It gets an app and an address, never the node: `app.serve_node_api` puts the two together.
"""

from __future__ import annotations

import logging
import socket
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from p2pnode.api.auth import ApiGuard, Asgi, Sessions


class ApiBindError(Exception):
    """The API port is taken or not allowed; the message names it."""


async def serve_api(
    app: Asgi,
    host: str,
    port: int,
    token: str,
    *,
    sessions: Sessions | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind first (so a taken port is a clear error, and port 0 picks a free one), then serve
    `app` to requests bearing `token` (or a session of `sessions`); reports the URL it serves on."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ApiBindError(f"cannot listen on http://{host}:{port}: {exc.strerror}") from None
    bound_ip, bound_port = sock.getsockname()[:2]
    url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket from here
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    task_status.started(url)
    guarded = ApiGuard(app, token=token, host=bound_ip, port=bound_port, sessions=sessions)
    # The guard speaks ASGI with starlette's loose types; hypercorn's are stricter TypedDicts.
    await serve(cast(ASGIFramework, guarded), config, mode="asgi")
