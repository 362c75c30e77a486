"""Tags and pins: the roots that keep blobs from GC, in DATA/blobs/meta.sqlite.

A tag names a hash (stored or not yet fetched); a pin keeps a stored hash. The table does no
locking of its own: the store calls it under the lock that also guards its in-use counts, so
that GC, removal and commits never race a new reference.

Durability: WAL with `synchronous=NORMAL`, except that a pin is fsynced before it returns. A
commit is in the WAL when it returns, so killing the process (kill -9, OOM) loses nothing; only
an OS crash or power loss can drop the last seconds of commits. For a tag that is the same
promise its holder has: every tag is a job's hold (`jobs.model.job_tag`), written next to the
job's record in the job store, which is itself NORMAL. A job that is live after a power loss is
kept by its record whatever its tags say (GC's `protected`, from the job store); a lost tag of
a job that finished in those seconds at worst lets GC free a blob of a job whose own record was
as likely to be lost. FULL would cost every job submit an fsync (about one per tag) for that.
A pin is a person's (`blob add`, `blob pin`): nothing else remembers it, and losing it would let
GC delete their data, so it alone is committed with FULL (which also makes every earlier commit
in the WAL durable).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


class RefTable:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.executescript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = NORMAL;
                CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS tags_by_hash ON tags (hash);
                CREATE TABLE IF NOT EXISTS pins (hash TEXT PRIMARY KEY);
                """
            )
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def of(self, h: str) -> tuple[bool, tuple[str, ...]]:
        """(pinned, tags) of a hash."""
        pinned = self._db.execute("SELECT 1 FROM pins WHERE hash = ?", (h,)).fetchone() is not None
        tags = tuple(
            r[0]
            for r in self._db.execute("SELECT name FROM tags WHERE hash = ? ORDER BY name", (h,))
        )
        return pinned, tags

    def keeps(self, h: str) -> bool:
        return self.of(h) != (False, ())

    def add(self, h: str, tag: str | None, pin: bool) -> None:
        """Tag first: a pin's fsync then makes the tag durable too."""
        if tag is not None:
            self.set_tag(tag, h)
        if pin:
            self.pin(h)

    def set_tag(self, name: str, h: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO tags (name, hash) VALUES (?, ?)", (name, h))

    def delete_tag(self, name: str) -> bool:
        return self._db.execute("DELETE FROM tags WHERE name = ?", (name,)).rowcount > 0

    def tags(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, hash FROM tags ORDER BY name"))

    def pin(self, h: str) -> None:
        with self._durable():
            self._db.execute("INSERT OR IGNORE INTO pins (hash) VALUES (?)", (h,))

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """Commits in the block are fsynced before they return (see the module's docstring)."""
        self._db.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous = NORMAL")

    def unpin(self, h: str) -> bool:
        return self._db.execute("DELETE FROM pins WHERE hash = ?", (h,)).rowcount > 0

    def drop(self, h: str) -> None:
        """Forget every pin and tag of a hash (a forced removal)."""
        self.unpin(h)
        self._db.execute("DELETE FROM tags WHERE hash = ?", (h,))
