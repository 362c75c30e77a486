"""Gossip's wire messages and their encoding: one byte of message type, then the message.

The messages of every broadcast (an envelope, IHAVE, GRAFT, PRUNE) and of catch-up (digests and
wants: lists of ids) are binary with fixed layouts, read with `struct` and slicing: pydantic
took a third of a delivery's Python time and re-encoded every relayed envelope. The membership
messages (joins, neighbor requests, shuffles), a few per second at most and carrying addresses,
stay pydantic models in JSON. Layouts after the type byte:

    GOSSIP   flags (1: catch-up), hops, then the envelope (signature and signed body)
    IHAVE, GRAFT, DIGEST, WANT   envelope ids, 16 bytes each, at most `MAX_IDS`
    PRUNE    nothing
    CONTROL  a membership message as JSON

`decode` raises `WireError` for anything else (an old node's JSON frames among them), so a
peer's garbage is one error, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from p2pnode.gossip.envelope import Envelope, MalformedEnvelope
from p2pnode.ids import NodeIdField

MAX_IDS = 5000
_ID_BYTES = 16
GOSSIP, IHAVE, GRAFT, PRUNE, DIGEST, WANT, CONTROL = range(1, 8)
_CATCH_UP = 1


class WireError(ValueError):
    """The bytes are not a gossip message."""


# -- membership (JSON) ------------------------------------------------------------------------


class PeerEntry(BaseModel):
    id: NodeIdField
    addr: dict[str, Any]


class Join(BaseModel):
    type: Literal["join"] = "join"
    addr: dict[str, Any]


class ForwardJoin(BaseModel):
    type: Literal["forward_join"] = "forward_join"
    peer: PeerEntry
    ttl: int = Field(ge=0, le=16)


class Neighbor(BaseModel):
    type: Literal["neighbor"] = "neighbor"
    addr: dict[str, Any]
    urgent: bool  # the sender has no neighbors at all: the receiver must accept


class Leave(BaseModel):
    type: Literal["leave"] = "leave"


class Shuffle(BaseModel):
    type: Literal["shuffle"] = "shuffle"
    sample: list[PeerEntry] = Field(max_length=64)


class ShuffleReply(BaseModel):
    type: Literal["shuffle_reply"] = "shuffle_reply"
    sample: list[PeerEntry] = Field(max_length=64)


Control = Annotated[
    Join | ForwardJoin | Neighbor | Leave | Shuffle | ShuffleReply, Field(discriminator="type")
]
_control: TypeAdapter[Control] = TypeAdapter(Control)
_CONTROL_TYPES = (Join, ForwardJoin, Neighbor, Leave, Shuffle, ShuffleReply)


# -- broadcast and catch-up (binary) ----------------------------------------------------------


@dataclass(frozen=True)
class Gossip:
    """A full envelope. `catch_up` marks a copy sent for anti-entropy (or pushed on from one): it
    travels off the tree's schedule, so its arrival order says nothing about the tree's links."""

    type: ClassVar[str] = "gossip"
    envelope: Envelope
    catch_up: bool = False


@dataclass(frozen=True)
class IdList:
    """Envelope ids (16 bytes each on the wire), at most `MAX_IDS`."""

    type: ClassVar[str]
    ids: list[str] = field(default_factory=list)


class Digest(IdList):
    """Anti-entropy: the ids the sender holds."""

    type: ClassVar[str] = "digest"


class Want(IdList):
    """Anti-entropy: send me these in full."""

    type: ClassVar[str] = "want"


class IHave(IdList):
    """Lazy push: ids the sender delivered, to a neighbor that gets no eager copies from it."""

    type: ClassVar[str] = "ihave"


class Graft(IdList):
    """Send these in full, and push eagerly to me from now on (the tree lost a branch)."""

    type: ClassVar[str] = "graft"


@dataclass(frozen=True)
class Prune:
    """You sent me a copy I already had: push to me lazily from now on."""

    type: ClassVar[str] = "prune"


WireMessage = (
    Join
    | ForwardJoin
    | Neighbor
    | Leave
    | Shuffle
    | ShuffleReply
    | Gossip
    | Digest
    | Want
    | IHave
    | Graft
    | Prune
)
WIRE_TYPES = (*_CONTROL_TYPES, Gossip, Digest, Want, IHave, Graft, Prune)
_ID_LISTS: dict[int, type[Digest] | type[Want] | type[IHave] | type[Graft]] = {
    DIGEST: Digest,
    WANT: Want,
    IHAVE: IHave,
    GRAFT: Graft,
}
_ID_LIST_CODES = {cls: code for code, cls in _ID_LISTS.items()}


def encode(msg: WireMessage) -> bytes:
    """The frame body of one of our own messages (ids are 32 hex digits, as the engine keeps
    them)."""
    if isinstance(msg, Gossip):
        flags = _CATCH_UP if msg.catch_up else 0
        envelope = msg.envelope
        return b"".join((bytes((GOSSIP, flags, envelope.hops)), envelope.signature, envelope.body))
    if isinstance(msg, Prune):
        return bytes((PRUNE,))
    if isinstance(msg, IdList):
        return bytes((_ID_LIST_CODES[type(msg)],)) + bytes.fromhex("".join(msg.ids))
    return bytes((CONTROL,)) + _control.dump_json(msg)


def decode(frame: bytes) -> WireMessage:
    """A message from a frame body; `WireError` if it is none."""
    if not frame:
        raise WireError("empty message")
    code = frame[0]
    if code == GOSSIP:
        if len(frame) < 3:
            raise WireError("gossip message too short")
        try:
            envelope = Envelope.decode(frame[3:], hops=frame[2])
        except MalformedEnvelope as exc:
            raise WireError(f"malformed envelope: {exc}") from None
        return Gossip(envelope=envelope, catch_up=bool(frame[1] & _CATCH_UP))
    if (id_list := _ID_LISTS.get(code)) is not None:
        count, rest = divmod(len(frame) - 1, _ID_BYTES)
        if rest or count > MAX_IDS:
            raise WireError(f"{id_list.type}: not a list of at most {MAX_IDS} ids")
        ids = frame[1:].hex()
        return id_list(ids=[ids[i : i + 2 * _ID_BYTES] for i in range(0, len(ids), 2 * _ID_BYTES)])
    if code == PRUNE:
        if len(frame) != 1:
            raise WireError("prune carries nothing")
        return Prune()
    if code == CONTROL:
        try:
            return _control.validate_json(frame[1:])
        except ValidationError as exc:
            raise WireError(f"malformed membership message: {exc.errors()[0]['msg']}") from None
    raise WireError(f"unknown message type {code:#04x}")
