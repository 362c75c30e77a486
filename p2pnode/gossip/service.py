"""Gossip over iroh: runs the sans-IO engine, carrying its messages on QUIC streams between members.

Each neighbor gets one outgoing connection (members-only ALPN) with one long-lived uni stream
of length-prefixed frames (`wire.py`), fed by a bounded queue: a slow or dead neighbor can never
block the engine or the rest of the node; when its stream breaks the engine hears that the
neighbor is down and refills its view. Incoming frames that are oversized or malformed reset
that stream and are counted; they never reach the engine.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import iroh
import trio
from pydantic import BaseModel, ValidationError

from p2pnode.gossip.engine import (
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
from p2pnode.gossip.stats import GossipStats
from p2pnode.gossip.wire import WireError, WireMessage, decode, encode
from p2pnode.ids import EnvelopeId, NodeId
from p2pnode.membership import Membership
from p2pnode.net.addr import PeerAddr
from p2pnode.net.dialer import PEER_ERRORS, Dialer, describe
from p2pnode.net.errors import one_line
from p2pnode.net.framing import FrameError, FrameReader, write_frame, write_frames

log = logging.getLogger(__name__)

GOSSIP_ALPN = b"p2pnode/gossip/2"  # 2: binary messages (wire.py); nodes speaking 1 cannot connect
MAX_GOSSIP_FRAME = 256 * 1024
OUTBOX_SIZE = 256
WRITE_BATCH = 64  # queued frames per write
TICK_S = 1.0
REACH_OUT_EVERY = 10  # ticks between links to a member the views forgot: heals partitions


@dataclass(frozen=True)
class Received:
    """An announcement from another member, delivered once."""

    kind: str
    payload: dict[str, Any]
    origin: NodeId
    envelope_id: EnvelopeId  # to retire it once superseded


@dataclass(frozen=True)
class NeighborChange:
    peer_id: str
    up: bool


GossipEvent = Received | NeighborChange


class GossipService:
    """Also the gossip protocol's handler on the router (members only)."""

    alpn = GOSSIP_ALPN
    open_to_strangers = False

    def __init__(
        self,
        secret_key: iroh.SecretKey,
        membership: Membership,
        dialer: Dialer,
        self_addr: Callable[[], PeerAddr],
        config: GossipConfig | None = None,
    ) -> None:
        self._membership = membership
        self._dialer = dialer
        self._self_addr = self_addr
        # Each with the kinds it wants (None: all of them).
        self._subscribers: list[tuple[trio.MemorySendChannel[GossipEvent], frozenset[str] | None]]
        self._subscribers = []
        self._secret_key = secret_key
        self._config = config or GossipConfig()
        self._outboxes: dict[str, trio.MemorySendChannel[bytes]] = {}  # encoded messages
        self._nursery: trio.Nursery | None = None
        # The engine's timers, due on trio's clock: one task sleeps until the earliest.
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_order = itertools.count()
        self._timer_sleep = trio.CancelScope()
        self.engine: GossipEngine | None = None
        self.dropped_frames = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.engine = GossipEngine(
            self_id=self._membership.self_id,
            topic=self._membership.cluster.cluster_id,
            secret_key=self._secret_key,
            self_addr=self._self_addr().model_dump(),
            config=self._config,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._run_timers)
            self._bootstrap_if_alone()
            task_status.started()
            for ticks in itertools.count(1):
                await trio.sleep(TICK_S)
                self._bootstrap_if_alone()
                if ticks % REACH_OUT_EVERY == 0 and self._membership.members:
                    member = random.choice(list(self._membership.members.values()))
                    self._apply(
                        self.engine.reach_out(member.addr.node_id, member.addr.model_dump())
                    )
                self._apply(self.engine.tick(time.time()))

    def _bootstrap_if_alone(self) -> None:
        """Known members seed an empty view: at start, and after a join or losing every
        neighbor."""
        assert self.engine is not None
        if not self.engine.stats().active:
            for member in self._membership.members.values():
                self._apply(self.engine.join_via(member.addr.node_id, member.addr.model_dump()))

    # -- API for the rest of the node ----------------------------------------------------------

    def publish(self, message: BaseModel) -> EnvelopeId:
        """Announce a typed message (a model with a `KIND` class attribute); returns its envelope
        id."""
        assert self.engine is not None, "gossip is not running"
        envelope, actions = self.engine.publish(message.KIND, message.model_dump(mode="json"))  # type: ignore[attr-defined]
        self._apply(actions)
        return envelope.id

    def subscribe(
        self, buffer: int = 1024, kinds: Collection[str] | None = None
    ) -> trio.MemoryReceiveChannel[GossipEvent]:
        """Announcements from others (of `kinds` only, if given) and neighbor changes, in order; a
        subscriber that falls `buffer` events behind loses the overflow (anti-entropy cannot
        replay what was delivered). Naming the kinds saves waking the subscriber's task for every
        other announcement (a task step per subscriber and delivery)."""
        send, receive = trio.open_memory_channel[GossipEvent](buffer)
        self._subscribers.append((send, None if kinds is None else frozenset(kinds)))
        return receive

    def _notify(self, event: GossipEvent) -> None:
        kind = event.kind if isinstance(event, Received) else None
        for entry in list(self._subscribers):
            subscriber, kinds = entry
            if kind is not None and kinds is not None and kind not in kinds:
                continue
            try:
                subscriber.send_nowait(event)
            except trio.WouldBlock:
                log.warning(
                    "a gossip subscriber is not keeping up; dropped a %s", type(event).__name__
                )
            except trio.BrokenResourceError:
                self._subscribers.remove(entry)

    def retire(self, envelope_id: EnvelopeId) -> None:
        if self.engine is not None:
            self.engine.retire(envelope_id)

    def stats(self) -> GossipStats | None:
        if self.engine is None:
            return None
        stats = self.engine.stats()
        stats.dropped["bad_frame"] = stats.dropped.get("bad_frame", 0) + self.dropped_frames
        return stats

    # -- actions from the engine ---------------------------------------------------------------

    def _apply(self, actions: list[Any]) -> None:
        assert self._nursery is not None
        encoded: dict[int, bytes] = {}  # a message pushed to several neighbors is encoded once
        for action in actions:
            if isinstance(action, Send):
                self._send(action.peer_id, action.msg, encoded)
            elif isinstance(action, SendOnce):
                self._nursery.start_soon(self._send_once, action)
            elif isinstance(action, Timer):
                self._schedule(action)
            elif isinstance(action, Connect):
                self._nursery.start_soon(self._connect, action.peer_id, action.addr)
            elif isinstance(action, Disconnect):
                self._close_outbox(action.peer_id)
            elif isinstance(action, Deliver):
                envelope = action.envelope
                self._notify(
                    Received(envelope.kind, envelope.payload, envelope.origin, envelope.id)
                )
            elif isinstance(action, (NeighborUp, NeighborDown)):
                up = isinstance(action, NeighborUp)
                log.info("gossip neighbor %s: %s", "up" if up else "down", action.peer_id[:10])
                self._notify(NeighborChange(action.peer_id, up))

    def _send(self, peer_id: str, message: WireMessage, encoded: dict[int, bytes]) -> None:
        outbox = self._outboxes.get(peer_id)
        if outbox is None:
            return  # not connected (yet): the engine's anti-entropy repairs what this loses
        frame = encoded.get(id(message))
        if frame is None:
            frame = encoded[id(message)] = encode(message)
        try:
            outbox.send_nowait(frame)
        except trio.WouldBlock:
            log.warning("gossip neighbor %s is not keeping up; dropping it", peer_id[:10])
            self._peer_down(peer_id)
        except trio.BrokenResourceError:
            self._peer_down(peer_id)

    def _schedule(self, timer: Timer) -> None:
        """A heap entry, not a task per timer: a busy node sets several timers per envelope."""
        due = trio.current_time() + timer.delay
        heapq.heappush(self._timers, (due, next(self._timer_order), timer))
        self._timer_sleep.deadline = min(self._timer_sleep.deadline, due)

    async def _run_timers(self) -> None:
        while True:
            with trio.CancelScope(
                deadline=self._timers[0][0] if self._timers else math.inf
            ) as self._timer_sleep:
                await trio.sleep_forever()
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                self._apply(self.engine.on_timer(timer))  # type: ignore[union-attr]

    async def _send_once(self, action: SendOnce) -> None:
        try:
            connection = await self._dialer.connect(
                PeerAddr.model_validate(action.addr), GOSSIP_ALPN
            )
            stream = await connection.open_uni()
            await write_frame(stream, encode(action.msg))
            await stream.finish()
        except (*PEER_ERRORS, ValidationError) as exc:
            log.debug(
                "gossip: could not tell %s: %s", action.peer_id[:10], describe(exc)
            )  # the node logs a lost member once

    async def _connect(self, peer_id: str, addr: dict[str, Any]) -> None:
        if peer_id in self._outboxes:
            self._apply(self.engine.peer_connected(peer_id))  # type: ignore[union-attr]
            return
        try:  # the address came from a peer's message: it may not even parse
            connection = await self._dialer.connect(PeerAddr.model_validate(addr), GOSSIP_ALPN)
            stream = await connection.open_uni()
        except (*PEER_ERRORS, ValidationError) as exc:
            log.debug(
                "gossip: cannot reach %s: %s", peer_id[:10], describe(exc)
            )  # the node logs a lost member once
            self._dialer.forget(NodeId(peer_id))
            self._apply(self.engine.peer_disconnected(peer_id))  # type: ignore[union-attr]
            return
        send, receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self._outboxes[peer_id] = send
        assert self._nursery is not None
        self._nursery.start_soon(self._pump, peer_id, connection, stream, receive)
        self._apply(self.engine.peer_connected(peer_id))  # type: ignore[union-attr]

    async def _pump(
        self,
        peer_id: str,
        connection: iroh.Connection,
        stream: iroh.SendStream,
        outbox: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        """Write queued messages to the neighbor until the queue closes or the connection dies;
        what queued up meanwhile goes out in one write.

        Watching `closed()` notices a neighbor that went away even when we have nothing to send.
        """
        mine = self._outboxes.get(peer_id)

        async def write() -> None:
            async with outbox:
                async for frame in outbox:
                    frames = [frame]
                    with suppress(trio.WouldBlock, trio.EndOfChannel):
                        while len(frames) < WRITE_BATCH:
                            frames.append(outbox.receive_nowait())
                    await write_frames(stream, frames)

        async def watch() -> None:
            reason = await connection.closed()
            log.info("gossip connection to %s closed: %s", peer_id[:10], one_line(reason))

        try:
            async with trio.open_nursery() as nursery:
                for task in (write, watch):
                    nursery.start_soon(_first_to_finish, task, nursery.cancel_scope)
        except* iroh.IrohError as group:
            log.info("gossip stream to %s broke: %s", peer_id[:10], describe(group.exceptions[0]))
        if self._outboxes.get(peer_id) is mine:
            self._peer_down(peer_id)

    def _peer_down(self, peer_id: str) -> None:
        """Only gossip's own connection goes: a neighbor too slow for gossip may be in the middle
        of a job claim or a blob fetch with us (closing those stalled jobs for a lease's time)."""
        if self._close_outbox(peer_id):
            self._dialer.forget(NodeId(peer_id), alpn=GOSSIP_ALPN)
            self._apply(self.engine.peer_disconnected(peer_id))  # type: ignore[union-attr]

    def _close_outbox(self, peer_id: str) -> bool:
        outbox = self._outboxes.pop(peer_id, None)
        if outbox is None:
            return False
        outbox.close()
        return True

    # -- incoming ------------------------------------------------------------------------------

    async def handle(self, connection: iroh.Connection) -> None:
        peer_id = connection.remote_id().to_bytes().hex()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await connection.accept_uni()
                except iroh.IrohError:
                    return
                nursery.start_soon(self._receive, peer_id, stream)

    async def _receive(self, peer_id: str, stream: iroh.RecvStream) -> None:
        frames = FrameReader(stream, MAX_GOSSIP_FRAME)
        while self.engine is not None:
            try:
                frame = await frames.next()
                if frame is None:
                    return
                self._on_frame(peer_id, frame)
            except FrameError as exc:
                self.dropped_frames += 1
                log.warning("gossip from %s: %s; stream reset", peer_id[:10], exc)
                await _stop_quietly(stream)
                return

    def _on_frame(self, peer_id: str, frame: bytes) -> None:
        """The receive path of one frame (benchmarks/gossip.py times it)."""
        try:
            message = decode(frame)
        except WireError as exc:
            raise FrameError(f"malformed message: {exc}") from None
        self._apply(self.engine.on_message(peer_id, message))  # type: ignore[union-attr]


async def _first_to_finish(task: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
    await task()
    scope.cancel()


async def _stop_quietly(stream: iroh.RecvStream) -> None:
    try:
        await stream.stop(1)
    except iroh.IrohError:
        pass
