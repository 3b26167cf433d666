"""The merge's incremental state on disk: one SQLite file instead of a dict of records per image.

Two tables make a re-run cheap, keyed as before:

- ``members``: the facts of every image member checked, by (source, name, CRC32, size), or the
  reason it was rejected; a member with a known key is never decoded again;
- ``written``: the file facts of every image written to ``images/``, by ``isic_id``.

A run also fills temporary tables (the current listing of each source, the candidate copies, the
kept images), so duplicate resolution, the quarantine and the final sync read rows from disk in
order instead of holding one record per image in memory: at the 401,059 images of ISIC 2024 a dict
of records cost about 4 KB an image (docs/PERFORMANCE.md, "ISIC 2024 at archive scale").

Writes go in transactions of a batch of members (``commit``), so a run killed midway keeps every
batch it committed. The rollback journal (SQLite's default), not WAL: it keeps the state one file
plus a short-lived journal and needs no shared memory, so it works on every filesystem a data root
may live on (FUSE, network mounts); a commit per few hundred images costs little either way.

A file that is not a readable database (garbage, truncated, another schema) is moved aside as
``merge.sqlite.damaged``, reported in one sentence, and the state starts empty: the lost records
only mean work done again from the files on disk, never an image taken on trust.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..scan_state import check_database

STATE_FILE = "merge.sqlite"
_SCHEMA_VERSION = 1
_FILE_FACTS = ("source", "name", "sha256", "width", "height", "ext", "file_bytes", "exif_orientation", "format")
_MEMBER_FIELDS = ("source", "name", "crc", "size", "isic_id", "status", "reason", "detail", "sha256", "width",
                  "height", "format", "ext", "exif_orientation", "file_bytes")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS members (
    source TEXT NOT NULL, name TEXT NOT NULL, crc INTEGER NOT NULL, size INTEGER NOT NULL,
    isic_id TEXT, status TEXT NOT NULL, reason TEXT, detail TEXT, sha256 TEXT, width INTEGER,
    height INTEGER, format TEXT, ext TEXT, exif_orientation INTEGER, file_bytes INTEGER,
    held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, name, crc, size)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS written (
    isic_id TEXT PRIMARY KEY, source TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, ext TEXT NOT NULL, file_bytes INTEGER NOT NULL,
    exif_orientation INTEGER NOT NULL, format TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {_SCHEMA_VERSION};
"""
# Listings kept between runs, for sources whose listing is slow (an HDF5 file: about 0.3 ms a
# dataset): the listing of ``source`` as made when its file had ``listing_key``, with the facts of
# the listing that are not rows (JSON). Added to state files of the first layout when they open.
_KEPT_LISTINGS = """
CREATE TABLE IF NOT EXISTS kept_listing_files (
    source TEXT PRIMARY KEY, listing_key TEXT NOT NULL, facts TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kept_listings (
    source TEXT NOT NULL, pos INTEGER NOT NULL, name TEXT NOT NULL, crc INTEGER NOT NULL, size INTEGER NOT NULL,
    compress_size INTEGER NOT NULL, header_offset INTEGER NOT NULL, isic_id TEXT,
    PRIMARY KEY (source, pos)) WITHOUT ROWID;
"""
# The run's own tables: the listing being merged and what resolution makes of it (temp: never kept).
_RUN_SCHEMA = """
CREATE TEMP TABLE listing (
    source TEXT NOT NULL, name TEXT NOT NULL, crc INTEGER NOT NULL, size INTEGER NOT NULL,
    compress_size INTEGER NOT NULL, header_offset INTEGER NOT NULL, isic_id TEXT, pos INTEGER NOT NULL);
CREATE INDEX temp.listing_key ON listing (source, name, crc, size);
CREATE INDEX temp.listing_pos ON listing (source, pos);
CREATE TEMP TABLE listed (source TEXT NOT NULL, isic_id TEXT NOT NULL, PRIMARY KEY (source, isic_id)) WITHOUT ROWID;
CREATE TEMP TABLE labelled (isic_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE source_order (source TEXT PRIMARY KEY, ord INTEGER NOT NULL) WITHOUT ROWID;
CREATE TEMP TABLE best (
    isic_id TEXT PRIMARY KEY, source TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, ext TEXT NOT NULL, file_bytes INTEGER NOT NULL,
    exif_orientation INTEGER NOT NULL, format TEXT NOT NULL, image_sources TEXT NOT NULL,
    kept INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID;
CREATE INDEX temp.best_sha ON best (sha256);
CREATE TEMP TABLE copies (
    seq INTEGER PRIMARY KEY, isic_id TEXT NOT NULL, source TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, ext TEXT NOT NULL,
    file_bytes INTEGER NOT NULL, exif_orientation INTEGER NOT NULL, format TEXT NOT NULL);
CREATE INDEX temp.copies_id ON copies (isic_id, seq);
CREATE TEMP TABLE meta_ids (isic_id TEXT PRIMARY KEY, sources TEXT NOT NULL) WITHOUT ROWID;
"""

Log = Callable[[str], None]


class MergeState:
    """The merge's state file, opened once per run; see the module docstring."""

    def __init__(self, state_dir: Path, log: Log, outputs_exist: bool) -> None:
        self.path = Path(state_dir) / STATE_FILE
        # Records of the batch being checked, written to the file by commit() in one statement each.
        self._members: list[tuple[Any, ...]] = []
        self._written: dict[str, tuple[Any, ...]] = {}
        self._looked_up: dict[str, tuple[Any, ...] | None] = {}  # a page of written facts (look_up_written)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        self.fresh = not existed
        self.db = self._open_checked(log)
        if self.fresh and not existed and outputs_exist:
            log(f"merge: state file {self.path} is missing although merged_data/images/ holds files; every "
                "member is checked again, and the images already there are hashed and kept when they match")
        self.db.executescript(_KEPT_LISTINGS + _RUN_SCHEMA)
        # Members held back last run (a check that hit its time limit, perhaps only a loaded machine).
        self.db.execute("DELETE FROM members WHERE held = 1")
        self.db.commit()

    def _open_checked(self, log: Log) -> sqlite3.Connection:
        if self.path.exists():
            problem, db = _check(self.path)
            if db is not None:
                return db
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            Path(f"{self.path}-journal").unlink(missing_ok=True)
            log(f"merge: state file {self.path} {problem}: moved aside to {aside.name} and started empty; "
                "every member is checked again and the images already there are hashed and kept when they match")
            self.fresh = True
        db = _connect(self.path)
        db.executescript(_SCHEMA)
        db.commit()
        return db

    # -- members -------------------------------------------------------------------------------

    def add_listing(self, source: str, rows: Iterable[tuple[str, int, int, int, int, str | None]]) -> None:
        """The image members a source lists now: (name, crc, size, compress_size, header_offset, isic_id)."""
        self.db.executemany(
            "INSERT INTO listing VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((source, name, crc, size, packed, offset, isic_id, pos)
             for pos, (name, crc, size, packed, offset, isic_id) in enumerate(rows)))

    def unseen(self, source: str, after: int = -1, limit: int = -1
               ) -> Iterator[tuple[str, int, int, int, int, str | None, int]]:
        """Listed members of ``source`` with no record yet, in listing order, from listing position
        ``after`` on (exclusive), at most ``limit`` (-1: all); each row ends with its position, so
        the next page starts where this one ended instead of walking the recorded ones again."""
        cursor = self._flushed().execute(
            "SELECT l.name, l.crc, l.size, l.compress_size, l.header_offset, l.isic_id, l.pos FROM listing l "
            "WHERE l.source = ? AND l.pos > ? AND NOT EXISTS (SELECT 1 FROM members m WHERE m.source = l.source "
            "AND m.name = l.name AND m.crc = l.crc AND m.size = l.size) ORDER BY l.pos LIMIT ?",
            (source, after, limit))
        return _fetch_all_in_pages(cursor)

    def kept_listing(self, source: str) -> tuple[str, str] | None:
        """(listing key, facts) of the listing kept for ``source``, or None."""
        row = self.db.execute("SELECT listing_key, facts FROM kept_listing_files WHERE source = ?",
                              (source,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def use_kept_listing(self, source: str) -> None:
        """This run's listing of ``source`` is the kept one (its file is unchanged)."""
        self.db.execute("INSERT INTO listing SELECT source, name, crc, size, compress_size, header_offset, "
                        "isic_id, pos FROM kept_listings WHERE source = ? ORDER BY pos", (source,))

    def keep_listing(self, source: str, listing_key: str, facts: str) -> None:
        """Keep this run's listing of ``source`` for the next run (committed with the listing)."""
        self.forget_kept_listing(source)
        self.db.execute("INSERT INTO kept_listings SELECT source, pos, name, crc, size, compress_size, "
                        "header_offset, isic_id FROM listing WHERE source = ?", (source,))
        self.db.execute("INSERT INTO kept_listing_files VALUES (?, ?, ?)", (source, listing_key, facts))

    def forget_kept_listing(self, source: str) -> None:
        self.db.execute("DELETE FROM kept_listings WHERE source = ?", (source,))
        self.db.execute("DELETE FROM kept_listing_files WHERE source = ?", (source,))

    def count_listed(self, source: str) -> int:
        return int(self._flushed().execute("SELECT COUNT(*) FROM listing WHERE source = ?", (source,)).fetchone()[0])

    def bytes_unseen(self, skip_ids: frozenset[str]) -> int:
        total = 0
        cursor = self._flushed().execute(
            "SELECT l.isic_id, l.size FROM listing l WHERE NOT EXISTS (SELECT 1 FROM members m WHERE "
            "m.source = l.source AND m.name = l.name AND m.crc = l.crc AND m.size = l.size)")
        for isic_id, size in _fetch_all_in_pages(cursor):
            if isic_id not in skip_ids:
                total += size
        return total

    def record_member(self, record: dict[str, Any], held: bool = False) -> None:
        """Record a checked member; written to the file with the next :meth:`commit` (a batch)."""
        self._members.append((*(record.get(k) for k in _MEMBER_FIELDS), int(held)))

    def forget_unlisted(self, source: str) -> None:
        """Drop the records of members ``source`` no longer lists (a replaced download)."""
        self._flushed().execute(
            "DELETE FROM members WHERE source = ? AND NOT EXISTS (SELECT 1 FROM listing l WHERE "
            "l.source = members.source AND l.name = members.name AND l.crc = members.crc AND l.size = members.size)",
            (source,))
        self.db.commit()

    def listed_records(self, source: str) -> Iterator[tuple[dict[str, Any], bool]]:
        """The record of every listed member of ``source`` (those with one), in listing order, each
        with whether its id has a row in the source's own metadata (the ``listed`` table)."""
        cursor = self._flushed().execute(
            f"SELECT {', '.join('m.' + k for k in _MEMBER_FIELDS)}, EXISTS (SELECT 1 FROM listed t WHERE "
            "t.source = l.source AND t.isic_id = m.isic_id) FROM listing l JOIN members m ON "
            "m.source = l.source AND m.name = l.name AND m.crc = l.crc AND m.size = l.size "
            "WHERE l.source = ? ORDER BY l.pos", (source,))
        for row in _fetch_all_in_pages(cursor):
            yield _member_dict(row[:-1]), bool(row[-1])

    def count_rejected(self, source: str) -> int:
        return int(self._flushed().execute(
            "SELECT COUNT(*) FROM listing l JOIN members m ON m.source = l.source AND m.name = l.name AND "
            "m.crc = l.crc AND m.size = l.size WHERE l.source = ? AND m.status != 'ok'", (source,)).fetchone()[0])

    # -- written files ---------------------------------------------------------------------------

    def written(self, isic_id: str) -> dict[str, Any] | None:
        if isic_id in self._written:
            row = self._written[isic_id]
        elif isic_id in self._looked_up:
            row = self._looked_up[isic_id]
        else:
            row = self.db.execute(f"SELECT {', '.join(_FILE_FACTS)} FROM written WHERE isic_id = ?",
                                  (isic_id,)).fetchone()
        return None if row is None else {"isic_id": isic_id, **dict(zip(_FILE_FACTS, row, strict=True))}

    def look_up_written(self, ids: Iterable[str | None]) -> None:
        """Read the written-file facts of a page of ids in one query, for :meth:`written` to answer
        from (a query per image costs more than the image's check on small tiles)."""
        wanted = sorted({i for i in ids if i})
        self._looked_up = dict.fromkeys(wanted)
        for row in self.db.execute(f"SELECT isic_id, {', '.join(_FILE_FACTS)} FROM written WHERE isic_id IN "
                                   "(SELECT value FROM json_each(?))", (json.dumps(wanted),)):
            self._looked_up[row[0]] = tuple(row[1:])

    def record_written(self, isic_id: str, facts: dict[str, Any]) -> None:
        """Record a written file; written to the file with the next :meth:`commit` (a batch)."""
        self._written[isic_id] = tuple(facts[k] for k in _FILE_FACTS)

    def has_written(self) -> bool:
        return self._flushed().execute("SELECT 1 FROM written LIMIT 1").fetchone() is not None

    def forget_unkept_written(self) -> None:
        self._flushed().execute("DELETE FROM written WHERE isic_id NOT IN (SELECT isic_id FROM best WHERE kept = 1)")
        self.db.commit()

    # -- run tables --------------------------------------------------------------------------------

    def fill(self, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows into one of the run's temporary tables (``listed``, ``labelled``, ``source_order``, ...)."""
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return
        marks = ", ".join("?" for _ in first)
        self.db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", first)
        self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)

    def commit(self) -> None:
        """Write the recorded batch and commit: a run killed later keeps it."""
        self._flush()
        self.db.commit()

    def _flushed(self) -> sqlite3.Connection:
        """The connection, once the recorded batch is in it (for queries that read it)."""
        self._flush()
        return self.db

    def _flush(self) -> None:
        if self._members:
            self.db.executemany(
                f"INSERT OR REPLACE INTO members ({', '.join(_MEMBER_FIELDS)}, held) "
                f"VALUES ({', '.join('?' for _ in _MEMBER_FIELDS)}, ?)", self._members)
            self._members = []
        if self._written:
            self.db.executemany(
                f"INSERT OR REPLACE INTO written (isic_id, {', '.join(_FILE_FACTS)}) "
                f"VALUES (?, {', '.join('?' for _ in _FILE_FACTS)})",
                ((isic_id, *facts) for isic_id, facts in self._written.items()))
            self._looked_up.update(self._written)
            self._written = {}

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.db.close()


def _member_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(_MEMBER_FIELDS, row, strict=True))
    if record["status"] == "ok":
        for key in ("reason", "detail"):
            del record[key]
    else:
        for key in ("sha256", "width", "height", "format", "ext", "exif_orientation", "file_bytes"):
            del record[key]
    return record


def _fetch_all_in_pages(cursor: sqlite3.Cursor, size: int = 2000) -> Iterator[tuple[Any, ...]]:
    """Rows of ``cursor`` a page at a time, so only a page is ever held."""
    while True:
        page = cursor.fetchmany(size)
        if not page:
            return
        yield from page


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED")
    db.execute("PRAGMA temp_store = FILE")  # the run's tables on disk too: memory stays flat
    return db


def _check(path: Path) -> tuple[str, sqlite3.Connection | None]:
    """Open ``path`` if it is a sound state file of this layout; else why not (and no connection)."""
    return check_database(path, _SCHEMA_VERSION, "members", "written", connect=_connect)
