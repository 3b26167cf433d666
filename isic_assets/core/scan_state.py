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
"""

from __future__ import annotations

import json
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
    with Path(path).open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                bad += 1
            else:
                records.append(record)
    return records, bad


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
