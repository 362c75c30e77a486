"""Small durable-file helpers shared by every module that keeps state in the data folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write, fsync, rename: after a crash the file holds either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(path: Path, model: BaseModel, mode: int = 0o644) -> None:
    write_atomic(path, model.model_dump_json(indent=2).encode(), mode)
