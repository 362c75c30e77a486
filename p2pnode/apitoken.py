"""The node's API token file, `DATA/api-token`: created by the node at start, read by the CLI.

Below the node and the API (stdlib and `fsutil` only) so that the node creates the token without
importing the API, and the CLI reads it without importing the server.
"""

from __future__ import annotations

from pathlib import Path

from p2pnode.fsutil import create_once

TOKEN_FILE = "api-token"


class TokenError(Exception):
    """No usable API token; the message says where one was looked for, for a person."""


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The node's API token, generated at first start (mode 0600 from the first instant)."""
    import secrets  # here: the CLI reads the token on every command, and never creates one

    path = token_path(data_dir)
    if not path.exists():
        create_once(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise TokenError(f"no API token: {path} does not exist") from None
    except OSError as exc:
        raise TokenError(f"no API token: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"no API token: {path} is empty")
    return token
