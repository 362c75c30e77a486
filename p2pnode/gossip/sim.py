"""A deterministic simulation of the gossip engine: many engines, one seeded network.

`Sim` plays the glue (`service.py`) by its rules: a `Connect` opens one outgoing stream per
neighbor (or reports the peer disconnected if it is dead or across a partition); a `Send` goes
out only on such a stream, in order; a `Disconnect` closes it after what is queued; a stream
that dies tells its sender `peer_disconnected`; a node with no neighbors joins via every member
it knows, and every 10 ticks reaches out to a random one. A `Timer` (milliseconds) fires when
the network is quiet, earliest first, before the next tick (a second). Events on different
streams interleave in a seeded random order; node keys are seeded too, so runs replay exactly.
Every message is encoded and decoded as on the wire, so signatures must survive it.

Used by the engine's tests and by `benchmarks/gossip_sim.py` (100 to 1000 nodes).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable

import iroh

from p2pnode.gossip.engine import (
    Action,
    Connect,
    Deliver,
    Disconnect,
    GossipConfig,
    GossipEngine,
    NeighborDown,
    NeighborUp,
    Send,
    SendOnce,
    Timer,
)
from p2pnode.gossip.wire import WireMessage, encode

TOPIC = "ab" * 32
REACH_OUT_EVERY = 10


class Sim:
    """A seeded network of engines, carried by the glue's rules (see the module docstring)."""

    def __init__(self, seed: int, config: GossipConfig | None = None, fifo: bool = False) -> None:
        self.rng = random.Random(seed)
        self.config = config or GossipConfig()
        self.fifo = fifo
        self.now = 1_800_000_000.0
        self.ticks = 0
        self.engines: dict[str, GossipEngine] = {}
        self.delivered: dict[str, Counter[str]] = {}
        self.origin: dict[str, str] = {}  # envelope id -> origin
        self.links: set[tuple[str, str]] = set()  # open outgoing streams (membership tests only)
        self.channels: dict[tuple[str, ...], deque[Callable[[], None]]] = {}
        self.busy: list[tuple[str, ...]] = []  # channels with events, in a seeded order
        self.dead: set[str] = set()
        self.side: dict[str, int] = {}
        self.lost = 0  # sends with no stream, as the glue drops them
        self.timers: list[tuple[float, int, str, Timer]] = []  # (due, seq, node, timer), a heap
        self.elapsed = 0.0  # timer time: only timers move it
        self.order = itertools.count()  # ties between timers go first come, first served
        self.drop: Callable[[str, str, WireMessage], bool] = lambda src, dst, msg: False

    # -- the network ---------------------------------------------------------------------------

    def add(self, via: str | None = None) -> str:
        key = iroh.SecretKey.from_bytes(self.rng.randbytes(32))
        node = key.public().to_bytes().hex()
        engine = GossipEngine(
            node,
            TOPIC,
            key,
            {"node": node},
            self.config,
            random.Random(self.rng.random()),
            clock=lambda: self.now,
        )
        self.engines[node] = engine
        self.delivered[node] = Counter()
        if via is not None:
            self.apply(node, engine.join_via(via, {"node": via}))
            self.run()
        return node

    def alive(self) -> list[str]:
        return [n for n in self.engines if n not in self.dead]

    def reachable(self, a: str, b: str) -> bool:
        return (
            a not in self.dead and b not in self.dead and self.side.get(a, 0) == self.side.get(b, 0)
        )

    def schedule(self, channel: tuple[str, ...], event: Callable[[], None]) -> None:
        key = ("fifo",) if self.fifo else channel
        queue = self.channels.setdefault(key, deque())
        if not queue:
            self.busy.append(key)
        queue.append(event)

    def run(self, steps: int | None = None) -> None:
        """Carry events until the network is quiet, or only `steps` of them (to act mid-flight)."""
        for _ in range(steps or 10_000_000):
            if self.busy:
                index = 0 if self.fifo else self.rng.randrange(len(self.busy))
                queue = self.channels[self.busy[index]]
                event = queue.popleft()
                if not queue:  # swap-remove: O(1), and still a seeded order
                    self.busy[index] = self.busy[-1]
                    self.busy.pop()
                event()
            elif self.timers:
                self.elapsed, _, node, timer = heapq.heappop(self.timers)
                if node not in self.dead:
                    self.apply(node, self.engines[node].on_timer(timer))
            else:
                return
        if not steps:
            raise RuntimeError("the network never went quiet")

    def apply(self, src: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if (src, action.peer_id) not in self.links:
                    self.lost += 1
                    continue
                self.schedule(
                    ("stream", src, action.peer_id), self._carry(src, action.peer_id, action.msg)
                )
            elif isinstance(action, SendOnce):
                self.schedule(
                    ("once", src, action.peer_id), self._carry(src, action.peer_id, action.msg)
                )
            elif isinstance(action, Connect):
                self.schedule(
                    ("dial", src, action.peer_id),
                    functools.partial(self._dial, src, action.peer_id),
                )
            elif isinstance(action, Disconnect):
                self.links.discard((src, action.peer_id))
            elif isinstance(action, Deliver):
                self.delivered[src][action.envelope.id] += 1
            elif isinstance(action, Timer):
                due = self.elapsed + action.delay
                heapq.heappush(self.timers, (due, next(self.order), src, action))
            elif not isinstance(action, NeighborUp | NeighborDown):  # those carry nothing
                raise TypeError(f"unknown action {action!r}")

    def _carry(self, src: str, dst: str, msg: WireMessage) -> Callable[[], None]:
        frame = encode(msg)  # as on the wire: signatures must survive it

        def arrive() -> None:
            if self.reachable(src, dst) and not self.drop(src, dst, msg):
                self.apply(dst, self.engines[dst].on_message(src, frame))

        return arrive

    def _dial(self, src: str, dst: str) -> None:
        if src in self.dead:
            return
        if (src, dst) not in self.links:
            if not self.reachable(src, dst):
                self.apply(src, self.engines[src].peer_disconnected(dst))
                return
            self.links.add((src, dst))
        self.apply(src, self.engines[src].peer_connected(dst))

    def _cut(self, src: str, dst: str) -> None:
        """A stream dies under its sender, who hears of it (unless it opened a new one since)."""
        self.links.discard((src, dst))

        def down() -> None:
            if src not in self.dead and (src, dst) not in self.links:
                self.apply(src, self.engines[src].peer_disconnected(dst))

        self.schedule(("down", src, dst), down)

    def kill(self, node: str) -> None:
        self.dead.add(node)
        for src, dst in sorted(self.links):
            if node in (src, dst):
                self._cut(src, dst)

    def partition(self, half: set[str]) -> None:
        self.side = {n: int(n in half) for n in self.engines}
        for src, dst in sorted(self.links):
            if not self.reachable(src, dst):
                self._cut(src, dst)

    def heal(self) -> None:
        self.side.clear()

    def grow(self, n: int) -> None:
        """Add `n` nodes, each joining through a random earlier one, then let the views settle."""
        if not self.engines:
            self.add()
            n -= 1
        for _ in range(n):
            self.add(via=self.rng.choice(list(self.engines)))
        self.tick(5)

    # -- what the glue does --------------------------------------------------------------------

    def publish(self, origin: str, n: int, *, settle: bool = True) -> str:
        envelope, actions = self.engines[origin].publish("job.announced", {"n": n})
        self.origin[envelope.id] = origin
        self.apply(origin, actions)
        if settle:
            self.run()
        return envelope.id

    def tick(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            self.now += 1
            self.ticks += 1
            for node in self.alive():
                engine = self.engines[node]
                members = [m for m in self.engines if m != node]
                if not engine.stats().active:
                    for member in members:
                        self.apply(node, engine.join_via(member, {"node": member}))
                elif self.ticks % REACH_OUT_EVERY == 0:
                    member = self.rng.choice(members)
                    self.apply(node, engine.reach_out(member, {"node": member}))
                self.apply(node, engine.tick(self.now))
            self.run()
