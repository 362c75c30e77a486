"""Signed gossip envelopes: what the signature covers, and every reason an envelope is dropped."""

from __future__ import annotations

import math
import struct

import iroh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.gossip.envelope import (
    DOMAIN,
    Envelope,
    InvalidSignature,
    MalformedEnvelope,
    Signer,
    validate_incoming,
)

TOPIC = "ab" * 32
NOW = 1_800_000_000.0
KEY = iroh.SecretKey.from_bytes(bytes(range(32)))


def make(**fields: object) -> Envelope:
    return Envelope.create(
        KEY, TOPIC, "job.announced", {"job": "j1", "cpu": 2, "tags": ["a", "é"]}, hops=6, now=NOW
    ).replace(**fields)


def wire_round_trip(envelope: Envelope) -> Envelope:
    return Envelope.decode(envelope.encode(), hops=envelope.hops)


def reason(envelope: Envelope, **limits: float) -> str | None:
    return validate_incoming(envelope, topic=TOPIC, now=NOW, **limits)  # type: ignore[arg-type]


def test_round_trip_with_a_fresh_key_survives_the_wire() -> None:
    key = iroh.SecretKey.generate()
    envelope = Envelope.create(
        key, TOPIC, "k", {"nested": {"x": [1, 2.5, None, True]}, "n": 2**70}, hops=3
    )
    envelope.verify()
    assert envelope.origin == key.public().to_bytes().hex()
    parsed = wire_round_trip(envelope)
    parsed.verify()
    assert parsed == envelope
    assert parsed.payload == {"nested": {"x": [1, 2.5, None, True]}, "n": 2**70}
    assert reason(parsed.replace(timestamp=NOW)) == "bad_signature"  # the clock is signed
    assert validate_incoming(parsed, topic=TOPIC, now=parsed.timestamp) is None


def test_signature_is_domain_separated_and_covers_the_bytes_as_sent() -> None:
    envelope = make()
    assert envelope.signed_bytes() == DOMAIN + envelope.body
    KEY.public().verify(envelope.signed_bytes(), iroh.Signature.from_bytes(envelope.signature))
    with pytest.raises(iroh.IrohError):  # without the prefix the same signature means nothing
        KEY.public().verify(envelope.body, iroh.Signature.from_bytes(envelope.signature))
    # Relays pass the signed bytes on as they came: the same payload encoded otherwise (its keys
    # in another order) is another envelope, and no longer the origin's.
    reordered = envelope.replace(payload=dict(reversed(list(envelope.payload.items()))))
    assert reordered.payload == envelope.payload
    with pytest.raises(InvalidSignature):
        reordered.verify()


@pytest.mark.parametrize(
    "field, value",
    [
        ("payload", {"job": "j2", "cpu": 2, "tags": ["a", "é"]}),
        ("origin", iroh.SecretKey.from_bytes(bytes(32)).public().to_bytes().hex()),
        ("timestamp", NOW + 1),
        ("kind", "job.finished"),
        ("id", "0" * 32),
        ("topic", "cd" * 32),
        ("signature", bytes(64)),
    ],
)
def test_tampering_with_any_signed_field_breaks_the_signature(field: str, value: object) -> None:
    tampered = make(**{field: value})
    with pytest.raises(InvalidSignature):
        tampered.verify()
    expected = "wrong_topic" if field == "topic" else "bad_signature"
    assert reason(tampered) == expected


def test_hops_are_not_signed() -> None:
    for hops in (0, 1, 64):
        assert reason(make(hops=hops)) is None


def test_drop_reasons() -> None:
    assert reason(make(hops=-1)) == "bad_hops"
    assert reason(make(hops=65)) == "bad_hops"
    assert reason(make(hops=5), max_hops=4) == "bad_hops"
    assert reason(make(), max_age=10.0) is None
    old = Envelope.create(KEY, TOPIC, "k", {}, hops=1, now=NOW - 3601)
    assert reason(old) == "too_old"  # a replay from outside the window
    assert reason(Envelope.create(KEY, TOPIC, "k", {}, hops=1, now=NOW + 61)) == "from_future"
    assert reason(Envelope.create(KEY, TOPIC, "k", {}, hops=1, now=NOW + 59)) is None
    big = Envelope.create(KEY, TOPIC, "k", {"blob": "x" * 70_000}, hops=1, now=NOW)
    assert reason(big) == "oversized"
    assert reason(big, max_bytes=100_000) is None
    good = make()
    payload_at = len(good.body) - len(b'{"job":"j1","cpu":2,"tags":["a","\xc3\xa9"]}')
    for payload in (b"NaN", b"[1]", b"\xff", b""):  # signed by the origin, yet no JSON object
        body = good.body[:payload_at] + payload
        signed = Envelope(signature=Signer(KEY).sign(body), body=body, hops=1)
        assert reason(signed) == "malformed"


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Envelope.create(KEY, TOPIC, "k", {"x": math.inf}, hops=1)
    with pytest.raises(ValueError):
        Envelope.create(KEY, TOPIC, "k", {}, hops=1, now=math.nan)
    with pytest.raises(ValueError):
        Envelope.create(KEY, TOPIC, "k", {}, hops=65)
    # A NaN timestamp would never be too old and never expire: the parser refuses it.
    wire = make().encode()
    stamp = struct.pack(">d", NOW)
    assert wire.count(stamp) == 1
    with pytest.raises(MalformedEnvelope, match="timestamp"):
        Envelope.decode(wire.replace(stamp, struct.pack(">d", math.nan)), hops=1)


def test_payload_is_normalised_to_what_receivers_parse() -> None:
    envelope = Envelope.create(KEY, TOPIC, "k", {"pair": (1, 2)}, hops=1, now=NOW)
    assert envelope.payload == {"pair": [1, 2]}
    parsed = wire_round_trip(envelope)
    assert parsed == envelope and parsed.payload == {"pair": [1, 2]}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    kind=st.text(min_size=1, max_size=20),
)
def test_any_json_payload_verifies_after_a_wire_round_trip(
    payload: dict[str, object], kind: str
) -> None:
    envelope = Envelope.create(KEY, TOPIC, kind, payload, hops=2, now=NOW)
    parsed = wire_round_trip(envelope)
    assert reason(parsed) is None
    assert parsed.payload == envelope.payload
