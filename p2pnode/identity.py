"""The node's long-lived secret key: created once, kept private in the data folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import iroh

KEY_FILE = "secret.key"


def load_or_create_secret_key(data_dir: Path) -> iroh.SecretKey:
    """Return the node's key, creating it on first start; the endpoint id is stable across restarts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    raw = path.read_bytes()
    if len(raw) != 32:
        raise ValueError(f"{path} is not a node key (expected 32 bytes, found {len(raw)}); move it away to start afresh")
    return iroh.SecretKey.from_bytes(raw)


def _create_key_file(path: Path) -> None:
    """Mode 0600 from the first instant; a hard link publishes it whole, and a racing start keeps the winner's key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, iroh.SecretKey.generate().to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
    os.unlink(tmp)
