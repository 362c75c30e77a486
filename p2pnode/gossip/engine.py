"""The gossip engine: HyParView-style partial views, Plumtree broadcast and anti-entropy.

Sans-IO and synchronous: every input method returns the list of actions the caller must carry
out, in order (send, connect, disconnect, deliver), which keeps the protocol testable in a
deterministic simulation and keeps all I/O in the trio glue (`service.py`). Nothing here reads a
clock or a random source except the injected `clock` and `rng`, and nothing iterates a set, so a
seeded run replays exactly.

- Views: a small *active* view (the neighbors we push to) and a larger *passive* view (known
  members to replace them with). Joins are forwarded on random walks so newcomers spread over
  the overlay; shuffles mix passive views; a lost neighbor is replaced from the passive view.
- Broadcast (Plumtree, epidemic broadcast trees): each link to a neighbor is *eager* or *lazy*.
  A new, valid envelope is delivered once, pushed in full to the eager neighbors and announced
  by id (IHAVE) to the lazy ones, while its hop budget lasts. An IHAVE after a quiet spell goes
  at once (repair starts early); those that follow are batched `ihave_delay_s` apart. A
  duplicate shows a redundant path: the receiver answers PRUNE and both ends make the link
  lazy, so the eager links settle into a spanning tree and each node gets about one full copy
  per broadcast. Only eager pushes between neighbors teach the tree: a catch-up copy (and
  whatever is pushed on from it) can overtake the tree's copy, which is then no second path.
  A node told IHAVE of an id it still lacks after a GRAFT timeout (the eager copy was lost or
  the tree is broken) asks that neighbor with GRAFT, which makes the link eager again (the tree
  repairs itself) and brings the envelope; further announcers are tried `graft_retry_s` apart
  (or a GRAFT timeout apart, when that is longer: an answer may just be late).
  The timeout follows how late eager copies have been after an IHAVE for them (as TCP's
  retransmission timeout follows the round trip): short when the tree is quick, so a lost copy
  is repaired in tens of ms; long on a loaded machine, where a GRAFT for a copy that is merely
  late only adds a link that PRUNE must remove again. Delays are `Timer` actions that the
  caller fires back through `on_timer`.
- Catch-up: neighbors exchange digests of live envelope ids when they connect and every few
  ticks, and ask for what they lack, so late joiners and healed partitions converge.
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import iroh
from pydantic import BaseModel, Field

from p2pnode.gossip.envelope import MAX_HOPS, Envelope, Signer, validate_incoming
from p2pnode.gossip.stats import GossipStats
from p2pnode.gossip.wire import (
    WIRE_TYPES,
    Digest,
    ForwardJoin,
    Gossip,
    Graft,
    IHave,
    Join,
    Leave,
    Neighbor,
    PeerEntry,
    Prune,
    Shuffle,
    ShuffleReply,
    Want,
    WireError,
    WireMessage,
    decode,
)


class GossipConfig(BaseModel):
    active_size: int = 5
    passive_size: int = 30
    join_walk: int = 4  # active random walk length of a forwarded join
    passive_walk: int = 2  # at this remaining length the walk also records the newcomer as passive
    shuffle_every: int = 10  # ticks
    digest_every: int = 5  # ticks
    shuffle_sample: int = 8
    # Budget of a new envelope, and of one re-sent for catch-up or GRAFT. A tree's paths are
    # longer than the shortest ones flooding took; one that runs out is announced by IHAVE.
    hops: int = Field(default=32, ge=1, le=MAX_HOPS)
    max_age_s: float = 3600.0  # older envelopes are neither accepted nor re-sent: replay protection
    max_future_s: float = 60.0
    max_envelope_bytes: int = 64 * 1024
    max_digest_ids: int = 4000
    seen_capacity: int = 100_000
    # Plumtree delays. iroh-gossip batches IHAVE for 5 ms and grafts after 80 ms; Python nodes
    # sharing a loaded machine answer in ms when idle but hundreds of ms when loaded, so the
    # GRAFT timeout adapts between the two bounds (see the module docstring). IHAVEs that follow
    # one another are batched for `ihave_delay_s`: one frame per lazy link and direction, not one
    # per envelope. A frame costs ~0.4 ms of CPU in all (the bindings' write and read, wakeups),
    # more than the rest of a delivery; at 0.1 s IHAVE was 0.6 frames per delivery at 50
    # broadcasts/s. They only serve repair, which a tree in steady state does not need.
    ihave_delay_s: float = 0.5
    graft_timeout_s: float = 0.25  # before anything is measured
    graft_timeout_min_s: float = 0.03
    graft_timeout_max_s: float = 1.0
    graft_retry_s: float = 0.1


_OFF_TREE = ""  # the sender `_seen` records when an envelope's first copy came off the tree


@dataclass
class _Missing:
    """An envelope announced to us by IHAVE that we have not received yet."""

    announced_at: float
    announcers: list[str]
    grafted: bool = False


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    peer_id: str
    msg: Any


@dataclass(frozen=True)
class SendOnce:
    """A message to a peer we hold no connection to (declining its request to be a neighbor)."""

    peer_id: str
    addr: dict[str, Any]
    msg: Any


@dataclass(frozen=True)
class Connect:
    peer_id: str
    addr: dict[str, Any]


@dataclass(frozen=True)
class Disconnect:
    peer_id: str


@dataclass(frozen=True)
class Deliver:
    envelope: Envelope


@dataclass(frozen=True)
class NeighborUp:
    peer_id: str


@dataclass(frozen=True)
class NeighborDown:
    peer_id: str


@dataclass(frozen=True)
class Timer:
    """Call `on_timer(timer)` after `delay` seconds: to send batched IHAVEs (`id` empty), or to
    GRAFT envelope `id` if it is still missing."""

    delay: float
    kind: Literal["ihave", "graft"]
    id: str = ""


Action = Send | SendOnce | Connect | Disconnect | Deliver | NeighborUp | NeighborDown | Timer


class GossipEngine:
    def __init__(
        self,
        self_id: str,
        topic: str,
        secret_key: iroh.SecretKey,
        self_addr: dict[str, Any],
        config: GossipConfig | None = None,
        rng: random.Random | None = None,
        clock: Any = time.time,
    ) -> None:
        self.id = self_id
        self.topic = topic
        self.config = config or GossipConfig()
        self._signer = Signer(secret_key)
        self._addr = self_addr
        self._rng = rng or random.Random()
        self._clock = clock
        self.active: dict[str, dict[str, Any]] = {}
        self.passive: dict[str, dict[str, Any]] = {}
        self._connected: set[str] = set()
        self._hello: dict[str, Any] = {}  # first message for a neighbor, sent once connected
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (time, from)
        self._lazy: set[str] = set()  # connected neighbors we only send IHAVE to
        # neighbor -> ids to announce at the next timer (a dict as an ordered set)
        self._ihave: dict[str, dict[str, None]] = {}
        self._missing: dict[str, _Missing] = {}
        self._ihave_batching = False  # an "ihave" Timer is pending: further IHAVEs wait for it
        # How late eager copies come after an IHAVE for them: a smoothed mean and deviation.
        self._late_mean: float | None = None
        self._late_dev = 0.0
        self._live: dict[str, Envelope] = {}
        self._ticks = 0
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._sent_by_type: Counter[str] = Counter()

    # -- inputs ---------------------------------------------------------------------------------

    def join_via(self, peer_id: str, addr: dict[str, Any]) -> list[Action]:
        """Enter the overlay through a known member."""
        if peer_id == self.id or peer_id in self.active:
            return []
        return self._add_active(peer_id, addr, Join(addr=self._addr))

    def reach_out(self, peer_id: str, addr: dict[str, Any]) -> list[Action]:
        """Link to a member the overlay has lost track of (how cut-off halves find each other).

        The neighbor request is urgent, so the member accepts even with a full view.
        """
        if peer_id == self.id or peer_id in self.active or peer_id in self.passive:
            return []
        return self._add_active(peer_id, addr, Neighbor(addr=self._addr, urgent=True))

    def peer_connected(self, peer_id: str) -> list[Action]:
        """Our connection to `peer_id` (opened for a `Connect`) is up; repeats are harmless."""
        if peer_id not in self.active:
            return [Disconnect(peer_id)]
        first = peer_id not in self._connected
        self._connected.add(peer_id)
        actions: list[Action] = [NeighborUp(peer_id)] if first else []
        if (hello := self._hello.pop(peer_id, None)) is not None:
            actions.append(self._send(peer_id, hello))
        if first:
            actions.append(self._send(peer_id, self._digest()))
        return actions

    def peer_disconnected(self, peer_id: str) -> list[Action]:
        """The transport lost a neighbor, or could not reach one: forget it and refill.

        A peer whose connection failed is most likely gone, so it is not kept as a candidate
        (shuffles bring it back if it lives). Only a lost neighbor triggers an immediate
        refill; a failed dial waits for the next tick, so dead candidates cost one dial a tick.
        """
        was_connected = peer_id in self._connected
        self._unlink(peer_id)
        self._hello.pop(peer_id, None)
        self.active.pop(peer_id, None)
        self.passive.pop(peer_id, None)
        if not was_connected:
            return []
        return [NeighborDown(peer_id), *self._refill()]

    def publish(self, kind: str, payload: dict[str, Any]) -> tuple[Envelope, list[Action]]:
        envelope = Envelope.create(
            self._signer, self.topic, kind, payload, hops=self.config.hops, now=self._clock()
        )
        if envelope.size() > self.config.max_envelope_bytes:
            raise ValueError(
                f"announcement of {envelope.size()} bytes exceeds {self.config.max_envelope_bytes}"
            )
        self._remember(envelope, self.id)
        return envelope, self._push(envelope, exclude=None)

    def retire(self, envelope_id: str) -> None:
        """Stop offering an envelope in digests (e.g. an announcement of a job that has ended)."""
        self._live.pop(envelope_id, None)

    def on_message(self, peer_id: str, msg: WireMessage | bytes | object) -> list[Action]:
        """Handle a message from `peer_id`: a decoded `WireMessage`, or a frame's bytes that are
        decoded here. Anything else, or bytes that do not decode, is counted as dropped
        ("malformed"); this never raises."""
        self._counts["received"] += 1
        if isinstance(msg, bytes):
            try:
                msg = decode(msg)
            except WireError:
                self._dropped["malformed"] += 1
                return []
        if not isinstance(msg, WIRE_TYPES):
            self._dropped["malformed"] += 1
            return []
        result: list[Action] = getattr(self, f"_on_{msg.type}")(peer_id, msg)
        return result

    def on_timer(self, timer: Timer) -> list[Action]:
        """A `Timer` this engine asked for has run out."""
        if timer.kind == "ihave":
            return self._send_ihaves()
        return self._graft(timer.id)

    def tick(self, now: float | None = None) -> list[Action]:
        now = self._clock() if now is None else now
        self._ticks += 1
        self._expire(now)
        actions = self._refill()
        neighbors = sorted(self._connected)
        if neighbors and self._ticks % self.config.shuffle_every == 0:
            actions.append(self._send(self._rng.choice(neighbors), Shuffle(sample=self._sample())))
        if neighbors and self._ticks % self.config.digest_every == 0:
            actions.append(self._send(self._rng.choice(neighbors), self._digest()))
        return actions

    def stats(self) -> GossipStats:
        return GossipStats(
            sent=self._counts["sent"],
            sent_by_type=dict(sorted(self._sent_by_type.items())),
            received=self._counts["received"],
            delivered=self._counts["delivered"],
            duplicates=self._counts["duplicates"],
            dropped=dict(self._dropped),
            active=sorted(self._connected),
            pending=len(self.active) - len(self._connected),
            passive=len(self.passive),
            live=len(self._live),
        )

    # -- membership ----------------------------------------------------------------------------

    def _on_join(self, peer_id: str, msg: Join) -> list[Action]:
        actions = self._add_active(peer_id, msg.addr, None)
        entry = PeerEntry(id=peer_id, addr=msg.addr)
        for other in sorted(self._connected - {peer_id}):
            actions.append(self._send(other, ForwardJoin(peer=entry, ttl=self.config.join_walk)))
        return actions

    def _on_forward_join(self, peer_id: str, msg: ForwardJoin) -> list[Action]:
        newcomer = msg.peer
        if newcomer.id == self.id:
            return []
        if msg.ttl == 0 or len(self.active) <= 1:
            return self._add_active(
                newcomer.id, newcomer.addr, Neighbor(addr=self._addr, urgent=False)
            )
        if msg.ttl == self.config.passive_walk:
            self._add_passive(newcomer.id, newcomer.addr)
        candidates = sorted(self._connected - {peer_id, newcomer.id})
        if not candidates:
            return self._add_active(
                newcomer.id, newcomer.addr, Neighbor(addr=self._addr, urgent=False)
            )
        return [
            self._send(self._rng.choice(candidates), ForwardJoin(peer=newcomer, ttl=msg.ttl - 1))
        ]

    def _on_neighbor(self, peer_id: str, msg: Neighbor) -> list[Action]:
        if peer_id in self.active:
            return []
        if msg.urgent or len(self.active) < self.config.active_size:
            return self._add_active(peer_id, msg.addr, None)
        self._add_passive(peer_id, msg.addr)
        self._counts["sent"] += 1
        return [
            SendOnce(peer_id, msg.addr, Leave())
        ]  # views stay symmetric: the asker must drop us

    def _on_leave(self, peer_id: str, _msg: Leave) -> list[Action]:
        addr = self.active.pop(peer_id, None)
        self._unlink(peer_id)
        if addr is None:
            return []
        self._add_passive(peer_id, addr)
        # Refill on the next tick, not now: a refusal answered by another refusal must not spin.
        return [NeighborDown(peer_id), Disconnect(peer_id)]

    def _on_shuffle(self, peer_id: str, msg: Shuffle) -> list[Action]:
        reply = ShuffleReply(sample=self._sample())
        self._merge(msg.sample)
        return [self._send(peer_id, reply)] if peer_id in self._connected else []

    def _on_shuffle_reply(self, _peer_id: str, msg: ShuffleReply) -> list[Action]:
        self._merge(msg.sample)
        return []

    def _add_active(self, peer_id: str, addr: dict[str, Any], hello: Any) -> list[Action]:
        if peer_id == self.id or peer_id in self.active:
            return []
        actions: list[Action] = []
        if len(self.active) >= self.config.active_size:
            victim = self._rng.choice(sorted(self.active))
            self._add_passive(victim, self.active.pop(victim))
            self._hello.pop(victim, None)
            if victim in self._connected:
                actions.append(self._send(victim, Leave()))
                self._unlink(victim)
            actions += [NeighborDown(victim), Disconnect(victim)]
        self.passive.pop(peer_id, None)
        self.active[peer_id] = addr
        if hello is not None:
            self._hello[peer_id] = hello
        actions.append(Connect(peer_id, addr))
        return actions

    def _unlink(self, peer_id: str) -> None:
        self._connected.discard(peer_id)
        self._lazy.discard(peer_id)
        self._ihave.pop(peer_id, None)

    def _add_passive(self, peer_id: str, addr: dict[str, Any]) -> None:
        if peer_id == self.id or peer_id in self.active:
            return
        if peer_id not in self.passive and len(self.passive) >= self.config.passive_size:
            del self.passive[self._rng.choice(sorted(self.passive))]
        self.passive[peer_id] = addr

    def _refill(self) -> list[Action]:
        """Replace lost neighbors with passive candidates, one attempt per call."""
        missing = [p for p in self.passive if p not in self.active]
        if len(self.active) >= self.config.active_size or not missing:
            return []
        candidate = self._rng.choice(sorted(missing))
        addr = self.passive[candidate]
        return self._add_active(candidate, addr, Neighbor(addr=self._addr, urgent=not self.active))

    def _sample(self) -> list[PeerEntry]:
        known = {**self.passive, **self.active}
        chosen = self._rng.sample(sorted(known), min(self.config.shuffle_sample - 1, len(known)))
        return [PeerEntry(id=self.id, addr=self._addr)] + [
            PeerEntry(id=p, addr=known[p]) for p in chosen
        ]

    def _merge(self, sample: list[PeerEntry]) -> None:
        for entry in sample:
            self._add_passive(entry.id, entry.addr)

    # -- broadcast and catch-up --------------------------------------------------------------

    def _on_gossip(self, peer_id: str, msg: Gossip) -> list[Action]:
        envelope = msg.envelope
        seen = self._seen.get(envelope.id)
        linked = peer_id in self._connected
        # Only pushes over a link we hold eager show the tree: a catch-up copy, one from a peer we
        # hold no link to, or one pushed over a link we pruned before the sender heard of it can
        # beat the tree's copy to us, which is then no second path (pruning it cut the tree).
        on_tree = not msg.catch_up and linked and peer_id not in self._lazy
        if seen is not None:
            self._counts["duplicates"] += 1
            self._has(peer_id, envelope.id)
            if msg.catch_up or not linked or seen[1] == peer_id:
                return []  # a repeat from the first copy's link is a replay or a catch-up
            if not on_tree:  # the sender still pushes to us: our PRUNE crossed it, or a GRAFT did
                return [self._send(peer_id, Prune())]
            if seen[1] == _OFF_TREE:
                self._seen[envelope.id] = (seen[0], peer_id)  # the tree's copy, if late
                return []
            self._lazy.add(peer_id)  # a second path to us: prune it
            return [self._send(peer_id, Prune())]
        reason = validate_incoming(
            envelope,
            topic=self.topic,
            now=self._clock(),
            max_age=self.config.max_age_s,
            max_future_skew=self.config.max_future_s,
            max_bytes=self.config.max_envelope_bytes,
        )
        if reason is not None:
            self._dropped[reason] += 1
            return []
        self._remember(envelope, peer_id if on_tree else _OFF_TREE)
        self._counts["delivered"] += 1
        missing = self._missing.pop(envelope.id, None)
        if missing is not None and on_tree and not missing.grafted:
            self._measure_lateness(self._clock() - missing.announced_at)
        # The link the first copy came by stays as it is: a copy pushed before our PRUNE reached
        # the sender made it eager again on our side only, and the link carried envelopes one
        # way while its other end waited for GRAFTs. Links turn eager by GRAFT, as in iroh-gossip.
        return [Deliver(envelope), *self._push(envelope, exclude=peer_id, catch_up=not on_tree)]

    def _on_ihave(self, peer_id: str, msg: IHave) -> list[Action]:
        actions: list[Action] = []
        for envelope_id in msg.ids:
            if envelope_id in self._seen:
                self._has(peer_id, envelope_id)
                continue
            missing = self._missing.get(envelope_id)
            if missing is None:
                if len(self._missing) >= self.config.max_digest_ids:
                    self._dropped["ihave_overflow"] += 1
                    continue
                self._missing[envelope_id] = _Missing(self._clock(), [peer_id])
                # Jittered: the nodes cut off by one broken link all hear IHAVEs at once, and
                # had they all grafted together, their new links would have formed cycles anew.
                delay = self.graft_timeout() * (1 + self._rng.random() / 2)
                actions.append(Timer(delay, "graft", envelope_id))
            elif peer_id not in missing.announcers:
                missing.announcers.append(peer_id)
        return actions

    def graft_timeout(self) -> float:
        """How long to wait for the eager copy of an envelope announced by IHAVE: the usual
        lateness plus four deviations, within the configured bounds."""
        if self._late_mean is None:
            return self.config.graft_timeout_s
        timeout = self._late_mean + 4 * self._late_dev
        return min(max(timeout, self.config.graft_timeout_min_s), self.config.graft_timeout_max_s)

    def _measure_lateness(self, late: float) -> None:
        if self._late_mean is None:
            self._late_mean, self._late_dev = late, late / 2
            return
        self._late_dev += (abs(late - self._late_mean) - self._late_dev) / 4
        self._late_mean += (late - self._late_mean) / 8

    def _graft(self, envelope_id: str) -> list[Action]:
        """Ask the next announcer of a still missing id for it, and make its link eager."""
        missing = self._missing.get(envelope_id)
        announcers = missing.announcers if missing is not None else []
        while announcers and announcers[0] not in self._connected:
            announcers.pop(0)
        if missing is None or envelope_id in self._seen or not announcers:
            self._missing.pop(envelope_id, None)
            return []
        if not missing.grafted:  # the copy is this late at least: a timeout too short grows
            self._measure_lateness(self._clock() - missing.announced_at)
            missing.grafted = True
        peer_id = announcers.pop(0)
        self._lazy.discard(peer_id)
        return [
            self._send(peer_id, Graft(ids=[envelope_id])),
            Timer(max(self.config.graft_retry_s, self.graft_timeout()), "graft", envelope_id),
        ]

    def _on_graft(self, peer_id: str, msg: Graft) -> list[Action]:
        if peer_id not in self._connected:
            return []
        self._lazy.discard(peer_id)
        return [
            self._send(peer_id, self._resend(self._live[i], catch_up=False))
            for i in msg.ids
            if i in self._live
        ]

    def _on_prune(self, peer_id: str, _msg: Prune) -> list[Action]:
        """Make the link lazy, unless it is our last eager one: two neighbors that prune their
        links to us for two envelopes in flight at once would cut us off the tree, and our
        envelopes would then travel by IHAVE and GRAFT only. Then we graft it back instead."""
        if peer_id not in self._connected:
            return []
        self._lazy.add(peer_id)
        if self._connected <= self._lazy:
            self._lazy.discard(peer_id)
            return [self._send(peer_id, Graft(ids=[]))]
        return []

    def _on_digest(self, peer_id: str, msg: Digest) -> list[Action]:
        """Ask for what the peer has and we lack; send what we have and its (complete) digest
        lacks."""
        if peer_id not in self._connected:
            return []
        missing = [i for i in msg.ids if i not in self._seen]
        actions: list[Action] = [self._send(peer_id, Want(ids=missing))] if missing else []
        if len(msg.ids) < self.config.max_digest_ids:
            theirs = set(msg.ids)
            actions += [
                self._send(peer_id, self._resend(e, catch_up=True))
                for i, e in self._live.items()
                if i not in theirs
            ]
        return actions

    def _on_want(self, peer_id: str, msg: Want) -> list[Action]:
        if peer_id not in self._connected:
            return []
        return [
            self._send(peer_id, self._resend(self._live[i], catch_up=True))
            for i in msg.ids
            if i in self._live
        ]

    def _resend(self, envelope: Envelope, *, catch_up: bool) -> Gossip:
        """A stored envelope re-sent with a fresh hop budget, for a GRAFT or for catch-up: the
        receiver is typically the first of its side of a broken tree or a healed partition to get
        it, and pushes it on from there."""
        return Gossip(envelope=envelope.replace(hops=self.config.hops), catch_up=catch_up)

    def _push(
        self, envelope: Envelope, exclude: str | None, *, catch_up: bool = False
    ) -> list[Action]:
        """Eager copies to the tree's links, an IHAVE (at the next batch) to the others. Once the
        hop budget is spent, everyone gets the IHAVE: a GRAFT answer carries a fresh budget."""
        onward = Gossip(
            envelope=envelope.replace(hops=max(envelope.hops - 1, 0)), catch_up=catch_up
        )
        actions: list[Action] = []
        for peer_id in sorted(self._connected):
            if peer_id == exclude:
                continue
            if peer_id not in self._lazy and envelope.hops > 0:
                actions.append(self._send(peer_id, onward))
                continue
            if peer_id != envelope.origin:  # its origin has it
                self._ihave.setdefault(peer_id, {})[envelope.id] = None
        if self._ihave and not self._ihave_batching:  # the first after a quiet spell: now
            actions += self._send_ihaves()
        return actions

    def _has(self, peer_id: str, envelope_id: str) -> None:
        """The neighbor showed it has an envelope (sent it, or announced it): no IHAVE for it."""
        if (pending := self._ihave.get(peer_id)) is not None:
            pending.pop(envelope_id, None)

    def _send_ihaves(self) -> list[Action]:
        """The pending IHAVEs, and a timer for the next batch; once a batch finds nothing to send,
        the next IHAVE goes at once again. The two ends of a lazy link often announce the same
        envelope to each other, and whichever batch goes second skips it."""
        batches, self._ihave = self._ihave, {}
        self._ihave_batching = bool(batches)
        if not batches:
            return []
        limit = self.config.max_digest_ids
        actions: list[Action] = [Timer(self.config.ihave_delay_s, "ihave")]
        for peer_id, pending in sorted(batches.items()):
            ids = list(pending)
            actions += [
                self._send(peer_id, IHave(ids=ids[start : start + limit]))
                for start in range(0, len(ids), limit)
            ]
        return actions

    def _remember(self, envelope: Envelope, sender: str) -> None:
        self._seen[envelope.id] = (envelope.timestamp, sender)
        self._live[envelope.id] = envelope
        while len(self._seen) > self.config.seen_capacity:
            self._seen.popitem(last=False)

    def _digest(self) -> Digest:
        newest = sorted(self._live.values(), key=lambda e: e.timestamp)[
            -self.config.max_digest_ids :
        ]
        return Digest(ids=[e.id for e in newest])

    def _expire(self, now: float) -> None:
        horizon = now - self.config.max_age_s
        for envelope_id in [i for i, (ts, _) in self._seen.items() if ts < horizon]:
            del self._seen[envelope_id]
            self._live.pop(envelope_id, None)

    def _send(self, peer_id: str, msg: Any) -> Send:
        self._counts["sent"] += 1
        self._sent_by_type[msg.type] += 1
        return Send(peer_id, msg)
