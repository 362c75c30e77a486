"""Tags and pins: the roots that keep blobs from GC, in DATA/blobs/meta.sqlite.

A tag names a hash (stored or not yet fetched); a pin keeps a stored hash. The table does no
locking of its own: the store calls it under the lock that also guards its in-use counts, so
that GC, removal and commits never race a new reference.

Durability: WAL with `synchronous=NORMAL`, except that a pin is fsynced before it returns. A
commit is in the WAL when it returns, so killing the process (kill -9, OOM) loses nothing; only
an OS crash or power loss can drop the last seconds of commits. Every tag is a job's hold
(`jobs.model.job_tag`), taken next to a change of the job's record in the job store, which makes
the same promise (NORMAL). What a lost tag can do: a job that is live after the power loss keeps
its blobs by its record whatever its tags say (GC's `protected`); a job that finished in those
seconds and whose record survived (the two files reach the disk independently) may have a blob
freed by a later GC, an output then being left only on the worker that made it (kept there until
retention). FULL would cost every job submit an fsync (one per tag) to rule that out. A pin is a
person's (`blob add`, `blob pin`): nothing else remembers it and losing it would let GC delete
their data, so it alone is committed with FULL (which makes every earlier commit durable too).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

TAGS_LISTED = 8
"""Tags a blob's description names (the first, by name): a module that every job used is held by
one tag per job, thousands, and a description must not cost more for it."""
SCHEMA_VERSION = 1
"""1: `tag_counts` kept by triggers, and the (hash, name) index (version 0 had neither)."""


class Refs(NamedTuple):
    pinned: bool
    tags: tuple[str, ...]
    """The first `TAGS_LISTED` tags, by name."""
    tag_count: int


class RefTable:
    """Every read of one hash costs the same however many tags it has: its tags are read in
    name order from an index and only as far as needed, and their number is kept per hash by
    triggers (counting rows would read them all). The counts are rebuilt at every open (one pass
    over the index): a previous release run on this table in between (a downgrade) keeps the
    triggers but replaces tags with `INSERT OR REPLACE`, whose implied delete fires none, so its
    counts only grow and a blob would never be collected."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.executescript(
                """
                PRAGMA journal_mode = WAL;
                PRAGMA synchronous = NORMAL;
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, hash TEXT NOT NULL);
                DROP INDEX IF EXISTS tags_by_hash;
                CREATE INDEX IF NOT EXISTS tags_of_hash ON tags (hash, name);
                CREATE TABLE IF NOT EXISTS pins (hash TEXT PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS tag_counts (hash TEXT PRIMARY KEY, n INTEGER NOT NULL);
                CREATE TRIGGER IF NOT EXISTS tag_added AFTER INSERT ON tags BEGIN
                    INSERT INTO tag_counts VALUES (new.hash, 1)
                        ON CONFLICT (hash) DO UPDATE SET n = n + 1;
                END;
                CREATE TRIGGER IF NOT EXISTS tag_removed AFTER DELETE ON tags BEGIN
                    UPDATE tag_counts SET n = n - 1 WHERE hash = old.hash;
                    DELETE FROM tag_counts WHERE hash = old.hash AND n = 0;
                END;
                CREATE TRIGGER IF NOT EXISTS tag_moved AFTER UPDATE OF hash ON tags BEGIN
                    UPDATE tag_counts SET n = n - 1 WHERE hash = old.hash;
                    DELETE FROM tag_counts WHERE hash = old.hash AND n = 0;
                    INSERT INTO tag_counts VALUES (new.hash, 1)
                        ON CONFLICT (hash) DO UPDATE SET n = n + 1;
                END;
                COMMIT;
                """
            )
            self._db.executescript(
                f"""
                BEGIN IMMEDIATE;
                DELETE FROM tag_counts;
                INSERT INTO tag_counts SELECT hash, count(*) FROM tags GROUP BY hash;
                PRAGMA user_version = {SCHEMA_VERSION};
                COMMIT;
                """
            )
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def of(self, h: str) -> Refs:
        """Whether a hash is pinned, its first tags and how many it has."""
        pinned = self._db.execute("SELECT 1 FROM pins WHERE hash = ?", (h,)).fetchone() is not None
        query = "SELECT name FROM tags WHERE hash = ? ORDER BY name LIMIT ?"
        tags = tuple(r[0] for r in self._db.execute(query, (h, TAGS_LISTED)))
        count = self._db.execute("SELECT n FROM tag_counts WHERE hash = ?", (h,)).fetchone()
        return Refs(pinned, tags, count[0] if count else 0)

    def keeps(self, h: str) -> bool:
        return any(
            self._db.execute(f"SELECT 1 FROM {table} WHERE hash = ?", (h,)).fetchone()
            for table in ("pins", "tag_counts")
        )

    def add(self, h: str, tag: str | None, pin: bool) -> None:
        """Tag first: a pin's fsync then makes the tag durable too."""
        if tag is not None:
            self.set_tag(tag, h)
        if pin:
            self.pin(h)

    def set_tag(self, name: str, h: str) -> None:
        self._db.execute(
            "INSERT INTO tags (name, hash) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash",
            (name, h),
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """`set_tag` for each, in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO tags (name, hash) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash",
                tags.items(),
            )

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
