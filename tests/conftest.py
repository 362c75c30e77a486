"""Shared fixtures: real iroh endpoints on loopback with relays and discovery off."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import iroh
import pytest

import tickets
from p2pnode.blobs.store import BlobStore
from p2pnode.net import bridge

TEST_ALPN = b"p2pnode/test/1"


async def bind_loopback(alpns: list[bytes] | None = None) -> iroh.Endpoint:
    bridge.install()
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(), bind_addr="127.0.0.1:0", alpns=alpns or [TEST_ALPN]
    )
    return await iroh.Endpoint.bind(options)


@pytest.fixture
async def endpoint_pair() -> AsyncIterator[tuple[iroh.Endpoint, iroh.Endpoint]]:
    server, client = await bind_loopback(), await bind_loopback()
    try:
        yield server, client
    finally:
        await client.close()
        await server.close()


async def accept_connection(endpoint: iroh.Endpoint) -> iroh.Connection:
    incoming = await endpoint.accept_next()
    assert incoming is not None
    return await (await incoming.accept()).connect()


async def connect_pair(
    server: iroh.Endpoint, client: iroh.Endpoint, alpn: bytes = TEST_ALPN
) -> tuple[iroh.Connection, iroh.Connection]:
    """Connect `client` to `server`; returns (server side, client side)."""
    import trio

    result: list[iroh.Connection] = []

    async def dial() -> None:
        result.append(await client.connect(server.addr(), alpn))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial)
        server_side = await accept_connection(server)
    return server_side, result[0]


@pytest.fixture
async def start_node(tmp_path, nursery):
    """Start real in-process nodes (own data folder, loopback endpoint, API on a free port)."""
    from p2pnode.api.app import serve_node_api
    from p2pnode.config import Settings
    from p2pnode.node import Node

    count = 0

    async def start(join: str | None = None, **overrides):
        nonlocal count
        count += 1
        settings = Settings(
            data_dir=tmp_path / f"node{count}",
            http_port=0,
            bind="127.0.0.1:0",
            relay="disabled",
            **overrides,
        )
        node = Node(settings, serve_node_api)
        ticket = tickets.parse_join(join) if join else None
        await nursery.start(
            lambda task_status: node.run(join_ticket=ticket, task_status=task_status)
        )
        return node

    return start


def cli_argv(node) -> list[str]:
    """The real CLI, pointed at an in-process node (its API and its data folder's token)."""
    return [
        sys.executable,
        "-m",
        "p2pnode",
        "--api",
        node.api_url,
        "--data",
        str(node.settings.data_dir),
    ]


@pytest.fixture
async def node(start_node):
    """One in-process node, for API tests."""
    return await start_node()


@pytest.fixture
async def api(node):
    """An HTTP client of `node`'s API, with its token."""
    async with httpx.AsyncClient(
        base_url=node.api_url, headers={"Authorization": f"Bearer {node.api_token}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    """A blob store of its own (a test file may define its own `store`, e.g. a job store)."""
    s = await BlobStore.open(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()
