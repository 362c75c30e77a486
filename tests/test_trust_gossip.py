"""Gossip on the wire: an envelope counts as said by its origin only if the origin signed it.

A member relays envelopes it did not write; whatever it changes on the way (origin, payload,
topic), the receiving node drops the envelope as `bad_signature` and delivers nothing.
"""

from __future__ import annotations

import struct

import iroh
import pytest
import trio

from p2pnode.gossip.envelope import (
    DEFAULT_MAX_BYTES,
    DOMAIN,
    MAX_HOPS,
    Envelope,
    MalformedEnvelope,
    Signer,
    validate_incoming,
)
from p2pnode.gossip.service import GOSSIP_ALPN, Received
from p2pnode.gossip.wire import Gossip, encode
from p2pnode.net.addr import PeerAddr
from p2pnode.net.endpoint import bind_endpoint
from p2pnode.net.framing import write_frame

KIND = "test.trust"
NOW = 1_800_000_000.0


def node_id(key: iroh.SecretKey) -> str:
    return key.public().to_bytes().hex()


def resigned(envelope: Envelope, key: iroh.SecretKey, **changes: object) -> Envelope:
    """`envelope` with `changes`, signed again by `key` (which may not be the origin's)."""
    changed = envelope.replace(**changes)
    return changed.replace(signature=Signer(key).sign(changed.body))


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
        by_author({"n": 3}).replace(origin=node_id(relay_key)),
        by_author({"n": 4}).replace(payload={"n": 44}),
        by_author({"n": 5}, topic="another-cluster").replace(topic=topic),
        by_author({"n": 6}).replace(kind="job.finished"),
        by_author({"n": 7}).replace(timestamp=honest.timestamp + 1),
    ]
    try:
        connection = await relay.connect(node.addr().to_endpoint(), GOSSIP_ALPN)
        for envelope in [
            *forgeries,
            honest.replace(hops=1),
        ]:  # hops alone may change
            stream = await connection.open_uni()
            await write_frame(stream, encode(Gossip(envelope=envelope)))
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
    assert DOMAIN == b"p2pnode-gossip-v2\0"
    envelope = Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1)
    assert envelope.signed_bytes() == DOMAIN + envelope.body


def _valid_wire() -> bytes:
    return Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1, now=NOW).encode()


_BODY = 64  # the body starts after the signature
_LENGTHS = _BODY + 16 + 32 + 8  # topic length, then kind length


def _with(at: int, value: bytes) -> bytes:
    wire = _valid_wire()
    return wire[:at] + value + wire[at + len(value) :]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(_valid_wire()[:63], id="signature cut short"),
        pytest.param(_valid_wire()[: _BODY + 57], id="header cut short"),
        pytest.param(_valid_wire()[: _BODY + 58 + 10], id="ends inside the topic"),
        pytest.param(_with(_LENGTHS, bytes([0])), id="empty topic"),
        pytest.param(_with(_LENGTHS, bytes([129])), id="topic over 128 bytes"),
        pytest.param(_with(_LENGTHS + 1, bytes([0])), id="empty kind"),
        pytest.param(_with(_LENGTHS + 1, bytes([65])), id="kind over 64 bytes"),
        pytest.param(_with(_LENGTHS + 2, b"\xff"), id="topic not UTF-8"),
        pytest.param(_with(_BODY + 48, struct.pack(">d", float("inf"))), id="infinite timestamp"),
    ],
)
def test_malformed_envelopes_are_refused_by_the_parser(wire: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        Envelope.decode(wire, hops=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "0" * 31),
        ("id", "G" * 32),
        ("origin", "0" * 63),
        ("origin", "0" * 65),
        ("topic", ""),
        ("topic", "t" * 129),
        ("kind", ""),
        ("kind", "k" * 65),
        ("timestamp", float("nan")),
    ],
)
def test_unencodable_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1).replace(**{field: value})


@pytest.mark.parametrize(("topic", "kind"), [("t", "k"), ("t" * 128, "k" * 64)])
def test_shortest_and_longest_topic_and_kind_are_accepted(topic: str, kind: str) -> None:
    envelope = Envelope.create(AUTHOR, topic, kind, {}, hops=1)
    parsed = Envelope.decode(envelope.encode(), hops=1)
    assert parsed == envelope and (parsed.topic, parsed.kind) == (topic, kind)


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


def test_signed_bytes_known_answer() -> None:
    """Every node must sign and check the very same bytes: the domain, id, origin, timestamp
    (big-endian double), the lengths of topic and kind, topic, kind, the payload's JSON;
    everything but hops and the signature."""
    envelope = Envelope.create(AUTHOR, TOPIC, KIND, {"b": [1, "é"], "a": 2.5}, hops=3).replace(
        id="0" * 32, timestamp=NOW
    )
    expected = (
        b"p2pnode-gossip-v2\0"
        + bytes(16)
        + bytes.fromhex(node_id(AUTHOR))
        + bytes.fromhex("41da d274 8000 0000".replace(" ", ""))  # 1.8e9
        + bytes([64, 10])
        + TOPIC.encode()
        + b"test.trust"
        + '{"b":[1,"é"],"a":2.5}'.encode()
    )
    assert envelope.signed_bytes() == expected


def test_age_window_edges_are_inclusive() -> None:
    for timestamp in (NOW - 3600, NOW + 60):
        envelope = Envelope.create(AUTHOR, TOPIC, KIND, {}, hops=1, now=timestamp)
        assert (
            validate_incoming(envelope, topic=TOPIC, now=NOW, max_age=3600, max_future_skew=60)
            is None
        )


async def test_a_frame_in_the_old_json_format_is_dropped_with_one_line(start_node, caplog) -> None:
    """A member still speaking gossip 1 (JSON frames) on this ALPN: its stream is reset, one
    line is logged, no traceback, and a well-formed frame on another stream still gets through."""
    node = await start_node()
    key = iroh.SecretKey.generate()
    peer = await bind_endpoint(key, "127.0.0.1:0", "disabled", [GOSSIP_ALPN])
    node.membership.admit(PeerAddr(node_id=node_id(key)))
    events = node.gossip.subscribe()
    envelope = Envelope.create(key, node.gossip.engine.topic, KIND, {"n": 1}, hops=3)
    old = (
        '{"type":"gossip","catch_up":false,"envelope":{"id":"'
        + envelope.id
        + '","origin":"'
        + envelope.origin
        + '","topic":"'
        + envelope.topic
        + '","kind":"'
        + KIND
        + '",'
        '"payload":{"n":1},"timestamp":'
        + str(envelope.timestamp)
        + ',"hops":3,"signature":"'
        + envelope.signature.hex()
        + '"}}'
    )
    try:
        connection = await peer.connect(node.addr().to_endpoint(), GOSSIP_ALPN)
        for frame in (old.encode(), encode(Gossip(envelope=envelope))):
            stream = await connection.open_uni()
            await write_frame(stream, frame)
            await stream.finish()
        with trio.fail_after(10):
            event = await events.receive()
            while not isinstance(event, Received):
                event = await events.receive()
    finally:
        await peer.close()
    assert (event.origin, event.payload) == (node_id(key), {"n": 1})
    assert node.gossip.stats().dropped == {"bad_frame": 1}
    lines = [r for r in caplog.records if "malformed message" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "unknown message type 0x7b" in lines[0].getMessage()
    assert "\n" not in lines[0].getMessage()
