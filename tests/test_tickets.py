"""Tests for the ticket codec: round trips, damage detection and error messages."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tickets
from tickets import (
    BlobTicket,
    JoinTicket,
    NodeAddr,
    TicketError,
    encode,
    parse,
    parse_blob,
    parse_join,
)

ROOT = Path(__file__).resolve().parents[1]
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"

# --- independent re-implementation of the framing, so tests pin the wire format ---


def frame(prefix: str, body: bytes) -> str:
    """prefix + base32(body + blake3(body)[:4]), body starting with its version byte."""
    raw = body + blake3.blake3(body).digest()[:4]
    return prefix + base64.b32encode(raw).decode().rstrip("=").lower()


def unframe(text: str) -> tuple[str, bytes]:
    prefix, payload = text[:7], text[7:]
    return prefix, base64.b32decode(payload.upper() + "=" * (-len(payload) % 8))


# --- strategies ---

ports = st.integers(0, 65535)
ipv4 = st.builds(lambda ip, port: f"{ip}:{port}", st.ip_addresses(v=4), ports)
ipv6 = st.builds(lambda ip, port: f"[{ip}]:{port}", st.ip_addresses(v=6), ports)
relay_urls = (
    st.none()
    | st.text(min_size=1, max_size=40)
    | st.builds("https://{}/".format, st.text(max_size=20))
)
node_addrs = st.builds(
    NodeAddr,
    node_id=st.binary(min_size=32, max_size=32),
    relay_url=relay_urls,
    direct_addresses=st.lists(ipv4 | ipv6, max_size=4),
)
join_tickets = st.builds(
    JoinTicket,
    node=node_addrs,
    cluster_id=st.binary(min_size=16, max_size=16),
    join_secret=st.binary(min_size=32, max_size=32),
)
blob_tickets = st.builds(
    BlobTicket,
    provider=node_addrs,
    hash=st.binary(min_size=32, max_size=32),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    capability=st.binary(max_size=255),
)
any_tickets = join_tickets | blob_tickets

NODE = NodeAddr.from_hex("ab" * 32, "https://relay.example/", ["127.0.0.1:4433", "[::1]:4433"])
JOIN = JoinTicket(node=NODE, cluster_id=bytes(range(16)), join_secret=bytes(range(32, 64)))
BLOB = BlobTicket(provider=NODE, hash=b"h" * 32, size=12345, root=b"r" * 32, capability=b"cap")


def rejected(text: str) -> str:
    """Assert every parser rejects `text` with TicketError (and nothing else); return parse's
    message."""
    for parser in (parse, parse_join, parse_blob):
        with pytest.raises(TicketError):
            parser(text)
    with pytest.raises(TicketError) as info:
        parse(text)
    return str(info.value)


def assert_rejected(text: str) -> None:
    """Cheaper `rejected` for exhaustive loops: any exception but TicketError propagates."""
    try:
        parse(text)
    except TicketError:
        return
    pytest.fail(f"accepted damaged ticket {text!r}")


# --- round trips and format ---


@given(join_tickets)
def test_join_round_trip(ticket: JoinTicket) -> None:
    text = encode(ticket)
    assert text.startswith("p2pjoin")
    assert parse_join(text) == ticket
    assert parse(text) == ticket


@given(blob_tickets)
def test_blob_round_trip(ticket: BlobTicket) -> None:
    text = encode(ticket)
    assert text.startswith("p2pblob")
    assert parse_blob(text) == ticket
    assert parse(text) == ticket


@given(any_tickets)
def test_json_round_trip(ticket: JoinTicket | BlobTicket) -> None:
    assert type(ticket).model_validate_json(ticket.model_dump_json()) == ticket


def test_json_uses_hex_for_bytes() -> None:
    dumped = BLOB.model_dump(mode="json")
    assert dumped["provider"]["node_id"] == "ab" * 32
    assert dumped["hash"] == BLOB.hash_hex


def test_wire_format_is_pinned() -> None:
    node_part = (
        b"\xab" * 32
        + b"\x01" + struct.pack(">H", 22) + b"https://relay.example/"
        + b"\x02"
        + b"\x04" + bytes([127, 0, 0, 1]) + struct.pack(">H", 4433)
        + b"\x06" + bytes(15) + b"\x01" + struct.pack(">H", 4433)
    )  # fmt: skip
    join_body = b"\x01" + node_part + bytes(range(16)) + bytes(range(32, 64))
    assert encode(JOIN) == frame("p2pjoin", join_body)
    blob_body = b"\x01" + node_part + b"h" * 32 + struct.pack(">Q", 12345) + b"r" * 32 + b"\x03cap"
    assert encode(BLOB) == frame("p2pblob", blob_body)


def test_hex_helpers_and_secret_not_in_repr() -> None:
    assert NODE.node_id_hex == "ab" * 32
    assert JOIN.cluster_id_hex == bytes(range(16)).hex()
    assert BLOB.hash_hex == (b"h" * 32).hex()
    assert BLOB.root_hex == (b"r" * 32).hex()
    assert repr(bytes(range(32, 64))) not in repr(JOIN)
    assert "cap" not in repr(BLOB)


def test_case_and_surrounding_whitespace_are_ignored() -> None:
    text = encode(JOIN)
    for variant in (
        text.upper(),
        text.swapcase(),
        f"  \n\t{text}\r\n ",
        text[:20].upper() + text[20:],
    ):
        assert parse_join(variant) == JOIN


def test_quotes_and_line_breaks_of_a_paste_are_ignored() -> None:
    """A ticket copied out of a chat, a mail or a shell line: quoted (typographic quotes too) or
    wrapped over lines. No ticket character is a quote or a space, and the checksum still
    catches what is damaged."""
    text = encode(JOIN)
    for variant in (
        f'"{text}"',
        f"'{text}'\n",
        f"`{text}`",
        f"<{text}>",
        f"\u201c{text}\u201d",
        f"\u2018{text}\u2019",
        f"{text[:40]}\n{text[40:80]}\r\n  {text[80:]}",
        f'"{text[:50]}\n{text[50:]}"\n',
    ):
        assert parse_join(variant) == JOIN, variant
    i = next(i for i in range(30, len(text)) if text[i] != text[i + 1])
    swapped = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    assert "checksum does not match" in rejected(f'"{swapped}"')


def test_only_ascii_is_case_folded() -> None:
    # "\u212a" (KELVIN SIGN).lower() == "k"; it must not sneak in as a base32 digit.
    assert "unexpected character" in rejected("p2pjoin" + "\u212a" * 8)


# --- damage ---


@pytest.mark.parametrize("ticket", [JOIN, BLOB], ids=["join", "blob"])
def test_every_truncation_is_rejected(ticket: JoinTicket | BlobTicket) -> None:
    text = encode(ticket)
    for i in range(len(text)):
        assert_rejected(text[:i])
        assert_rejected(text[i + 1 :])


@settings(max_examples=50)
@given(any_tickets, st.data())
def test_random_truncation_is_rejected(
    ticket: JoinTicket | BlobTicket, data: st.DataObject
) -> None:
    text = encode(ticket)
    rejected(text[: data.draw(st.integers(0, len(text) - 1))])


@pytest.mark.parametrize("ticket", [JOIN, BLOB], ids=["join", "blob"])
def test_every_single_character_substitution_is_rejected(ticket: JoinTicket | BlobTicket) -> None:
    text = encode(ticket)
    for i, original in enumerate(text):
        for replacement in BASE32 + "0189=-_ ":
            if replacement != original:
                assert_rejected(text[:i] + replacement + text[i + 1 :])


@given(any_tickets, st.data())
def test_random_substitution_is_rejected(
    ticket: JoinTicket | BlobTicket, data: st.DataObject
) -> None:
    text = encode(ticket)
    i = data.draw(st.integers(0, len(text) - 1))
    # The text is lowercase ASCII, so its ASCII uppercase is the only accepted spelling variant.
    replacement = data.draw(st.characters().filter(lambda c: c not in (text[i], text[i].upper())))
    rejected(text[:i] + replacement + text[i + 1 :])


@pytest.mark.parametrize("ticket", [JOIN, BLOB], ids=["join", "blob"])
def test_every_bit_flip_in_body_is_rejected(ticket: JoinTicket | BlobTicket) -> None:
    prefix, raw = unframe(encode(ticket))
    for byte in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[byte] ^= 1 << bit
            text = prefix + base64.b32encode(bytes(flipped)).decode().rstrip("=").lower()
            # Only a 32-bit checksum collision could let this through; assert it does not.
            assert_rejected(text)


def test_non_canonical_last_character_is_rejected() -> None:
    # The last character carries unused low bits, which plain b32decode ignores.
    text = encode(JOIN)
    _, raw = unframe(text)
    last = BASE32.index(text[-1])
    variants = [text[:-1] + BASE32[last ^ spare] for spare in range(1, 32)]
    same_bytes = [v for v in variants if unframe(v)[1] == raw]
    assert same_bytes, "fixture must leave unused bits in its last character"
    for variant in same_bytes:
        assert "last character" in rejected(variant)


# --- specific messages ---


def test_wrong_kind() -> None:
    with pytest.raises(
        TicketError, match=r"not a join ticket: it starts with 'p2pblob' \(a blob ticket\)"
    ):
        parse_join(encode(BLOB))
    with pytest.raises(
        TicketError, match=r"not a blob ticket: it starts with 'p2pjoin' \(a join ticket\)"
    ):
        parse_blob(encode(JOIN))


def test_unknown_version() -> None:
    _, raw = unframe(encode(JOIN))
    text = frame("p2pjoin", b"\x02" + raw[1:-4])
    with pytest.raises(
        TicketError, match=r"unknown ticket version 2 \(this p2pnode understands version 1\)"
    ):
        parse_join(text)
    assert "version 2" in rejected(text)


def test_trailing_bytes() -> None:
    _, raw = unframe(encode(JOIN))
    assert rejected(frame("p2pjoin", raw[:-4] + b"xyz")) == "ticket has 3 unexpected trailing bytes"


def test_checksum_mismatch_message() -> None:
    _, raw = unframe(encode(JOIN))
    raw = raw[:-1] + bytes([raw[-1] ^ 1])
    text = "p2pjoin" + base64.b32encode(raw).decode().rstrip("=").lower()
    assert rejected(text) == "ticket checksum does not match (was it copied completely?)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "ticket is empty"),
        (" \n\t ", "ticket is empty"),
        ("hello world", "unknown ticket kind: expected a ticket starting with p2pjoin or p2pblob"),
        ("blobabcdef", "unknown ticket kind"),
        ("p2pjoin", "ticket is truncated"),
        ("p2pjoinaaaa", "ticket is truncated"),
        ("p2pjoin!!!!", "not valid base32"),
        ("p2pjoin1234", "not valid base32"),
        ("p2pjoinabc", "impossible length"),
        ("p2pjoin héllo", "not valid base32"),
        ("\x00\x01", "unknown ticket kind"),
    ],
)
def test_garbage_messages(text: str, message: str) -> None:
    assert message in rejected(text)


def test_parse_join_on_garbage_names_expected_prefix() -> None:
    with pytest.raises(
        TicketError, match="not a join ticket: expected a ticket starting with p2pjoin"
    ):
        parse_join("nonsense")


def test_invalid_fields_behind_valid_checksum() -> None:
    node = b"\x00" * 32
    cases = {
        b"\x02": "flag byte is 2",  # relay flag
        b"\x01\x00\x00\x00": "relay_url",  # present but empty
        b"\x01\x00\x02\xff\xfe\x00": "not valid UTF-8",
        b"\x00\x01\x05": "unknown type 5",  # direct address tag
    }
    for fields, message in cases.items():
        body = b"\x01" + node + fields + bytes(48)
        assert message in rejected(frame("p2pjoin", body))


@given(any_tickets, st.data())
def test_mutated_body_with_valid_checksum_parses_or_raises_ticket_error(
    ticket: JoinTicket | BlobTicket, data: st.DataObject
) -> None:
    """Crafted bodies get past the checksum; decoding them must still fail only with TicketError,
    and anything accepted must re-encode to exactly the same text (one spelling per ticket)."""
    prefix, raw = unframe(encode(ticket))
    body = bytearray(raw[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(1, len(body)))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if action == "replace" and i < len(body):
            body[i] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        else:
            del body[i : i + data.draw(st.integers(1, 3))]
    text = frame(prefix, bytes(body))
    try:
        result = parse(text)
    except TicketError:
        return
    assert encode(result) == text


@given(st.text(max_size=60))
def test_arbitrary_text_only_raises_ticket_error(text: str) -> None:
    for parser in (parse, parse_join, parse_blob):
        try:
            parser(text)
        except TicketError:
            pass


@given(st.sampled_from(["p2pjoin", "p2pblob", "P2PJOIN"]), st.text(alphabet=BASE32, max_size=120))
def test_arbitrary_base32_only_raises_ticket_error(prefix: str, payload: str) -> None:
    with pytest.raises(TicketError):
        parse(prefix + payload)


# --- model validation ---


@pytest.mark.parametrize(
    "addr",
    [
        "localhost:4433",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:+1",
        "1.2.3.4:\u0663",
        "1.2.3.4:" + "9" * 5000,
        "::1:4433",
        "[1.2.3.4]:1",
        "[fe80::1%eth0]:1",
        " 1.2.3.4:1",
        "",
    ],
)
def test_bad_direct_addresses_are_rejected(addr: str) -> None:
    with pytest.raises(ValueError, match="not an IP socket address"):
        NodeAddr(node_id=bytes(32), direct_addresses=[addr])


def test_direct_addresses_are_canonicalised() -> None:
    node = NodeAddr(
        node_id=bytes(32), direct_addresses=["[::0001]:4433", "[2001:DB8::1]:01", "10.0.0.1:0"]
    )
    assert node.direct_addresses == ["[::1]:4433", "[2001:db8::1]:1", "10.0.0.1:0"]


def test_field_limits() -> None:
    NodeAddr(node_id=bytes(32), direct_addresses=["1.1.1.1:1"] * 255)
    with pytest.raises(ValueError):
        NodeAddr(node_id=bytes(32), direct_addresses=["1.1.1.1:1"] * 256)
    long_url = "é" * (65535 // 2)
    node = NodeAddr(node_id=bytes(32), relay_url=long_url)
    ticket = JoinTicket(node=node, cluster_id=bytes(16), join_secret=bytes(32))
    assert parse(encode(ticket)).node.relay_url == long_url
    for bad in ("x" * 65536, "", "\ud800"):
        with pytest.raises(ValueError):
            NodeAddr(node_id=bytes(32), relay_url=bad)
    for bad_id in (bytes(31), bytes(33), "a" * 32, bytearray(32)):
        with pytest.raises(ValueError):
            NodeAddr(node_id=bad_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BlobTicket(provider=NODE, hash=bytes(32), size=1, root=bytes(32), capability=bytes(256))
    for bad_size in (-1, 2**64, True):
        with pytest.raises(ValueError):
            BlobTicket(provider=NODE, hash=bytes(32), size=bad_size, root=bytes(32))
    with pytest.raises(ValueError):
        JoinTicket(node=NODE, cluster_id=bytes(32), join_secret=bytes(32))


def test_from_hex() -> None:
    assert NodeAddr.from_hex("00" * 32).node_id == bytes(32)
    with pytest.raises(ValueError, match="not hex"):
        NodeAddr.from_hex("zz" * 32)
    with pytest.raises(ValueError):
        NodeAddr.from_hex("00" * 31)


def test_import_does_not_pull_in_a_runtime() -> None:
    code = "import tickets, sys; assert 'iroh' not in sys.modules and 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert tickets.VERSION == 1
