"""The near-duplicate step's per-image state on disk: window signatures and a thumbnail, by sha256.

One append-only file of fixed-size binary records: the sha256 (64 ASCII bytes), the 64-bit keys
(big-endian) and 256-bit hashes of every window, and the 64x64 grey thumbnail (about 5.6 KB an image).
Nothing but the sha256 column is held in memory (fixed-width bytes, sorted once for lookups by
binary search: a pandas index of 401,059 Python bytes objects and its hash table took about 90 MB):
the search and the quick check read the rows they need with ``os.pread``, a run of consecutive
records at a time, so memory stays flat as the archive grows. Not through a memory map: a page
fault on a map also maps the neighbouring cached pages (the kernel's fault-around, 64 KB), and all
of them count in the process's RSS while the map is open;
reading the thumbnails of 4,000 scattered candidate pairs so took the step from 490 to 930 MB at
100,000 images, and reading the sha256 column at open mapped the whole file (docs/PERFORMANCE.md 13).
A run killed mid-append leaves a torn last record: it is cut off on the next open and that image is
hashed again.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..atomic import atomic_open
from ..compute.batches import batches_of
from ..compute.fork_pool import forked_results
from ..layout import read_table_chunks, row_count_and_widths, table_columns
from . import image_signature, near_dup_quick_check

Log = Callable[[str], None]
HASH_PROCESSES = 2  # the machine this is sized for has two cores; the step has them to itself
_HASH_BATCH = 500  # images per batch a worker hashes (2.8 MB of records back)
_COPY_ROWS = 5_000  # consecutive records read at once (28 MB)


def record_dtype() -> np.dtype:
    """One image's record: sha256, the 36 window keys and 256-bit hashes, the 64x64 thumbnail."""
    views = len(image_signature.VIEWS)
    side = near_dup_quick_check.THUMB_SIDE
    return np.dtype([("sha256", "S64"), ("keys", ">u8", (views,)),
                     ("fine", "u1", (views, image_signature.FINE_BYTES)), ("thumb", "u1", (side, side))])


def hash_batch(items: list[tuple[str, str, str]]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Records of ``(isic_id, path, sha256)`` items, and ``(isic_id, reason)`` of those that do not decode."""
    bases, shas, failed = [], [], []
    for isic_id, path, sha in items:
        try:
            bases.append(image_signature.read_base(Path(path)))
        except image_signature.UnreadableImageError as exc:
            failed.append((isic_id, str(exc)))
            continue
        shas.append(sha.encode("ascii"))
    records = np.zeros(len(shas), dtype=record_dtype())
    if shas:
        stack = np.stack(bases)
        with threadpool_limits(1, user_api="blas"):  # tiny products: BLAS threads cost 10x the work
            keys, fine = image_signature.signatures_of_bases(stack)
        records["sha256"], records["keys"], records["fine"] = shas, keys, fine
        records["thumb"] = [near_dup_quick_check.thumbnail(base) for base in bases]
    return records, failed


def run_batches(function: Callable[[list[Any]], list[Any] | Any], items: list[Any], processes: int,
                size: int) -> Iterator[Any]:
    """``function`` over batches of ``size`` items in ``processes`` forked workers (in this process when
    one batch or one process will do), yielding the results of each batch as it completes (any order).

    A list result is yielded item by item. A worker that dies fails the step: what was yielded before
    is the caller's to keep (the store and the confirmation cache append as they go)."""
    queue = batches_of(items, size)
    if processes <= 1 or len(queue) <= 1:
        results: Iterator[Any] = (function(batch) for batch in queue)
    else:
        results = _forked(function, queue, processes)
    for result in results:
        if isinstance(result, list):
            yield from result
        else:
            yield result


def _forked(function: Callable[[list[Any]], Any], queue: deque[list[Any]], processes: int) -> Iterator[Any]:
    return forked_results(function, queue, processes, "near-duplicates")


@dataclass(frozen=True)
class ImageColumns:
    """The images to compare, without a Python object per image: ids and image paths (relative to the
    transformed folder) as UTF-8 bytes columns, sha256 as 64 ASCII bytes. At 401,059 images about
    40 MB, against 88 MB for the three columns of Python strings a table holds."""

    ids: np.ndarray
    paths: np.ndarray
    shas: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> ImageColumns:
        """From a table with ``isic_id``, ``image`` and ``sha256`` (in that table's row order)."""
        for column in ("isic_id", "image", "sha256"):
            if column not in frame.columns:
                raise ValueError(f"the image table has no {column} column (expected data_transformed/metadata.csv)")
        ids, paths = (_utf8(frame[column].to_numpy()) for column in ("isic_id", "image"))
        return cls(ids, paths, sha_bytes(frame["sha256"].to_numpy(), frame["isic_id"].to_numpy()))

    @classmethod
    def read(cls, path: Path, rows: int = 50_000) -> ImageColumns:
        """From a metadata.csv, a chunk of rows at a time, twice: the row count and the widths of the
        ids and paths first, then the columns made at that size and filled (the whole text of the
        three columns is never held, nor the columns twice: gathering the chunks' columns and joining
        them took the step 118 MiB over its start at 401,059 images, for 40 MB of columns)."""
        names = ["isic_id", "image", "sha256"]
        header = table_columns(path)
        for column in names:
            if column not in header:
                raise ValueError(f"{path}: the image table has no {column} column "
                                 "(expected data_transformed/metadata.csv)")
        count, (id_width, path_width) = row_count_and_widths(path, names[:2], rows)
        whole = cls(np.zeros(count, dtype=f"S{id_width}"), np.zeros(count, dtype=f"S{path_width}"),
                    np.zeros(count, dtype="S64"))
        at = 0
        for chunk in read_table_chunks(path, names, rows):
            try:
                part = cls.of(chunk)
            except ValueError as exc:  # a bad sha256: say which file
                raise ValueError(f"{path}: {exc}") from exc
            end = at + len(part)
            if end > count or part.ids.itemsize > id_width or part.paths.itemsize > path_width:
                raise RuntimeError(f"{path} changed while it was read; run the step again")
            whole.ids[at:end], whole.paths[at:end], whole.shas[at:end] = part.ids, part.paths, part.shas
            at = end
        if at != count:
            raise RuntimeError(f"{path} changed while it was read; run the step again")
        return whole

    def take(self, rows: np.ndarray) -> ImageColumns:
        return ImageColumns(self.ids[rows], self.paths[rows], self.shas[rows])

    def first_of_each_id(self) -> ImageColumns:
        """One row per id, its first, in table order (a table's ``drop_duplicates("isic_id")``)."""
        first = np.sort(np.unique(self.ids, return_index=True)[1]) if len(self) else np.zeros(0, dtype=np.int64)
        return self if len(first) == len(self) else self.take(first)


def _utf8(values: np.ndarray) -> np.ndarray:
    encoded = [str(value).encode("utf-8", "surrogateescape") for value in values]
    return np.array(encoded) if encoded else np.zeros(0, dtype="S1")


class SignatureStore:
    """Per-image records by sha256 in ``path`` (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dtype = record_dtype()
        shas = np.zeros(0, dtype="S64")
        if path.is_file():
            size = path.stat().st_size
            whole = size - size % self.dtype.itemsize
            if whole != size:
                with path.open("r+b") as handle:
                    handle.truncate(whole)
            if whole:
                # A copy of each block's column: a field view would keep its whole block (30 MB of
                # records) alive until the end, the whole file at once (2.4 GB at 401,059 images).
                shas = np.concatenate([block["sha256"].copy() for block in self._blocks()])
        self._shas = [shas]
        self._index = ShaIndex(shas)

    def __len__(self) -> int:
        return len(self._index)

    def _blocks(self) -> Iterator[np.ndarray]:
        """Every record in file order, ``_COPY_ROWS`` at a time."""
        with self.path.open("rb") as handle:
            while len(block := np.fromfile(handle, dtype=self.dtype, count=_COPY_ROWS)):
                yield block

    def _records(self, rows: np.ndarray) -> np.ndarray:
        """The whole records of ``rows`` (any order, repeats allowed), one ``pread`` per run of
        consecutive rows (at most ``_COPY_ROWS`` long)."""
        rows = np.asarray(rows, dtype=np.int64)
        wanted = np.unique(rows)
        if not len(wanted):
            return np.zeros(0, dtype=self.dtype)
        breaks = np.nonzero(np.diff(wanted) != 1)[0] + 1
        size = self.dtype.itemsize
        with self.path.open("rb", buffering=0) as handle:
            fd = handle.fileno()
            parts = []
            for run in np.split(wanted, breaks):
                for lo in range(0, len(run), _COPY_ROWS):
                    start, count = int(run[lo]), min(_COPY_ROWS, len(run) - lo)
                    parts.append(os.pread(fd, count * size, start * size))
        data = b"".join(parts)
        if len(data) != len(wanted) * size:
            raise ValueError(f"{self.path} is shorter than its index: a record past its end was asked for")
        return np.frombuffer(data, dtype=self.dtype)[np.searchsorted(wanted, rows)]

    def add_missing(self, images: pd.DataFrame | ImageColumns, root: Path, log: Log,
                    processes: int = HASH_PROCESSES) -> tuple[int, set[str]]:
        """Hash every image whose sha256 has no record; returns how many, and the ids that do not decode.

        Batches of ``_HASH_BATCH`` images are hashed by ``processes`` forked workers (one process
        when there are few): decoding is most of the cost, about 0.5-1 ms an image, a whole-archive
        pass of several minutes on one core. Each batch's records are appended as it comes back, so
        a killed run keeps what it hashed.
        """
        global _TO_HASH
        columns = images if isinstance(images, ImageColumns) else ImageColumns.of(images)
        shas = columns.shas
        positions = np.flatnonzero(self._index.rows(shas) < 0)
        positions = positions[np.unique(shas[positions], return_index=True)[1]]  # one record per sha256
        positions.sort()
        unreadable: set[str] = set()
        hashed = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The workers make each batch's (id, path, sha256) items from these columns, which they share
        # with this process: a list of 401,059 such tuples took about 100 MB here and in every worker.
        _TO_HASH = (columns.ids, columns.paths, shas, str(root))
        ranges = [(lo, positions[lo : lo + _HASH_BATCH]) for lo in range(0, len(positions), _HASH_BATCH)]
        try:
            with self.path.open("ab") as handle:
                for records, failed in run_batches(_hash_positions, ranges, processes, 1):
                    for isic_id, message in failed:
                        log(f"near-duplicates: {isic_id} skipped: {message}")
                        unreadable.add(isic_id)
                    self._append(handle, records)
                    hashed += len(records)
        finally:
            _TO_HASH = None
        if len(self._shas) > 1:
            self._shas = [np.concatenate(self._shas)]
            self._index = ShaIndex(self._shas[0])
        return hashed, unreadable

    def _append(self, handle, records: np.ndarray) -> None:
        if len(records):
            handle.write(records.tobytes())
            handle.flush()
            self._shas.append(np.array(records["sha256"]))

    def rows(self, shas: Iterable[str]) -> np.ndarray:
        """The record row of each sha256, in order; a KeyError when one has none."""
        rows = self._index.rows(sha_bytes(_array(shas)))
        if (rows < 0).any():
            raise KeyError("a sha256 has no signature record")
        return rows

    def read(self, rows: np.ndarray, field: str) -> np.ndarray:
        """One field (``keys``, ``fine`` or ``thumb``) of ``rows``, read from the file (not mapped)."""
        values = np.ascontiguousarray(self._records(rows)[field])
        return values.astype(np.uint64) if field == "keys" else values

    def whole(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys (uint64) and 256-bit hashes of the whole picture (window 0) of ``rows``, read in slices."""
        keys = np.empty(len(rows), dtype=np.uint64)
        fine = np.empty((len(rows), image_signature.FINE_BYTES), dtype=np.uint8)
        for lo in range(0, len(rows), _COPY_ROWS):
            part = rows[lo : lo + _COPY_ROWS]
            keys[lo : lo + len(part)] = self.read(part, "keys")[:, 0]
            fine[lo : lo + len(part)] = self.read(part, "fine")[:, 0]
        return keys, fine

    def keep_only(self, shas: Iterable[str]) -> None:
        """Rewrite the file without records of other images once those are half of it."""
        current = self._shas[0]
        keep = np.isin(current, sha_bytes(_array(shas)))
        keep &= self._index.first_of_each()
        if len(current) <= max(64, 2 * int(keep.sum())):
            return
        kept = np.nonzero(keep)[0]
        with atomic_open(self.path, "wb") as handle:
            for lo in range(0, len(kept), _COPY_ROWS):
                handle.write(self._records(kept[lo : lo + _COPY_ROWS]).tobytes())
        self._shas = [current[kept]]
        self._index = ShaIndex(self._shas[0])


_TO_HASH: tuple[np.ndarray, np.ndarray, np.ndarray, str] | None = None


def _hash_positions(batch: list[tuple[int, np.ndarray]]) -> list[tuple[np.ndarray, list[tuple[str, str]]]]:
    """``hash_batch`` of the images at the batch's positions of ``_TO_HASH`` (set before the fork)."""
    assert _TO_HASH is not None, "the images to hash are set before the workers start"
    ids, images, shas, root = _TO_HASH
    return [hash_batch([(_text(ids[k]), os.path.join(root, _text(images[k])), shas[k].decode("ascii"))
                        for k in positions])
            for _, positions in batch]


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _array(values: Iterable[str]) -> np.ndarray:
    return np.asarray(values if hasattr(values, "__array__") else list(values), dtype=object)


def sha_bytes(values: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """sha256 hex strings as a fixed-width bytes column (64 a value); a clear error names the first
    that is longer than 64 characters (a record holds 64) or not ASCII."""
    try:
        wide = np.asarray(values).astype("S65")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a sha256 is not ASCII hex: {exc}") from exc
    too_long = np.flatnonzero(np.char.str_len(wide) > 64)
    if len(too_long):
        k = int(too_long[0])
        who = f"{ids[k]}: " if ids is not None else ""
        raise ValueError(f"{who}sha256 {values[k]!r} is longer than 64 characters")
    return wide.astype("S64")


class ShaIndex:
    """Where each sha256 is in the store's column: the column sorted once (stable, so the first of
    equal values comes first) and binary searches, no Python object per record."""

    def __init__(self, shas: np.ndarray) -> None:
        self._order = np.argsort(shas, kind="stable")
        self._sorted = shas[self._order]

    def __len__(self) -> int:
        return len(self._sorted)

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        """The (first) row of each of ``wanted`` (S64), -1 where there is none."""
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        return np.where(self._sorted[at] == wanted, self._order[at], -1).astype(np.int64)

    def first_of_each(self) -> np.ndarray:
        """A mask over rows (file order): True on the first row of each sha256."""
        first = np.ones(len(self._sorted), dtype=bool)
        first[1:] = self._sorted[1:] != self._sorted[:-1]
        mask = np.zeros(len(self._sorted), dtype=bool)
        mask[self._order[first]] = True
        return mask
