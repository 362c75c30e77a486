"""Signed gossip envelopes: who said what, when, verifiable by every member that relays it."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import iroh
from pydantic import BaseModel, Field, ValidationError

DOMAIN = b"p2pnode-gossip-v1\0"


class Envelope(BaseModel):
    """One announcement. `hops` is the only field relays change, so the signature leaves it out."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    origin: str = Field(pattern=r"^[0-9a-f]{64}$")
    topic: str = Field(min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any]
    timestamp: float
    hops: int = Field(ge=0, le=64)
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    @classmethod
    def create(
        cls, secret_key: iroh.SecretKey, topic: str, kind: str, payload: dict[str, Any], *, hops: int, now: float | None = None
    ) -> Envelope:
        fields = {
            "id": os.urandom(16).hex(),
            "origin": secret_key.public().to_bytes().hex(),
            "topic": topic,
            "kind": kind,
            "payload": payload,
            "timestamp": time.time() if now is None else now,
        }
        signature = secret_key.sign(_signed_bytes(fields)).to_bytes().hex()
        return cls(**fields, hops=hops, signature=signature)

    def signed_fields(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"hops", "signature"})

    def signature_valid(self) -> bool:
        try:
            origin = iroh.EndpointId.from_bytes(bytes.fromhex(self.origin))
            origin.verify(_signed_bytes(self.signed_fields()), iroh.Signature.from_bytes(bytes.fromhex(self.signature)))
        except (iroh.IrohError, ValueError, ValidationError):
            return False
        return True

    def size(self) -> int:
        return len(self.model_dump_json())


def _signed_bytes(fields: dict[str, Any]) -> bytes:
    return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def drop_reason(envelope: Envelope, *, topic: str, now: float, max_age_s: float, max_future_s: float, max_bytes: int) -> str | None:
    """Why an incoming envelope must be dropped, or None if it may be delivered."""
    if envelope.topic != topic:
        return "wrong_topic"
    if envelope.size() > max_bytes:
        return "oversized"
    if envelope.timestamp < now - max_age_s:
        return "too_old"
    if envelope.timestamp > now + max_future_s:
        return "from_future"
    if not envelope.signature_valid():
        return "bad_signature"
    return None
