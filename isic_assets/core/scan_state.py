"""Append-only records that make merging and transforming incremental and crash-safe.

Each unit of work gets one JSON line keyed by its identity (a zip member's name, CRC32 and size; an
output's isic id). A re-run reuses the facts of every unchanged key, so unchanged inputs cost no
decoding at all; a run killed mid-way keeps every line it flushed.

A state file can also be damaged: a torn last line (power loss, a full disk), garbage lines (a disk
or an editor), or the file deleted. Loading never fails on any of that: a line that is not a JSON
object, or lacks a field the owner says it must have, is dropped and counted; :attr:`JsonlLog.damage`
then describes it in one sentence for the run log, and the file is rewritten with the valid lines
only, so the next run does not report it again. Dropping a line only ever means the work it
recorded is done again from the files on disk: a record is a promise about an output, and a lost
promise is never taken as one.

:class:`SqliteLog` offers the same interface with the records in an SQLite file, for state of one
record per image that must not be held in memory at archive scale (the transform's).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .atomic import atomic_open

Validator = Callable[[dict[str, Any]], bool]
_EXAMPLES = 3  # damaged line numbers quoted in the report


class JsonlLog:
    """A JSON-lines file read as ``{key: last record}`` and appended to as work happens.

    ``valid`` (optional) accepts or rejects a parsed record: a rejected one counts as damage.
    """

    def __init__(self, path: Path, key_fields: tuple[str, ...], valid: Validator | None = None) -> None:
        self.path = Path(path)
        self.key_fields = key_fields
        self.valid = valid
        self.records: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.damaged_lines: list[int] = []
        self.torn_tail = False
        self._lines_on_disk = 0
        self._handle: Any = None
        self._needs_newline = False
        self._torn_and_damaged = False
        self._load()
        if self.damaged_lines:
            self.compact()  # rewrite with the valid lines only: the damage is reported once

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            raw = handle.read()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            self.torn_tail = True  # no final newline: a write cut short
            self._needs_newline = True
        for number, line in enumerate(lines, start=1):
            self._lines_on_disk += 1
            record = _parse(line)
            if record is None or not all(field in record for field in self.key_fields) or (
                    self.valid is not None and not _safe_valid(self.valid, record)):
                self.damaged_lines.append(number)
                continue
            self.records[self.key(record)] = record
        self._torn_and_damaged = self.torn_tail and bool(self.damaged_lines) and self.damaged_lines[-1] == len(lines)

    @property
    def damage(self) -> str | None:
        """One sentence about what loading dropped, for the run log; None when the file was sound."""
        if not self.damaged_lines:
            return None
        count = len(self.damaged_lines)
        where = ", ".join(str(n) for n in self.damaged_lines[:_EXAMPLES])
        more = f" and {count - _EXAMPLES} more" if count > _EXAMPLES else ""
        torn = " (the last one cut short)" if self._torn_and_damaged else ""
        return (f"state file {self.path} had {count} damaged line(s){torn}, line {where}{more}: "
                f"ignored and the file rewritten with the {len(self.records)} valid record(s); "
                "the work they recorded is redone from the files on disk")

    def key(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(field) for field in self.key_fields)

    def get(self, *key: Any) -> dict[str, Any] | None:
        return self.records.get(tuple(key))

    def values(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def hold(self, record: dict[str, Any]) -> None:
        """Record ``record`` for this run only: the next run does the work again."""
        self.records[self.key(record)] = record

    def append(self, record: dict[str, Any]) -> None:
        """Record ``record`` in memory and on disk (flushed by ``flush`` or ``close``)."""
        self.records[self.key(record)] = record
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
            if self._needs_newline:
                # End the torn line first, or this record would be glued to it and lost on load.
                self._handle.write("\n")
                self._needs_newline = False
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._lines_on_disk += 1

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def compact(self, keep: Iterable[tuple[Any, ...]] | None = None) -> None:
        """Rewrite the file with one line per live key (optionally only ``keep``), atomically."""
        self.close()
        if keep is not None:
            wanted = set(keep)
            self.records = {k: v for k, v in self.records.items() if k in wanted}
        if not self.records and not self.path.exists():
            return
        with atomic_open(self.path, "w") as handle:
            for key in sorted(self.records, key=lambda k: tuple(str(part) for part in k)):
                handle.write(json.dumps(self.records[key], sort_keys=True) + "\n")
        self._lines_on_disk = len(self.records)
        self._needs_newline = False

    @property
    def needs_compaction(self) -> bool:
        return self._lines_on_disk > max(64, 2 * len(self.records))


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every JSON-object line of ``path`` and the number of lines that were not one."""
    records, bad = [], 0
    for record in iter_jsonl(path):
        if record is None:
            bad += 1
        else:
            records.append(record)
    return records, bad


def iter_jsonl(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each non-blank line of ``path`` as a JSON object, or None where it is not one; one line held."""
    with Path(path).open("rb") as handle:
        for line in handle:
            if line.strip():
                yield _parse(line)


def has_fields(*names: str) -> Validator:
    """A validator: every one of ``names`` is present and not None."""
    def valid(record: dict[str, Any]) -> bool:
        return all(record.get(name) is not None for name in names)
    return valid


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _safe_valid(valid: Validator, record: dict[str, Any]) -> bool:
    try:
        return bool(valid(record))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


class SqliteLog:
    """The interface of :class:`JsonlLog` (``get``, ``values``, ``append``, ``compact``) over one
    SQLite file, so the records stay on disk instead of a dict of one record per unit of work.

    Each record is kept as its JSON text under its key (the key field's value itself when there is
    one key field, so ``values`` comes back in that value's order). Appends are committed in batches
    of ``batch`` and by ``flush``/``close``: a process killed midway keeps every committed batch,
    the rest is redone. The rollback journal, not WAL: one file plus a short-lived journal and no
    shared memory, so it works on every filesystem a data root may live on (as the merge's state).

    A file that is not a sound database of this layout (garbage, cut short, another schema) is
    moved aside as ``<name>.damaged``, and :attr:`damage` says so in one sentence; the store starts
    empty, so the lost records only mean work redone. A record that does not parse or that ``valid``
    rejects reads as absent, never as a promise.

    ``legacy`` names a :class:`JsonlLog` file of the same records written by an earlier version: it
    is imported once (records already in the database win), line by line, then deleted, so an
    upgrade does not redo the work it recorded; :attr:`imported` counts what it brought in.
    """

    _VERSION = 1
    _PAGE = 2000

    def __init__(self, path: Path, key_fields: tuple[str, ...], valid: Validator | None = None,
                 legacy: Path | None = None, batch: int = 500) -> None:
        self.path = Path(path)
        self.key_fields = key_fields
        self.valid = valid
        self.batch = batch
        self.damage: str | None = None
        self.imported = 0
        self._pending = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = self._open_checked()
        if legacy is not None and Path(legacy).is_file():
            self._import(Path(legacy))

    # -- opening -------------------------------------------------------------------------------

    def _open_checked(self) -> sqlite3.Connection:
        if self.path.exists():
            problem, db = check_database(self.path, self._VERSION, "records")
            if db is not None:
                return db
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            Path(f"{self.path}-journal").unlink(missing_ok=True)
            self.damage = (f"state file {self.path} {problem}: moved aside to {aside.name} and started empty; "
                           "the work it recorded is redone from the files on disk")
        db = _connect(self.path)
        db.executescript("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record TEXT NOT NULL) "
                         f"WITHOUT ROWID; PRAGMA user_version = {self._VERSION};")
        db.commit()
        return db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:  # closed earlier: reading on after a close opens it again
            self._db = _connect(self.path)
        return self._db

    def _import(self, legacy: Path) -> None:
        self.db.execute("CREATE TEMP TABLE legacy (key TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")
        bad = 0
        for record in iter_jsonl(legacy):
            if record is None or not self._usable(record):
                bad += 1
                continue
            # A key's last line wins, as when the old file was loaded; a record already here wins over both.
            self.db.execute("INSERT OR REPLACE INTO temp.legacy VALUES (?, ?)",
                            (self._key_text(self.key(record)), json.dumps(record, sort_keys=True)))
        self.imported = self.db.execute(
            "INSERT OR IGNORE INTO records SELECT key, record FROM temp.legacy").rowcount
        self.db.execute("DROP TABLE temp.legacy")
        self.db.commit()
        legacy.unlink()  # after the commit: a run killed before it imports the same lines again
        if bad:
            sentence = (f"state file {legacy} (the earlier format) had {bad} damaged line(s): ignored, "
                        "the work they recorded is redone from the files on disk")
            self.damage = f"{self.damage}; {sentence}" if self.damage else sentence

    # -- records -------------------------------------------------------------------------------

    def key(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(field) for field in self.key_fields)

    def _key_text(self, key: tuple[Any, ...]) -> str:
        if len(key) == 1 and isinstance(key[0], str):
            return key[0]
        return json.dumps(list(key))

    def _usable(self, record: dict[str, Any]) -> bool:
        return all(field in record for field in self.key_fields) and (
            self.valid is None or _safe_valid(self.valid, record))

    def _read(self, text: str) -> dict[str, Any] | None:
        try:
            record = json.loads(text)
        except ValueError:
            return None
        return record if isinstance(record, dict) and self._usable(record) else None

    def get(self, *key: Any) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM records WHERE key = ?", (self._key_text(key),)).fetchone()
        return None if row is None else self._read(row[0])

    def values(self) -> Iterator[dict[str, Any]]:
        """Every usable record in key order, read a page at a time (appends meanwhile are safe)."""
        last = ""
        while True:
            page = self.db.execute("SELECT key, record FROM records WHERE key > ? ORDER BY key LIMIT ?",
                                   (last, self._PAGE)).fetchall()
            if not page:
                return
            for _, text in page:
                record = self._read(text)
                if record is not None:
                    yield record
            last = page[-1][0]

    def largest(self, field: str, **equal: str) -> Any:
        """The largest value of ``field`` over the records whose fields equal ``equal`` (None if none),
        computed by SQLite over the stored JSON: no record is parsed in Python."""
        if not all(name.isidentifier() for name in (field, *equal)):
            raise ValueError(f"field names must be identifiers: {field!r}, {sorted(equal)}")
        where = "".join(f" AND json_extract(record, '$.{name}') = ?" for name in equal)
        row = self.db.execute(f"SELECT MAX(json_extract(record, '$.{field}')) FROM records WHERE 1{where}",
                              tuple(equal.values())).fetchone()
        return row[0]

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def append(self, record: dict[str, Any]) -> None:
        """Record ``record``; committed with its batch, or by ``flush``/``close``."""
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?)",
                        (self._key_text(self.key(record)), json.dumps(record, sort_keys=True)))
        self._pending += 1
        if self._pending >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self._db is not None:
            self._db.commit()
        self._pending = 0

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.commit()
            finally:
                self._db.close()
                self._db = None
        self._pending = 0

    def compact(self, keep: Iterable[tuple[Any, ...]] | None = None) -> None:
        """Drop the records of every key not in ``keep`` (when given) and commit."""
        if keep is not None:
            db = self.db
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (key TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM temp.keep")
            db.executemany("INSERT OR IGNORE INTO temp.keep VALUES (?)", ((self._key_text(tuple(k)),) for k in keep))
            db.execute("DELETE FROM records WHERE key NOT IN (SELECT key FROM temp.keep)")
            db.execute("DELETE FROM temp.keep")
        self.flush()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED")
    db.execute("PRAGMA temp_store = FILE")  # temporary tables on disk too: memory stays flat
    # The owner holds the file for a whole run (the transform has its own run lock): keeping SQLite's
    # lock between statements keeps its page cache too. Without it every look-up re-checked the file
    # and re-read its pages: 127 against 55 microseconds a look-up at 100,000 records, under load.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    return db


def check_database(path: Path, version: int, *tables: str,
                   connect: Callable[[Path], sqlite3.Connection] = _connect) -> tuple[str, sqlite3.Connection | None]:
    """Open ``path`` with ``connect`` if it is a sound SQLite file of this layout (``PRAGMA user_version``
    and these tables); else why not, in words for the run log, and no connection."""
    db = None
    try:
        db = connect(path)
        result = db.execute("PRAGMA quick_check").fetchone()
        found_version = db.execute("PRAGMA user_version").fetchone()[0]
        found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if result is None or result[0] != "ok":
            problem = f"fails SQLite's integrity check ({result[0] if result else 'no answer'})"
        elif found_version != version or not set(tables) <= found:
            problem = f"has another layout (version {found_version}, tables {sorted(found)})"
        else:
            return "", db
    except sqlite3.DatabaseError as exc:
        problem = f"is not a readable SQLite database ({exc})"
    if db is not None:
        db.close()
    return problem, None
