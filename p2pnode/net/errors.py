"""One clean line from an iroh error, the only place that reads `IrohError.message()`.

The bindings' messages are Rust error chains: `Type::Variant (/path/to/src.rs:12:34)`, a
`Caused by:` line, then indented causes. Logs and the terminal get one line without source
paths: `connecting: connection error: timed out`.
"""

from __future__ import annotations

import re

import iroh

_RUST_LOCATION = re.compile(r"\s*\([^()]*\.rs:\d+:\d+\)")
_TYPE_VARIANT = re.compile(r"^\w+::(\w+)$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def iroh_message(exc: iroh.IrohError) -> str:
    parts: list[str] = []
    for line in exc.message().splitlines():
        line = _RUST_LOCATION.sub("", line).strip().removeprefix("Caused by:").strip()
        if variant := _TYPE_VARIANT.match(line):
            line = _CAMEL.sub(" ", variant.group(1)).lower()
        if line and line not in parts:
            parts.append(line)
    return ": ".join(parts) or f"transport error ({exc.kind().name.lower()})"
