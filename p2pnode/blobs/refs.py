"""Tags and pins: the roots that keep blobs from GC, in DATA/blobs/meta.sqlite.

A tag names a hash (stored or not yet fetched); a pin keeps a stored hash. The table does no
locking of its own: the store calls it under the lock that also guards its in-use counts, so
that GC, removal and commits never race a new reference.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class RefTable:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.executescript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = FULL;
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
        self._db.execute("INSERT OR IGNORE INTO pins (hash) VALUES (?)", (h,))

    def unpin(self, h: str) -> bool:
        return self._db.execute("DELETE FROM pins WHERE hash = ?", (h,)).rowcount > 0

    def drop(self, h: str) -> None:
        """Forget every pin and tag of a hash (a forced removal)."""
        self.unpin(h)
        self._db.execute("DELETE FROM tags WHERE hash = ?", (h,))
