"""Serves the local API with hypercorn on trio, inside the node's nursery."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2pnode.api.app import create_app
from p2pnode.api.auth import ApiGuard

if TYPE_CHECKING:
    from p2pnode.node import Node


class ApiBindError(Exception):
    """The API port is taken or not allowed; the message names it."""


async def serve_api(
    node: Node, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Bind first (so a taken port is a clear error, and port 0 picks a free one), then serve."""
    host, port = node.settings.http_host, node.settings.http_port
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
    app = ApiGuard(create_app(node), token=node.api_token, host=bound_ip, port=bound_port)
    await serve(app, config, mode="asgi")
