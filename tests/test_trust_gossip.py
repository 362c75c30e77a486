"""Gossip on the wire: an envelope counts as said by its origin only if the origin signed it.

A member relays envelopes it did not write; whatever it changes on the way (origin, payload,
topic), the receiving node drops the envelope as `bad_signature` and delivers nothing.
"""

from __future__ import annotations

import iroh
import pytest
import trio
from pydantic import ValidationError

from p2pnode.gossip.engine import Gossip
from p2pnode.gossip.envelope import DEFAULT_MAX_BYTES, MAX_HOPS, Envelope, validate_incoming
from p2pnode.gossip.service import GOSSIP_ALPN, Received, wire_message
from p2pnode.net.addr import PeerAddr
from p2pnode.net.endpoint import bind_endpoint
from p2pnode.net.framing import write_frame

KIND = "test.trust"
NOW = 1_800_000_000.0


def node_id(key: iroh.SecretKey) -> str:
    return key.public().to_bytes().hex()


def resigned(envelope: Envelope, key: iroh.SecretKey, **changes: object) -> Envelope:
    """`envelope` with `changes`, signed again by `key` (which may not be the origin's)."""
    changed = envelope.model_copy(update=changes)
    return changed.model_copy(
        update={"signature": key.sign(changed.signed_bytes()).to_bytes().hex()}
    )


async def test_member_cannot_forge_or_alter_what_others_said(start_node) -> None:
    node = await start_node()
    topic = node.gossip.engine.topic
    relay_key, author_key = iroh.SecretKey.generate(), iroh.SecretKey.generate()
    relay = await bind_endpoint(relay_key, "127.0.0.1:0", "disabled", [GOSSIP_ALPN])
    node.membership.admit(PeerAddr(node_id=node_id(relay_key)))
    events = node.gossip.subscribe()

    def by_author(payload: dict[str, object], *, topic: str = topic) -> Envelope:
        return Envelope.create(author_key, topic, KIND, payload, hops=3)

    honest = by_author({"n": 0})
    forgeries = [
        resigned(by_author({"n": 1}), relay_key),  # the relay signs in the author's name
        resigned(by_author({"n": 2}), relay_key, origin=node.id),  # ... or in the receiver's own
        by_author({"n": 3}).model_copy(update={"origin": node_id(relay_key)}),
        by_author({"n": 4}).model_copy(update={"payload": {"n": 44}}),
        by_author({"n": 5}, topic="another-cluster").model_copy(update={"topic": topic}),
        by_author({"n": 6}).model_copy(update={"kind": "job.finished"}),
        by_author({"n": 7}).model_copy(update={"timestamp": honest.timestamp + 1}),
    ]
    try:
        connection = await relay.connect(node.addr().to_endpoint(), GOSSIP_ALPN)
        for envelope in [
            *forgeries,
            honest.model_copy(update={"hops": 1}),
        ]:  # hops alone may change
            stream = await connection.open_uni()
            await write_frame(stream, wire_message.dump_json(Gossip(envelope=envelope)))
            await stream.finish()
        with trio.fail_after(10):
            while (
                node.gossip.stats().dropped.get("bad_signature", 0) < len(forgeries)
                or not node.gossip.stats().delivered
            ):
                await trio.sleep(0.02)
    finally:
        await relay.close()
    delivered = []
    while True:
        try:
            event = events.receive_nowait()
        except trio.WouldBlock:
            break
        if isinstance(event, Received) and event.kind in (KIND, "job.finished"):
            delivered.append(event)
    assert [(e.origin, e.payload) for e in delivered] == [(node_id(author_key), {"n": 0})]
    assert node.gossip.stats().dropped["bad_signature"] == len(forgeries)


# -- what an envelope may look like at all ----------------------------------------------------

AUTHOR = iroh.SecretKey.from_bytes(bytes(range(32)))
TOPIC = "ab" * 32


def test_signatures_use_the_wire_domain() -> None:
    """The prefix is part of the wire format: every node of every version must sign the same
    bytes."""
    assert (
        Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1)
        .signed_bytes()
        .startswith(b"p2pnode-gossip-v1\0{")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "0" * 31),
        ("id", "G" * 32),
        ("id", None),
        ("origin", "0" * 63),
        ("origin", "0" * 65),
        ("origin", None),
        ("topic", ""),
        ("topic", "t" * 129),
        ("topic", None),
        ("kind", ""),
        ("kind", "k" * 65),
        ("kind", None),
        ("signature", "0" * 127),
        ("signature", "x" * 128),
        ("signature", None),
    ],
)
def test_malformed_fields_are_refused_by_the_parser(field: str, value: object) -> None:
    fields = Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1).model_dump()
    with pytest.raises(ValidationError):
        Envelope.model_validate({**fields, field: value})


@pytest.mark.parametrize(("topic", "kind"), [("t", "k"), ("t" * 128, "k" * 64)])
def test_shortest_and_longest_topic_and_kind_are_accepted(topic: str, kind: str) -> None:
    envelope = Envelope.create(AUTHOR, topic, kind, {}, hops=1)
    assert Envelope.model_validate_json(envelope.model_dump_json()) == envelope


def test_size_limit_is_64_kib_exactly() -> None:
    base = Envelope.create(AUTHOR, TOPIC, KIND, {"pad": ""}, hops=1, now=NOW)
    fill = DEFAULT_MAX_BYTES - base.size()
    at_limit = Envelope.create(AUTHOR, TOPIC, KIND, {"pad": "x" * fill}, hops=1, now=NOW)
    over = Envelope.create(AUTHOR, TOPIC, KIND, {"pad": "x" * (fill + 1)}, hops=1, now=NOW)
    assert (at_limit.size(), over.size()) == (64 * 1024, 64 * 1024 + 1)
    assert validate_incoming(at_limit, topic=TOPIC, now=NOW) is None
    assert validate_incoming(over, topic=TOPIC, now=NOW) == "oversized"


def test_hop_budget_at_creation_is_0_to_max_hops() -> None:
    for hops in (0, MAX_HOPS):
        assert Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=hops).hops == hops
    for hops in (-1, MAX_HOPS + 1):
        with pytest.raises(ValueError):
            Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=hops)


def test_signed_bytes_are_canonical_json_known_answer() -> None:
    """Every node must sign and check the very same bytes: sorted keys, no spaces, UTF-8 as is,
    everything but hops and the signature."""
    envelope = Envelope(
        id="0" * 32,
        origin=node_id(AUTHOR),
        topic=TOPIC,
        kind=KIND,
        payload={"b": [1, "é"], "a": 2.5},
        timestamp=NOW,
        hops=3,
        signature="0" * 128,
    )
    expected = (
        '{"id":"' + "0" * 32 + '","kind":"test.trust","origin":"' + node_id(AUTHOR) + '",'
        '"payload":{"a":2.5,"b":[1,"é"]},"timestamp":1800000000.0,"topic":"' + TOPIC + '"}'
    )
    assert envelope.signed_bytes() == b"p2pnode-gossip-v1\0" + expected.encode()


def test_age_window_edges_are_inclusive() -> None:
    for timestamp in (NOW - 3600, NOW + 60):
        envelope = Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1, now=timestamp)
        assert (
            validate_incoming(envelope, topic=TOPIC, now=NOW, max_age=3600, max_future_skew=60)
            is None
        )
