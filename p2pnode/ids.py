"""The values every layer passes: a blob's hash, a node's id, a lease token, an envelope id.

Each is a `NewType` over `str`, so mypy tells a `BlobHash` from a `NodeId` from any other text,
and each is checked once, where it enters: a wire or API model (the `...Field` types, which
pydantic validates), a CLI argument or a file name on disk (`parse_blob_hash`, `parse_node_id`,
`is_blob_hash`). Inside, code takes the type and trusts it. This module holds the only patterns
for them. A hash or id computed here (a digest, an iroh key) is wrapped with the type's name.
"""

from __future__ import annotations

from typing import Annotated, NewType, TypeGuard

from pydantic import StringConstraints

BlobHash = NewType("BlobHash", str)
"""A blob's BLAKE3 hash: 64 lowercase hex digits."""
NodeId = NewType("NodeId", str)
"""An iroh node id (ed25519 public key): 64 lowercase hex digits."""
LeaseToken = NewType("LeaseToken", str)
"""The secret of one job lease: 32 lowercase hex digits."""
EnvelopeId = NewType("EnvelopeId", str)
"""A gossip envelope's random id: 32 lowercase hex digits."""

_HEX_DIGITS = "0123456789abcdef"
_HEX64 = r"^[0-9a-f]{64}$"
_HEX32 = r"^[0-9a-f]{32}$"

BlobHashField = Annotated[BlobHash, StringConstraints(pattern=_HEX64)]
NodeIdField = Annotated[NodeId, StringConstraints(pattern=_HEX64)]
LeaseTokenField = Annotated[LeaseToken, StringConstraints(pattern=_HEX32)]
EnvelopeIdField = Annotated[EnvelopeId, StringConstraints(pattern=_HEX32)]
NoLeaseTokenField = Annotated[str, StringConstraints(pattern=f"^({_HEX32[1:-1]})?$")]
"""A lease token, or "" where a message may carry none."""


def is_blob_hash(name: str) -> TypeGuard[BlobHash]:
    """Whether `name` is a blob hash exactly as written (a file name in the store)."""
    return len(name) == 64 and not name.strip(_HEX_DIGITS)


def _hex64(text: str, what: str) -> str:
    value = text.strip().lower()
    if not is_blob_hash(value):
        raise ValueError(f"not a {what} (64 hex digits): {text!r}")
    return value


def parse_blob_hash(text: str) -> BlobHash:
    """A hash as a person types it (any case, surrounding blanks), or ValueError."""
    return BlobHash(_hex64(text, "blob hash"))


def parse_node_id(text: str) -> NodeId:
    """A node id as a person types it (any case, surrounding blanks), or ValueError."""
    return NodeId(_hex64(text, "node id"))
