"""A deterministic in-memory network for the gossip engine, with the glue's delivery rules.

A `Send` only arrives over a link its sender opened with `Connect` (as with the real outboxes);
a `Connect` to a dead or partitioned node fails and reports the peer disconnected.
"""

from __future__ import annotations

import random
from collections import deque

import iroh

from p2pnode.gossip.engine import Connect, Deliver, Disconnect, GossipConfig, GossipEngine, Send, SendOnce

TOPIC = "ab" * 16


class Network:
    def __init__(self, seed: int = 1, config: GossipConfig | None = None) -> None:
        self.rng = random.Random(seed)
        self.config = config or GossipConfig()
        self.now = 1_000_000.0
        self.engines: dict[str, GossipEngine] = {}
        self.delivered: dict[str, list[str]] = {}
        self.links: set[tuple[str, str]] = set()
        self.dead: set[str] = set()
        self.side: dict[str, int] = {}
        self.queue: deque = deque()
        self.ticks = 0

    def add(self, via: str | None = None) -> str:
        key = iroh.SecretKey.generate()
        node_id = key.public().to_bytes().hex()
        engine = GossipEngine(node_id, TOPIC, key, {"id": node_id}, self.config, random.Random(self.rng.random()), clock=lambda: self.now)
        self.engines[node_id] = engine
        self.delivered[node_id] = []
        if via is not None:
            self.run(node_id, engine.join_via(via, {"id": via}))
        return node_id

    def alive(self) -> list[str]:
        return [n for n in self.engines if n not in self.dead]

    def reachable(self, a: str, b: str) -> bool:
        return b not in self.dead and a not in self.dead and self.side.get(a, 0) == self.side.get(b, 0)

    def run(self, src: str, actions) -> None:
        self.queue.extend((src, a) for a in actions)
        while self.queue:
            src, action = self.queue.popleft()
            if src in self.dead:
                continue
            engine = self.engines[src]
            if isinstance(action, Connect):
                if self.reachable(src, action.peer_id):
                    self.links.add((src, action.peer_id))
                    self.queue.extend((src, a) for a in engine.peer_connected(action.peer_id))
                else:
                    self.queue.extend((src, a) for a in engine.peer_disconnected(action.peer_id))
            elif isinstance(action, Disconnect):
                self.links.discard((src, action.peer_id))
            elif isinstance(action, Send | SendOnce):
                connected = (src, action.peer_id) in self.links or isinstance(action, SendOnce)
                if connected and self.reachable(src, action.peer_id):
                    dst = action.peer_id
                    self.queue.extend((dst, a) for a in self.engines[dst].on_message(src, action.msg))
            elif isinstance(action, Deliver):
                self.delivered[src].append(action.envelope.id)

    def publish(self, origin: str, n: int) -> str:
        envelope, actions = self.engines[origin].publish("job.announced", {"n": n})
        self.delivered[origin].append(envelope.id)
        self.run(origin, actions)
        return envelope.id

    def tick(self, rounds: int = 1) -> None:
        """One second for every node, including what the glue does with the member list."""
        for _ in range(rounds):
            self.now += 1
            self.ticks += 1
            for node_id in self.alive():
                engine = self.engines[node_id]
                member = self.rng.choice([n for n in self.engines if n != node_id])
                if not engine.active:
                    self.run(node_id, engine.join_via(member, {"id": member}))
                elif self.ticks % 10 == 0:
                    self.run(node_id, engine.reach_out(member, {"id": member}))
                self.run(node_id, engine.tick(self.now))

    def kill(self, node_id: str) -> None:
        self.dead.add(node_id)
        for src, dst in list(self.links):
            if dst == node_id:
                self.links.discard((src, dst))
                self.run(src, self.engines[src].peer_disconnected(node_id))

    def partition(self, half: set[str]) -> None:
        for node_id in self.engines:
            self.side[node_id] = 1 if node_id in half else 0
        for src, dst in list(self.links):
            if not self.reachable(src, dst):
                self.links.discard((src, dst))
                self.run(src, self.engines[src].peer_disconnected(dst))

    def heal(self, bridge: tuple[str, str]) -> None:
        self.side.clear()
        self.run(bridge[0], self.engines[bridge[0]].join_via(bridge[1], {"id": bridge[1]}))
