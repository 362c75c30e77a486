"""One clean line from an iroh error, the only place that reads `IrohError.message()`.

The bindings' messages are Rust error chains (`Type::Variant (/path/to/src.rs:12:34)`, a
`Caused by:` line, indented causes) or Rust debug output (`ConnectionLost(ApplicationClosed(
ApplicationClose { error_code: 3, reason: b"done" }))`). Logs and the terminal get one line
without source paths: `connecting: connection error: timed out`, `connection lost: closed by
the peer (3: done)`.
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
    return one_line(exc.message()) or f"transport error ({exc.kind().name.lower()})"


def closed_on_purpose(exc: iroh.IrohError) -> bool:
    """An application closed the connection deliberately (the peer's: shutdown, done; or ours:
    a silent or removed peer): not a fault of whoever reads the stream."""
    message = exc.message()
    return "ApplicationClosed(" in message or "LocallyClosed" in message
