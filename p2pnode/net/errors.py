"""One clean line from an iroh error, the only place that reads `IrohError.message()`.

The bindings' messages are Rust error chains (`Type::Variant (/path/to/src.rs:12:34)`, a
`Caused by:` line, indented causes) or Rust debug output (`ConnectionLost(ApplicationClosed(
ApplicationClose { error_code: 3, reason: b"done" }))`). Logs and the terminal get one line
without source paths: `connecting: connection error: timed out`, `connection lost: closed by
the peer (3: done)`. A peer that speaks none of the protocols asked for (another version of
p2pnode after an ALPN bump) is said so in plain words (`no_common_protocol`, `version_mismatch`).
"""

from __future__ import annotations

import re

import iroh

_RUST_LOCATION = re.compile(r"\s*\([^()]*\.rs:\d+:\d+\)")
_TYPE_VARIANT = re.compile(r"^\w+::(\w+)$")
_CLOSE = re.compile(r'\w*Closed\(\w*Close \{ error_code: (\w+),.*?reason: b"(.*?)" \}\)')
_RESET = re.compile(r"^Reset\((\w+)\)$")
_CALL = re.compile(r"\b([A-Z][a-z0-9]*(?:[A-Z][a-z0-9]*)*)\(")
_CAMEL_TOKEN = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# TLS alert 120 (no_application_protocol): the dialler's side says "error 120: peer doesn't
# support any known protocol", the accepting side "crypto: Some(NoApplicationProtocol)".
_NO_COMMON_PROTOCOL = ("NoApplicationProtocol", "error 120:", "support any known protocol")
NO_COMMON_PROTOCOL = "no protocol in common with the peer (it runs another version of p2pnode?)"


def _words(identifier: str) -> str:
    return _CAMEL.sub(" ", identifier).lower()


def _clean(line: str) -> str:
    line = _RUST_LOCATION.sub("", line).strip().removeprefix("Caused by:").strip()
    if variant := _TYPE_VARIANT.match(line):
        return _words(variant.group(1))
    if reset := _RESET.match(line):
        return f"stream reset by the peer (code {reset.group(1)})"
    line = _CLOSE.sub(
        lambda m: f"closed by the peer ({m.group(1)}{': ' + m.group(2) if m.group(2) else ''})",
        line,
    )
    opened = len(_CALL.findall(line))
    line = _CALL.sub(lambda m: _words(m.group(1)) + ": ", line)
    if opened and line.endswith(")" * opened):
        line = line[:-opened]
    return _CAMEL_TOKEN.sub(lambda m: _words(m.group(0)), line)


def one_line(message: str) -> str:
    """Any message from the bindings (an error's, a connection's close reason) as one clean line."""
    parts: list[str] = []
    for raw in message.splitlines():
        line = _clean(raw)
        if line and line not in parts:
            parts.append(line)
    return ": ".join(parts)


def iroh_message(exc: iroh.IrohError) -> str:
    if no_common_protocol(exc):
        return NO_COMMON_PROTOCOL
    return one_line(exc.message()) or f"transport error ({exc.kind().name.lower()})"


def no_common_protocol(exc: iroh.IrohError) -> bool:
    """The TLS handshake failed because the peer offers none of the protocols (ALPNs) asked for:
    it answered, but speaks another version of the protocol (README "Upgrades and
    compatibility")."""
    message = exc.message()
    return any(mark in message for mark in _NO_COMMON_PROTOCOL)


def version_mismatch(peer: str, alpn: bytes, theirs: str | None, ours: str) -> str:
    """One line for a peer that does not speak `alpn`: which version it runs, if its heartbeat
    said (`theirs`), and which side to upgrade."""
    said = f"peer {peer[:10]} does not speak {alpn.decode(errors='replace')}"
    if theirs is None:
        return (
            f"{said}: it runs another version of p2pnode (this node {ours}); upgrade the older one"
        )
    advice = {-1: ": upgrade it", 1: ": upgrade this node"}.get(_compare(theirs, ours), "")
    return f"{said}; it runs p2pnode {theirs} (this node {ours}){advice}"


def _compare(a: str, b: str) -> int:
    """-1, 0 or 1 as release `a` is older, the same or newer than `b`; 0 when either is not
    dotted numbers (nothing to advise)."""
    try:
        x, y = (tuple(int(part) for part in v.split(".")) for v in (a, b))
    except ValueError:
        return 0
    return (x > y) - (x < y)


def closed_on_purpose(exc: iroh.IrohError) -> bool:
    """An application closed the connection deliberately (the peer's: shutdown, done; or ours:
    a silent or removed peer): not a fault of whoever reads the stream."""
    message = exc.message()
    return "ApplicationClosed(" in message or "LocallyClosed" in message
