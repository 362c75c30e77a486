"""The node's long-lived secret key: created once, kept private in the data folder."""

from __future__ import annotations

from pathlib import Path

import iroh

from p2pnode.fsutil import create_once

KEY_FILE = "secret.key"


def load_or_create_secret_key(data_dir: Path) -> iroh.SecretKey:
    """Return the node's key, creating it on first start; the endpoint id is stable across
    restarts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if not path.exists():
        create_once(path, iroh.SecretKey.generate().to_bytes())
    raw = path.read_bytes()
    if len(raw) != 32:
        raise ValueError(
            f"{path} is not a node key (expected 32 bytes, found {len(raw)}); move it away to "
            "start afresh"
        )
    return iroh.SecretKey.from_bytes(raw)
