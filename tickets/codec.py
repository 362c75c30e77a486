"""Framing shared by every ticket kind: version byte, checksum, base32 text.

Field layouts live in `tickets.kinds`; this module only turns field bytes into
copy-paste text and back, and checks that what comes back is exactly what was
written, so field decoding never has to reason about damaged input.
"""

from __future__ import annotations

import base64
import struct

import blake3

VERSION = 1
CHECKSUM_LEN = 4
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
# Remainders of len % 8 that no unpadded base32 string can have.
_IMPOSSIBLE_LENGTHS = frozenset({1, 3, 6})


class TicketError(ValueError):
    """The only error parsing raises; its message is meant for the person who pasted the ticket."""


def checksum(data: bytes) -> bytes:
    """Catch copy-paste damage (not tampering: anyone can recompute it)."""
    return blake3.blake3(data).digest()[:CHECKSUM_LEN]


def seal(fields: bytes) -> str:
    """Frame field bytes as lowercase unpadded base32 of version + fields + checksum."""
    body = bytes([VERSION]) + fields
    return _b32encode(body + checksum(body))


def unseal(text: str) -> Reader:
    """Undo `seal`, rejecting anything `seal` could not have produced.

    The version is checked before the checksum because a future version may
    checksum differently; its tickets should be reported as newer, not damaged.
    """
    bad = next((c for c in text if c not in _BASE32_ALPHABET), None)
    if bad is not None:
        raise TicketError(f"ticket is not valid base32 (unexpected character {bad!r})")
    if len(text) % 8 in _IMPOSSIBLE_LENGTHS:
        raise TicketError("ticket has an impossible length (was it copied completely?)")
    raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    # b32decode ignores the unused low bits of the last character; insisting on the
    # canonical spelling makes every accepted ticket have exactly one text form.
    if _b32encode(raw) != text:
        raise TicketError("ticket is not valid base32 (its last character is wrong)")
    if len(raw) < 1 + CHECKSUM_LEN:
        raise TicketError("ticket is truncated")
    if raw[0] != VERSION:
        raise TicketError(
            f"unknown ticket version {raw[0]} (this p2pnode understands version {VERSION})"
        )
    body, check = raw[:-CHECKSUM_LEN], raw[-CHECKSUM_LEN:]
    if checksum(body) != check:
        raise TicketError("ticket checksum does not match (was it copied completely?)")
    return Reader(body[1:])


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


class Writer:
    """Big-endian field writer; ranges are the models' job, so struct errors here are bugs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def raw(self, data: bytes) -> None:
        self._buf += data

    def u8(self, value: int) -> None:
        self._buf += struct.pack(">B", value)

    def u16(self, value: int) -> None:
        self._buf += struct.pack(">H", value)

    def u64(self, value: int) -> None:
        self._buf += struct.pack(">Q", value)

    def flag(self, value: bool) -> None:
        self.u8(int(value))

    def short_bytes(self, data: bytes) -> None:
        """u8 length + bytes."""
        self.u8(len(data))
        self.raw(data)

    def text(self, value: str) -> None:
        """u16 length + UTF-8."""
        data = value.encode("utf-8")
        self.u16(len(data))
        self.raw(data)

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """Mirror of `Writer` that raises `TicketError` instead of struct/index/unicode errors."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def raw(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise TicketError("ticket is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self.raw(1)[0]

    def u16(self) -> int:
        (value,) = struct.unpack(">H", self.raw(2))
        return int(value)

    def u64(self) -> int:
        (value,) = struct.unpack(">Q", self.raw(8))
        return int(value)

    def flag(self) -> bool:
        """Only 0 and 1, so each ticket has a single encoding."""
        value = self.u8()
        if value > 1:
            raise TicketError(f"ticket is malformed (flag byte is {value}, expected 0 or 1)")
        return value == 1

    def short_bytes(self) -> bytes:
        return self.raw(self.u8())

    def text(self) -> str:
        data = self.raw(self.u16())
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise TicketError("ticket contains text that is not valid UTF-8") from None

    def finish(self) -> None:
        """Reject leftovers: a longer body means a newer or corrupted layout, not ours."""
        extra = len(self._data) - self._pos
        if extra:
            plural = "" if extra == 1 else "s"
            raise TicketError(f"ticket has {extra} unexpected trailing byte{plural}")
