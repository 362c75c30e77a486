"""Ticket models, their binary field layouts, and the public encode/parse entry points."""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Iterable
from typing import Annotated, ClassVar, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from tickets.codec import Reader, TicketError, Writer, seal, unseal

# Frozen: a ticket is a value. Hex bytes in JSON: the models can pass through an HTTP
# API as they are. Strict bytes (below): a str is never silently taken as its UTF-8.
_MODEL_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    ser_json_bytes="hex",
    val_json_bytes="hex",
    use_attribute_docstrings=True,
)

_MAX_U8 = 0xFF
_MAX_U16 = 0xFFFF
_MAX_U64 = 0xFFFF_FFFF_FFFF_FFFF

_Bytes16 = Annotated[bytes, Strict(), Field(min_length=16, max_length=16)]
_Bytes32 = Annotated[bytes, Strict(), Field(min_length=32, max_length=32)]
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Only ASCII is case-folded: str.lower() would turn e.g. the Kelvin sign into "k".
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_QUOTES = "\"'`<>\u201c\u201d\u2018\u2019"
"""What a paste may wrap a ticket in (a chat's typographic quotes among them); none is a ticket
character, so dropping them can turn no damaged ticket into a valid one."""


def _parse_socket_addr(addr: str) -> tuple[_IPAddress, int]:
    """Split "ip:port" / "[ipv6]:port"; hostnames and zone ids have no compact encoding."""
    host, _, port = addr.rpartition(":")
    try:
        # int() raises ValueError itself on digit strings too long to convert.
        if not (port.isascii() and port.isdigit() and int(port) <= _MAX_U16):
            raise ValueError
        ip: _IPAddress
        if host.startswith("[") and host.endswith("]"):
            ip = ipaddress.IPv6Address(host[1:-1])
            if ip.scope_id is not None:
                raise ValueError
        else:
            ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(
            f"direct address {addr!r} is not an IP socket address like '127.0.0.1:4433' or "
            "'[::1]:4433'"
        ) from None
    return ip, int(port)


def _format_socket_addr(ip: _IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _write_socket_addr(w: Writer, addr: str) -> None:
    ip, port = _parse_socket_addr(addr)
    w.u8(ip.version)
    w.raw(ip.packed)
    w.u16(port)


def _read_socket_addr(r: Reader) -> str:
    tag = r.u8()
    ip: _IPAddress
    if tag == 4:
        ip = ipaddress.IPv4Address(r.raw(4))
    elif tag == 6:
        ip = ipaddress.IPv6Address(r.raw(16))
    else:
        raise TicketError(f"ticket contains a direct address of unknown type {tag}")
    return _format_socket_addr(ip, r.u16())


class NodeAddr(BaseModel):
    """How to reach a node: its identity plus where to dial it, without needing the iroh runtime."""

    model_config = _MODEL_CONFIG

    node_id: _Bytes32
    """Ed25519 public key."""
    relay_url: Annotated[str, Field(min_length=1)] | None = None
    direct_addresses: list[str] = Field(default_factory=list, max_length=_MAX_U8)

    @field_validator("relay_url")
    @classmethod
    def _relay_url_fits(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode("utf-8")) > _MAX_U16:
            raise ValueError(f"relay_url is longer than {_MAX_U16} UTF-8 bytes")
        return value

    @field_validator("direct_addresses")
    @classmethod
    def _canonical_addresses(cls, value: list[str]) -> list[str]:
        """Store the canonical spelling, so a decoded ticket equals the one that was encoded."""
        return [_format_socket_addr(*_parse_socket_addr(addr)) for addr in value]

    @classmethod
    def from_hex(
        cls, node_id_hex: str, relay_url: str | None = None, direct_addresses: Iterable[str] = ()
    ) -> Self:
        """Build from the hex node id that iroh and the logs show."""
        try:
            node_id = bytes.fromhex(node_id_hex)
        except ValueError:
            raise ValueError(f"node id {node_id_hex!r} is not hex") from None
        return cls(node_id=node_id, relay_url=relay_url, direct_addresses=list(direct_addresses))

    @property
    def node_id_hex(self) -> str:
        return self.node_id.hex()

    def _write(self, w: Writer) -> None:
        w.raw(self.node_id)
        w.flag(self.relay_url is not None)
        if self.relay_url is not None:
            w.text(self.relay_url)
        w.u8(len(self.direct_addresses))
        for addr in self.direct_addresses:
            _write_socket_addr(w, addr)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        node_id = r.raw(32)
        relay_url = r.text() if r.flag() else None
        direct_addresses = [_read_socket_addr(r) for _ in range(r.u8())]
        return cls(node_id=node_id, relay_url=relay_url, direct_addresses=direct_addresses)


class JoinTicket(BaseModel):
    """An invitation into a cluster: whom to dial, and the secret that proves the invitation."""

    model_config = _MODEL_CONFIG
    PREFIX: ClassVar[str] = "p2pjoin"
    KIND: ClassVar[str] = "join"

    node: NodeAddr
    cluster_id: _Bytes16
    join_secret: Annotated[_Bytes32, Field(repr=False)]

    @property
    def cluster_id_hex(self) -> str:
        return self.cluster_id.hex()

    def _write(self, w: Writer) -> None:
        self.node._write(w)
        w.raw(self.cluster_id)
        w.raw(self.join_secret)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        # Keyword arguments are evaluated left to right, i.e. in wire order.
        return cls(node=NodeAddr._read(r), cluster_id=r.raw(16), join_secret=r.raw(32))


class BlobTicket(BaseModel):
    """Where to fetch a blob and how to verify it; `capability` is the provider's business."""

    model_config = _MODEL_CONFIG
    PREFIX: ClassVar[str] = "p2pblob"
    KIND: ClassVar[str] = "blob"

    provider: NodeAddr
    hash: _Bytes32
    """BLAKE3 of the content."""
    size: Annotated[int, Strict(), Field(ge=0, le=_MAX_U64)]
    root: _Bytes32
    """Verification root of the blob's block-hash list."""
    capability: Annotated[bytes, Strict(), Field(max_length=_MAX_U8, repr=False)] = b""

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def root_hex(self) -> str:
        return self.root.hex()

    def _write(self, w: Writer) -> None:
        self.provider._write(w)
        w.raw(self.hash)
        w.u64(self.size)
        w.raw(self.root)
        w.short_bytes(self.capability)

    @classmethod
    def _read(cls, r: Reader) -> Self:
        return cls(
            provider=NodeAddr._read(r),
            hash=r.raw(32),
            size=r.u64(),
            root=r.raw(32),
            capability=r.short_bytes(),
        )


Ticket = JoinTicket | BlobTicket
_T = TypeVar("_T", bound=Ticket)
_KINDS: tuple[type[Ticket], ...] = (JoinTicket, BlobTicket)


def encode(ticket: Ticket) -> str:
    """The copy-paste text. Not `__str__`: join secrets must not reach logs through f-strings."""
    w = Writer()
    ticket._write(w)
    return ticket.PREFIX + seal(w.getvalue())


def parse(text: str) -> Ticket:
    """Parse a ticket of any kind; raises only `TicketError`."""
    kind, payload = _identify(text)
    if kind is None:
        expected = " or ".join(k.PREFIX for k in _KINDS)
        raise TicketError(f"unknown ticket kind: expected a ticket starting with {expected}")
    return _decode(kind, payload)


def parse_join(text: str) -> JoinTicket:
    """Parse a join ticket; raises only `TicketError`."""
    return _parse_as(JoinTicket, text)


def parse_blob(text: str) -> BlobTicket:
    """Parse a blob ticket; raises only `TicketError`."""
    return _parse_as(BlobTicket, text)


def _identify(text: str) -> tuple[type[Ticket] | None, str]:
    """Normalise pasted text and split off the kind prefix (None if no kind matches): case,
    surrounding quotes and whitespace anywhere (a ticket wrapped over lines) do not count."""
    clean = "".join(text.split()).strip(_QUOTES).translate(_ASCII_LOWER)
    if not clean:
        raise TicketError("ticket is empty")
    for kind in _KINDS:
        if clean.startswith(kind.PREFIX):
            return kind, clean[len(kind.PREFIX) :]
    return None, clean


def _parse_as(kind: type[_T], text: str) -> _T:
    found, payload = _identify(text)
    if found is None:
        raise TicketError(
            f"not a {kind.KIND} ticket: expected a ticket starting with {kind.PREFIX}"
        )
    if found is not kind:
        raise TicketError(
            f"not a {kind.KIND} ticket: it starts with {found.PREFIX!r} (a {found.KIND} ticket)"
        )
    return _decode(kind, payload)


def _decode(kind: type[_T], payload: str) -> _T:
    reader = unseal(payload)
    try:
        ticket = cast(_T, kind._read(reader))  # `_read` returns Self: the class asked for
    except ValidationError as e:
        # Only reachable with a correct checksum, i.e. a ticket crafted or written by a buggy
        # encoder.
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TicketError(f"ticket contains an invalid {where}: {first['msg']}") from e
    reader.finish()
    return ticket
