"""The cluster's workers, and this node's drain switch: `GET /workers`, `POST /drain`,
`POST /undrain`."""

from __future__ import annotations

from typing import Annotated

import trio
from fastapi import APIRouter, HTTPException, Query

from p2pnode.api.schemas import DrainStatus
from p2pnode.jobs.heartbeat import WorkerView
from p2pnode.node import Node


def worker_routes(node: Node) -> APIRouter:
    api = APIRouter()

    @api.get("/workers")
    async def list_workers() -> list[WorkerView]:
        """Every node's latest heartbeat as this node heard it (itself included), with its state:
        `ready`, `busy` (no free slot), `draining` or `down` (3 heartbeats missed)."""
        return node.workers.workers()

    @api.post("/drain", responses={500: {"description": "the drain flag cannot be written"}})
    async def drain(
        timeout: Annotated[float, Query(ge=0, le=600)] = 0.0, release: bool = False
    ) -> DrainStatus:
        """Claim no new job (also after a restart) and let the running ones finish, or with
        `release` hand them back to their origins now; answers when none runs any more, or
        after `timeout` s with the ones still running."""
        _switch(node, draining=True)
        if release:
            node.jobs.worker.hand_back()
        with trio.move_on_after(timeout):
            await node.jobs.worker.wait_idle()
        return _drain_status(node)

    @api.post("/undrain", responses={500: {"description": "the drain flag cannot be removed"}})
    async def undrain() -> DrainStatus:
        """Claim jobs again, starting with the ones announced while drained."""
        _switch(node, draining=False)
        return _drain_status(node)

    return api


def _switch(node: Node, *, draining: bool) -> None:
    """Flip the switch and tell the cluster at once rather than at the next heartbeat."""
    try:
        node.jobs.set_draining(draining)
    except OSError as exc:
        raise HTTPException(500, f"cannot record the drain flag: {exc}") from None
    node.workers.send_heartbeat()


def _drain_status(node: Node) -> DrainStatus:
    worker = node.jobs.worker
    return DrainStatus(draining=worker.draining, running=sorted(worker.running))
