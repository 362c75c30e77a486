"""The gossip engine in a simulated network: delivery, churn, partitions, catch-up, bad envelopes."""

from __future__ import annotations

import iroh

from p2pnode.gossip.engine import Gossip
from p2pnode.gossip.envelope import Envelope
from tests.gossip_sim import TOPIC, Network


def build(n: int, seed: int = 7) -> Network:
    net = Network(seed)
    first = net.add()
    for _ in range(n - 1):
        net.add(via=net.rng.choice(list(net.engines)))
    net.tick(5)
    assert first in net.engines
    return net


def connected(net: Network) -> bool:
    alive = set(net.alive())
    start = next(iter(alive))
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for src, dst in net.links:
            for a, b in ((src, dst), (dst, src)):
                if a == node and b in alive and b not in seen:
                    seen.add(b)
                    todo.append(b)
    return seen == alive


def test_twenty_nodes_every_announcement_reaches_everyone_once() -> None:
    net = build(20)
    ids = [net.publish(net.rng.choice(net.alive()), i) for i in range(30)]
    for node_id, got in net.delivered.items():
        assert sorted(got) == sorted(ids), f"{node_id[:8]} missed {set(ids) - set(got)}"
    for engine in net.engines.values():
        assert 1 <= len(engine.active) <= engine.config.active_size
        assert len(engine.passive) <= engine.config.passive_size
    assert connected(net)
    assert sum(e.stats().duplicates for e in net.engines.values()) > 0  # eager push over a mesh


def test_kill_twenty_percent_survivors_get_everything_after() -> None:
    net = build(20, seed=3)
    for victim in net.rng.sample(net.alive(), 4):
        net.kill(victim)
    ids = [net.publish(net.rng.choice(net.alive()), i) for i in range(20)]
    net.tick(6)  # digests repair anything lost on links that died mid-flight
    for node_id in net.alive():
        assert set(ids) <= set(net.delivered[node_id])
        assert net.engines[node_id].active, "a survivor was left without neighbours"
    assert connected(net)


def test_partition_then_heal_converges_via_anti_entropy() -> None:
    net = build(16, seed=11)
    nodes = net.alive()
    half = set(nodes[:8])
    net.partition(half)
    net.tick(3)
    left = [net.publish(n, i) for i, n in enumerate(nodes[:3])]
    right = [net.publish(n, 10 + i) for i, n in enumerate(nodes[8:11])]
    net.heal((nodes[0], nodes[8]))
    net.tick(12)
    for node_id in nodes:
        assert set(left + right) <= set(net.delivered[node_id]), node_id[:8]


def test_late_joiner_catches_up_on_live_announcements_only() -> None:
    net = build(8, seed=5)
    ids = [net.publish(net.rng.choice(net.alive()), i) for i in range(5)]
    for engine in net.engines.values():
        engine.retire(ids[0])  # e.g. the job ended
    late = net.add(via=net.alive()[0])
    net.tick(6)
    assert set(net.delivered[late]) == set(ids[1:])


def test_forged_and_replayed_envelopes_are_dropped() -> None:
    net = build(3, seed=9)
    target, sender = net.alive()[:2]
    engine = net.engines[target]
    engine._connected.add(sender)
    stranger = iroh.SecretKey.generate()
    good = Envelope.create(stranger, TOPIC, "job.announced", {"n": 1}, hops=3, now=net.now)
    forged = good.model_copy(update={"payload": {"n": 2}})
    old = Envelope.create(stranger, TOPIC, "job.announced", {"n": 3}, hops=3, now=net.now - 2 * engine.config.max_age_s)
    future = Envelope.create(stranger, TOPIC, "job.announced", {"n": 4}, hops=3, now=net.now + 3600)
    other_topic = Envelope.create(stranger, "cd" * 16, "job.announced", {"n": 5}, hops=3, now=net.now)
    huge = Envelope.create(stranger, TOPIC, "job.announced", {"x": "y" * 100_000}, hops=3, now=net.now)
    for envelope in (forged, old, future, other_topic, huge):
        assert engine.on_message(sender, Gossip(envelope=envelope)) == []
    assert engine.stats().dropped == {"bad_signature": 1, "too_old": 1, "from_future": 1, "wrong_topic": 1, "oversized": 1}
    delivered = engine.on_message(sender, Gossip(envelope=good))
    assert any(type(a).__name__ == "Deliver" for a in delivered)
    assert engine.on_message(sender, Gossip(envelope=good.model_copy(update={"hops": 1}))) == []  # replay in window
    assert engine.stats().duplicates == 1
    assert engine.on_message(sender, object()) == [] and engine.stats().dropped["unknown_message"] == 1


def test_hops_are_not_signed_but_everything_else_is() -> None:
    key = iroh.SecretKey.generate()
    envelope = Envelope.create(key, TOPIC, "k", {"a": 1}, hops=5)
    assert envelope.model_copy(update={"hops": 0}).signature_valid()
    for field, value in [("kind", "other"), ("timestamp", envelope.timestamp + 1), ("origin", "00" * 32), ("id", "0" * 32)]:
        assert not envelope.model_copy(update={field: value}).signature_valid(), field
