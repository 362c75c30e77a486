"""What the blob store raises, in one place::

    StoreError            the store could not do what was asked (message for people)
     +-- BlobNotFound     no such blob (or partial download) is stored
     +-- BlobCorrupt      bytes did not match their hash; nothing bad was kept or served
     +-- BlobInUse        being read, served or written, or pinned/tagged
     +-- StoreFull        the disk (or the user's quota) is full: not the caller's fault

OSError from the disk becomes a StoreError saying what was being done (`os_errors`).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from p2pnode.fsutil import disk_full


class StoreError(Exception):
    """The store could not do what was asked; the message is meant for people."""


class BlobNotFound(StoreError):
    """No complete blob (or partial download) with that hash is stored."""


class BlobCorrupt(StoreError):
    """Bytes did not match the hash they were supposed to have; nothing bad was kept."""


class BlobInUse(StoreError):
    """The blob is being read, served or written, or is pinned/tagged."""


class StoreFull(StoreError):
    """The disk or quota is full (ENOSPC, EDQUOT); a type, since the OSError behind it may be lost
    on the way up (a nursery's group is collapsed `from None`)."""


def store_error(exc: OSError, doing: str) -> StoreError:
    if disk_full(exc):
        return StoreFull(f"disk full while {doing}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = f"{exc.filename} " if exc.filename else ""
        return StoreError(f"permission denied: {where}(while {doing})")
    return StoreError(f"{doing} failed: {exc.strerror or exc}")


@contextlib.contextmanager
def os_errors(doing: str) -> Iterator[None]:
    """Turn OSError into StoreError with a message saying what was being done."""
    try:
        yield
    except OSError as exc:
        raise store_error(exc, doing) from exc
