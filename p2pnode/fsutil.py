"""Small durable-file helpers shared by every module that keeps state in the data folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from pydantic import BaseModel  # only typed here: the CLI reads the API token through this


def disk_full(exc: BaseException) -> bool:
    """The disk or the quota is full: the node's state, never the request's fault."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write, fsync, rename: after a crash the file holds either the old or the new content, and
    after a failed write (a full disk) no temporary file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_synced(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # its creation may be what failed
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """`data` on disk (fsynced) in a file created with `mode`, however short the writes come."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(path: Path, model: BaseModel, mode: int = 0o644) -> None:
    write_atomic(path, model.model_dump_json(indent=2).encode(), mode)


def create_once(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create a private file whole: `mode` from the first instant, published by a hard link, so a
    reader never sees it half written and of two racing creators the first one's content wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        _write_synced(tmp, data, mode)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # its creation may be what failed


def make_private(folder: Path) -> None:
    """Create `folder` 0700, or tighten it to 0700 if it exists looser (older versions created the
    blob store 0755): only its owner may enter. Its files keep their modes: entering is denied."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)


class NotRegularFile(ValueError):
    """The path is a FIFO, a device or a folder: nothing to read whole."""


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading, or raise NotRegularFile; a FIFO never blocks the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file")
    return open(fd, "rb", buffering=0)


class FileReplaced(ValueError):
    """The path names another file than the one opened from it a moment ago."""


def open_real(path: Path) -> tuple[BinaryIO, Path]:
    """`open_regular`, and where the opened file is: `path` with its symlinks resolved, checked
    after the open to name that very file (same device and inode), or FileReplaced.

    Resolved before the open instead, the path could name another file by the time it is opened
    (a folder on the way swapped for a symlink meanwhile): what a caller checks of this path (not
    in a private folder) holds for the file it reads from the returned descriptor.
    """
    f = open_regular(path)
    try:
        real = Path(os.path.realpath(path))
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(real), os.fstat(f.fileno())):
                return f, real
        raise FileReplaced(f"{path} was replaced while it was being opened")
    except BaseException:
        f.close()
        raise


class FolderInUse(OSError):
    """Another process holds the folder's lock: two nodes on one data folder would share one
    identity, one job database and one blob store, and corrupt each other's view of all three."""


def lock_folder(folder: Path, name: str = "node.lock") -> int:
    """Take `folder`'s exclusive lock for as long as the returned descriptor stays open (the
    kernel drops it when the process dies, so a crash leaves nothing to clean up)."""
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(f"{folder} is in use by another running node") from None
    return fd
