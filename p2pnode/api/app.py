"""The local HTTP API: what the CLI and people use to drive a running node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from pydantic import BaseModel

import p2pnode
from p2pnode.node import NodeStatus

if TYPE_CHECKING:
    from p2pnode.node import Node


class Health(BaseModel):
    ok: bool
    id: str
    version: str


class JoinTicketReply(BaseModel):
    ticket: str


def create_app(node: Node) -> FastAPI:
    app = FastAPI(title="p2pnode", version=p2pnode.__version__, description="Local control API of one p2pnode.")

    @app.get("/health")
    async def health() -> Health:
        return Health(ok=True, id=node.id, version=p2pnode.__version__)

    @app.get("/status")
    async def status() -> NodeStatus:
        return node.status()

    @app.post("/tickets/join")
    async def join_ticket() -> JoinTicketReply:
        return JoinTicketReply(ticket=node.join_ticket())

    return app
