"""Small blocking file helpers the store and partial downloads share (call them from threads)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_all(fd: int, data: memoryview) -> None:
    """os.write until everything is written (short writes happen on signals and pipes)."""
    while data.nbytes:
        data = data[os.write(fd, data) :]


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def create(path: Path) -> int:
    """A new file (never an existing one) for this process alone: temp files become blobs."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def tmp_path(tmp_dir: Path) -> Path:
    return tmp_dir / uuid.uuid4().hex


def write_atomic(tmp_dir: Path, dest: Path, data: bytes) -> None:
    """Write a small file via tmp_dir + fsync + rename; the caller fsyncs dest's folder."""
    tmp = tmp_path(tmp_dir)
    try:
        fd = create(tmp)
        try:
            write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        unlink(tmp)
        raise
