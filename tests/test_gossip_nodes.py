"""Gossip between real in-process nodes on loopback: full delivery, churn, and neighbor healing."""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

import pytest
import trio
from pydantic import BaseModel

import tickets
from p2pnode.api.app import serve_node_api
from p2pnode.config import Settings
from p2pnode.gossip.service import Received
from p2pnode.net.dialer import PeerUnreachable
from p2pnode.node import Node

pytestmark = pytest.mark.slow


class Ping(BaseModel):
    KIND: ClassVar[str] = "test.ping"
    n: int


class Pong(BaseModel):
    KIND: ClassVar[str] = "test.pong"
    n: int


class Cluster:
    """Nodes that each record the pings they receive; each can be stopped on its own."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self._nursery = nursery
        self._tmp = tmp_path
        self.nodes: list[Node] = []
        self.scopes: dict[str, trio.CancelScope] = {}
        self.received: dict[str, set[int]] = {}
        self.changed = trio.Event()

    async def add(self, join: Node | None) -> Node:
        node = Node(
            Settings(
                data_dir=self._tmp / f"n{len(self.nodes)}",
                http_port=0,
                bind="127.0.0.1:0",
                relay="disabled",
            ),
            serve_node_api,
        )
        scope = trio.CancelScope()
        ticket = tickets.parse_join(join.join_ticket()) if join else None

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(
                        lambda task_status: node.run(join_ticket=ticket, task_status=task_status)
                    )
                    self.received[node.id] = set()
                    inner.start_soon(self._record, node)
                    task_status.started()

        await self._nursery.start(run)
        self.nodes.append(node)
        self.scopes[node.id] = scope
        return node

    async def _record(self, node: Node) -> None:
        async for event in node.gossip.subscribe():
            if isinstance(event, Received) and event.kind == Ping.KIND:
                self.received[node.id].add(event.payload["n"])
            self.changed.set()
            self.changed = trio.Event()

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if not self.scopes[n.id].cancel_called]

    def publish(self, node: Node, n: int) -> None:
        node.gossip.publish(Ping(n=n))
        self.received[node.id].add(n)  # a node does not hear its own announcements

    async def until(self, done, what: str, timeout: float = 60.0) -> None:
        with trio.fail_after(timeout):
            while not done():
                await self.changed.wait()

    async def until_polled(self, done, what: str, timeout: float = 60.0) -> None:
        """For conditions no event announces (views after failure detection): bounded polling."""
        with trio.fail_after(timeout):
            while not done():
                await trio.sleep(0.1)


async def build(nursery: trio.Nursery, tmp_path: Path, size: int, rng: random.Random) -> Cluster:
    cluster = Cluster(nursery, tmp_path)
    await cluster.add(None)
    for _ in range(size - 1):
        await cluster.add(rng.choice(cluster.nodes))
    return cluster


async def test_twenty_nodes_every_announcement_reaches_all(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    rng = random.Random(20)
    cluster = await build(nursery, tmp_path, 20, rng)
    for n in range(40):
        cluster.publish(rng.choice(cluster.nodes), n)
    everything = set(range(40))
    await cluster.until(
        lambda: all(got == everything for got in cluster.received.values()),
        "every node to hear every ping",
    )
    for node in cluster.nodes:
        stats = node.gossip.stats()
        assert stats is not None and 1 <= len(stats.active) <= 5
    nursery.cancel_scope.cancel()


async def test_a_subscriber_hears_only_the_kinds_it_asked_for(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cluster = await build(nursery, tmp_path, 2, random.Random(2))
    origin, listener = cluster.nodes
    pings = listener.gossip.subscribe(kinds={Ping.KIND})
    origin.gossip.publish(Pong(n=1))  # the same link, in order: by the ping it has been handled
    cluster.publish(origin, 2)
    await cluster.until(lambda: 2 in cluster.received[listener.id], "the ping")
    heard = []
    while True:
        try:
            event = pings.receive_nowait()
        except trio.WouldBlock:
            break
        if isinstance(event, Received):
            heard.append((event.kind, event.payload))
    assert heard == [(Ping.KIND, {"n": 2})]  # no pong, no heartbeat
    nursery.cancel_scope.cancel()


async def test_kill_a_fifth_survivors_hear_everything_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    rng = random.Random(5)
    cluster = await build(nursery, tmp_path, 15, rng)
    dead = rng.sample(cluster.nodes[1:], 3)
    for victim in dead:
        cluster.scopes[victim.id].cancel()
    dead_ids = {d.id for d in dead}
    for n in range(30):
        cluster.publish(rng.choice(cluster.alive()), n)
    everything = set(range(30))
    await cluster.until(
        lambda: all(cluster.received[n.id] >= everything for n in cluster.alive()),
        "every survivor to hear every ping",
    )

    def healed() -> bool:
        views = [set(n.gossip.stats().active) for n in cluster.alive()]
        return all(view and not view & dead_ids for view in views)

    await cluster.until_polled(healed, "views without dead neighbors")
    nursery.cancel_scope.cancel()


async def test_partition_heals_and_both_halves_converge(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(8)
    cluster = await build(nursery, tmp_path, 8, rng)
    halves = [cluster.nodes[:4], cluster.nodes[4:]]
    side = {n.id: i for i, half in enumerate(halves) for n in half}
    cut = True

    def block(node: Node) -> None:
        real_dial, real_authorize = node.dialer.dial, node.router._authorize

        async def dial(addr, alpn):
            if cut and side[addr.node_id] != side[node.id]:
                raise PeerUnreachable("partitioned")
            return await real_dial(addr, alpn)

        monkeypatch.setattr(node.dialer, "dial", dial)
        monkeypatch.setattr(
            node.router,
            "_authorize",
            lambda peer, alpn: (
                not (cut and side[peer] != side[node.id]) and real_authorize(peer, alpn)
            ),
        )

    for node in cluster.nodes:
        block(node)

    async def enforce_cut() -> None:
        """Like a real cut, drop every cross-half connection, also any that a dial in flight
        completes later."""
        while cut:
            for a in halves[0]:
                for b in halves[1]:
                    a.dialer.forget(b.id)
                    b.dialer.forget(a.id)
            await trio.sleep(0.05)

    nursery.start_soon(enforce_cut)
    await cluster.until_polled(
        lambda: all(side[p] == side[n.id] for n in cluster.nodes for p in n.gossip.stats().active),
        "the overlay to split",
    )
    cluster.publish(halves[0][0], 1)
    cluster.publish(halves[1][0], 2)
    await cluster.until(
        lambda: all(cluster.received[n.id] >= {1} for n in halves[0]), "left half to hear 1"
    )
    assert all(2 not in cluster.received[n.id] for n in halves[0])

    cut = False
    await cluster.until(
        lambda: all(got >= {1, 2} for got in cluster.received.values()),
        "both halves to converge",
        timeout=90,
    )
    nursery.cancel_scope.cancel()
