"""Signed gossip envelopes: who said what, when, verifiable by every member that relays it.

An envelope travels as the origin's signature followed by the exact bytes it signed (the
*body*): a fixed header (id, origin, timestamp, the lengths of topic and kind), the topic, the
kind, then the payload as JSON. A receiver checks the signature over those very bytes, after a
domain-separation prefix (a signature made for gossip can never pass for another protocol's),
and a relay passes them on unchanged: nothing is parsed, re-encoded or canonicalised on the way,
which is what made the JSON envelope cost ~60 us of Python per hop. `hops` travels beside the
body, unsigned, since relays decrement it.

Ed25519 runs in libsodium (PyNaCl): 62 us a check here, against 118 us in OpenSSL
(`cryptography`) and 233 us through the iroh bindings; every member checks every envelope once.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from typing import Any

import iroh
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from p2pnode.ids import EnvelopeId, NodeId

DOMAIN = b"p2pnode-gossip-v2\0"
MAX_HOPS = 64
MAX_TOPIC = 128
MAX_KIND = 64
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_MAX_FUTURE_S = 60.0
DEFAULT_MAX_BYTES = 64 * 1024
SIGNATURE_BYTES = 64
_HEAD = struct.Struct(">16s32sdBB")  # id, origin, timestamp, topic length, kind length


class InvalidSignature(ValueError):
    """The signature does not match the origin and the signed fields."""


class MalformedEnvelope(ValueError):
    """The bytes are not an envelope at all."""


class Signer:
    """A node's secret key, parsed once for signing (libsodium, as the checks)."""

    def __init__(self, secret_key: iroh.SecretKey) -> None:
        self._key = SigningKey(secret_key.to_bytes())
        self.origin = bytes(self._key.verify_key)

    def sign(self, body: bytes) -> bytes:
        signature: bytes = self._key.sign(DOMAIN + body).signature
        return signature


class Envelope:
    """One announcement, as it travels: `signature` and `body` are the wire bytes; the other
    fields are read from the body when it is decoded. `payload` is parsed on first use (after
    the signature check, for an incoming envelope) and kept."""

    __slots__ = (
        "id",
        "origin",
        "topic",
        "kind",
        "timestamp",
        "hops",
        "signature",
        "body",
        "_payload_at",
        "_payload",
    )

    def __init__(
        self,
        *,
        signature: bytes,
        body: bytes,
        hops: int,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Read the fields of `body`; `MalformedEnvelope` if it is no envelope body."""
        if len(signature) != SIGNATURE_BYTES or len(body) < _HEAD.size:
            raise MalformedEnvelope("envelope too short")
        raw_id, origin, timestamp, topic_len, kind_len = _HEAD.unpack_from(body)
        if not (0 < topic_len <= MAX_TOPIC and 0 < kind_len <= MAX_KIND):
            raise MalformedEnvelope("topic or kind of a bad length")
        # NaN would compare as neither too old nor from the future, and never expire.
        if not math.isfinite(timestamp):
            raise MalformedEnvelope("timestamp is not a finite number")
        kind_at = _HEAD.size + topic_len
        self._payload_at = kind_at + kind_len
        if len(body) < self._payload_at:
            raise MalformedEnvelope("envelope ends inside its kind")
        try:
            self.topic = body[_HEAD.size : kind_at].decode()
            self.kind = body[kind_at : self._payload_at].decode()
        except UnicodeDecodeError:
            raise MalformedEnvelope("topic or kind is not UTF-8") from None
        self.id = EnvelopeId(raw_id.hex())
        self.origin = NodeId(origin.hex())
        self.timestamp: float = timestamp
        self.hops = hops
        self.signature = signature
        self.body = body
        self._payload = payload

    @classmethod
    def create(
        cls,
        secret_key: Signer | iroh.SecretKey,
        topic: str,
        kind: str,
        payload: dict[str, Any],
        *,
        hops: int,
        now: float | None = None,
    ) -> Envelope:
        """Sign a new envelope. The payload is normalised through JSON first (tuples become lists,
        NaN is refused), so the origin holds exactly what every receiver will parse."""
        if not 0 <= hops <= MAX_HOPS:
            raise ValueError(f"hops must be within 0..{MAX_HOPS}, not {hops}")
        signer = secret_key if isinstance(secret_key, Signer) else Signer(secret_key)
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        body = _body(
            os.urandom(16),
            signer.origin,
            topic,
            kind,
            text.encode(),
            time.time() if now is None else now,
        )
        return cls(signature=signer.sign(body), body=body, hops=hops, payload=json.loads(text))

    @classmethod
    def decode(cls, data: bytes, hops: int) -> Envelope:
        """An envelope from its wire form (signature, then body)."""
        return cls(signature=data[:SIGNATURE_BYTES], body=data[SIGNATURE_BYTES:], hops=hops)

    def encode(self) -> bytes:
        return self.signature + self.body

    @property
    def payload(self) -> dict[str, Any]:
        """The payload; `MalformedEnvelope` unless it is a JSON object."""
        if self._payload is None:
            try:
                payload = json.loads(self.body[self._payload_at :])
            except ValueError:  # not UTF-8, not JSON (json's own error is a ValueError)
                raise MalformedEnvelope("payload is not JSON") from None
            if not isinstance(payload, dict):
                raise MalformedEnvelope("payload is not a JSON object")
            self._payload = payload
        return self._payload

    def replace(self, **changes: Any) -> Envelope:
        """A copy with some fields changed, the signature kept as it is (so it no longer matches
        unless only `hops` changed, which relays do; tests forge envelopes this way)."""
        if changes.keys() <= {"hops"}:
            return Envelope(
                signature=self.signature,
                body=self.body,
                hops=changes.get("hops", self.hops),
                payload=self._payload,
            )
        fields: dict[str, Any] = {
            "id": self.id,
            "origin": self.origin,
            "topic": self.topic,
            "kind": self.kind,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "signature": self.signature,
            "hops": self.hops,
        } | changes
        text = json.dumps(fields["payload"], separators=(",", ":"), ensure_ascii=False)
        body = _body(
            bytes.fromhex(fields["id"]),
            bytes.fromhex(fields["origin"]),
            fields["topic"],
            fields["kind"],
            text.encode(),
            fields["timestamp"],
        )
        return Envelope(signature=fields["signature"], body=body, hops=fields["hops"])

    def signed_bytes(self) -> bytes:
        """The bytes the origin signs: the domain prefix, then the body."""
        return DOMAIN + self.body

    def verify(self) -> None:
        """Raise `InvalidSignature` unless `origin` signed the body."""
        try:
            crypto_sign_open(self.signature + DOMAIN + self.body, bytes.fromhex(self.origin))
        except CryptoError as exc:
            raise InvalidSignature(
                f"envelope {self.id} is not signed by {self.origin[:16]}"
            ) from exc

    def size(self) -> int:
        """Bytes on the wire (signature and body)."""
        return SIGNATURE_BYTES + len(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return (self.signature, self.body, self.hops) == (other.signature, other.body, other.hops)

    def __hash__(self) -> int:
        return hash((self.signature, self.body, self.hops))

    def __repr__(self) -> str:
        return (
            f"Envelope(id={self.id}, origin={self.origin[:16]}, kind={self.kind}, hops={self.hops})"
        )


def _body(
    envelope_id: bytes, origin: bytes, topic: str, kind: str, payload: bytes, timestamp: float
) -> bytes:
    """The signed bytes of an envelope (without the domain prefix); ValueError if a field cannot
    be encoded (an id or origin of the wrong size, a topic or kind too long or empty, a
    non-finite timestamp)."""
    topic_bytes, kind_bytes = topic.encode(), kind.encode()
    if len(envelope_id) != 16 or len(origin) != 32:
        raise ValueError("an envelope id is 16 bytes and an origin 32")
    if not (0 < len(topic_bytes) <= MAX_TOPIC and 0 < len(kind_bytes) <= MAX_KIND):
        raise ValueError(f"topic must be 1..{MAX_TOPIC} bytes and kind 1..{MAX_KIND}")
    if not math.isfinite(timestamp):
        raise ValueError("timestamp must be finite")
    head = _HEAD.pack(envelope_id, origin, timestamp, len(topic_bytes), len(kind_bytes))
    return head + topic_bytes + kind_bytes + payload


def validate_incoming(
    envelope: Envelope,
    *,
    topic: str,
    now: float,
    max_age: float = DEFAULT_MAX_AGE_S,
    max_future_skew: float = DEFAULT_MAX_FUTURE_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_hops: int = MAX_HOPS,
) -> str | None:
    """Why an incoming envelope must be dropped, or None if it may be delivered.

    Cheap checks run first, the signature next, the payload's parse last (a forgery costs no
    parse). Age bounds replays: an envelope older than `max_age` is refused outright, and a
    younger one is still in the receiver's duplicate cache. Duplicates themselves are the
    engine's business (it keeps the cache).
    """
    if envelope.topic != topic:
        return "wrong_topic"
    if not 0 <= envelope.hops <= max_hops:
        return "bad_hops"
    if envelope.size() > max_bytes:
        return "oversized"
    if envelope.timestamp < now - max_age:
        return "too_old"
    if envelope.timestamp > now + max_future_skew:
        return "from_future"
    try:
        envelope.verify()
    except InvalidSignature:
        return "bad_signature"
    try:
        _ = envelope.payload  # parsed once here, and kept for delivery
    except MalformedEnvelope:
        return "malformed"
    return None
