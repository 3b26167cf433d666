"""Append-only records that make merging incremental and crash-safe.

Each scanned zip member gets one JSON line keyed by (member name, CRC32, size). A re-run reuses
the facts of every member whose key is unchanged, so unchanged archives cost no decoding at all;
a run killed mid-way keeps every line it flushed, and a torn last line is ignored on load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .atomic import atomic_open


class JsonlLog:
    """A JSON-lines file read as ``{key: last record}`` and appended to as work happens."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.key_fields = key_fields
        self.records: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._lines_on_disk = 0
        self._handle: Any = None
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        with self.path.open("r", encoding="utf-8") as handle:
            for line in handle:
                self._lines_on_disk += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed run
                if isinstance(record, dict):
                    self.records[self.key(record)] = record

    def key(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(field) for field in self.key_fields)

    def get(self, *key: Any) -> dict[str, Any] | None:
        return self.records.get(tuple(key))

    def values(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Record ``record`` in memory and on disk (flushed by ``flush`` or ``close``)."""
        self.records[self.key(record)] = record
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
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

    @property
    def needs_compaction(self) -> bool:
        return self._lines_on_disk > max(64, 2 * len(self.records))
