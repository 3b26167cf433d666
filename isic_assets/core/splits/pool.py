"""The images a split plan is made from, held as numpy arrays: no Python object per image.

Planning reads about a dozen columns of every image (``planning.plan_columns``), 401,059 rows on
the ISIC 2024 archive. As Python strings those cost several hundred bytes per image, and pandas'
hash tables of the ids and digests as much again (docs/PERFORMANCE.md "The stages after the
merge"). Here:

* ``isic_id`` and the link keys (``patient_id``, ``lesion_id``, ``sha256``) are fixed-width UTF-8
  bytes (``S`` arrays), cleaned as ``grouping.clean_keys`` cleans them (stripped, missing as empty,
  the digest lower-cased): about 12, 10 and 64 bytes a row;
* every other column (the label, source, licence, ...) is a code per row into its distinct values
  as read, so any rule applied to the distinct values gives what applying it to every row would.

The table is read a chunk of rows at a time, so the parser's text for all rows is never held, and
each column grows in an anonymous memory map (``_Growing``): arrays kept chunk by chunk on the heap,
then joined, left freed heap between live blocks that the process kept as resident memory (about
110 bytes an image at 401,059 rows).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from .grouping import LINK_COLUMNS, stripped_text

ID = "isic_id"


@dataclass(frozen=True)
class PlanPool:
    """Rows of a metadata table, compactly (see the module docstring); one row per image, table order.

    ``columns`` names the columns the table had, in its order; ``ids`` the cleaned ``isic_id``,
    ``raw_ids`` the id as written (the same array when no id has surrounding spaces); ``keys`` the
    cleaned link keys; ``coded`` every other column as (code per row, distinct values as read).
    """

    columns: tuple[str, ...]
    ids: np.ndarray
    raw_ids: np.ndarray
    keys: dict[str, np.ndarray]
    coded: dict[str, tuple[np.ndarray, pd.Series]]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def codes(self, column: str) -> tuple[np.ndarray, pd.Series]:
        """A code per row and the distinct values of ``column`` as read (``values[codes]`` is the column)."""
        if column not in self.coded:
            raise KeyError(f"the pool holds no coded column {column!r}")
        return self.coded[column]

    def take(self, rows: np.ndarray) -> PlanPool:
        """The rows ``rows`` (a mask or positions), in that order; the pool itself when a mask keeps
        every row (the usual case: no copy of every image's arrays)."""
        if rows.dtype == bool and len(rows) == len(self) and rows.all():
            return self
        ids = self.ids[rows]
        return PlanPool(
            columns=self.columns,
            ids=ids,
            raw_ids=ids if self.raw_ids is self.ids else self.raw_ids[rows],
            keys={column: values[rows] for column, values in self.keys.items()},
            coded={column: (codes[rows], values) for column, (codes, values) in self.coded.items()},
        )

    def frame(self, rows: np.ndarray, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows ``rows`` as a table of text (link keys cleaned, other columns as read), for the
        few rows a plan names: the dataset card and the licence counts read them."""
        wanted = [c for c in self.columns if columns is None or c in set(columns)]
        out = {}
        for column in wanted:
            if column == ID:
                out[column] = _text(self.raw_ids[rows])
            elif column in self.coded:
                codes, values = self.coded[column]
                out[column] = values.to_numpy(dtype=object)[codes[rows]]
            else:
                out[column] = _text(self.keys[column][rows])
        return pd.DataFrame(out, columns=wanted)


def coded_column(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """A code per row (int32) and the distinct values in order of first appearance; missing values
    are a distinct value of their own, so a rule applied to the distinct values sees them too."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int32, copy=False), pd.Series(np.asarray(distinct, dtype=object), dtype=object)


def text_bytes(values: pd.Series) -> np.ndarray:
    """Text as fixed-width UTF-8 bytes (``S``): ``b""`` for an empty value."""
    if len(values) == 0:
        return np.empty(0, dtype="S1")
    return np.array([v.encode("utf-8") for v in values], dtype="S")


def _text(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") for v in values.tolist()], dtype=object)


def coded_columns(columns: Iterable[str], label_column: str) -> list[str]:
    """The columns held as codes: all but the id and the link keys (the label always coded)."""
    return [c for c in columns if c == label_column or c not in (ID, *LINK_COLUMNS)]


class _PoolBuilder:
    """Collects a pool a chunk of rows at a time, numbering each coded column's values as they come."""

    def __init__(self, columns: list[str], label_column: str) -> None:
        self.columns = tuple(columns)
        self.coded_names = coded_columns(columns, label_column)
        self.key_names = [c for c in LINK_COLUMNS if c in columns]
        self.ids, self.raw_ids = _Growing("S1"), _Growing("S1")
        self.any_raw = False
        self.keys = {c: _Growing("S1") for c in self.key_names}
        self.codes = {c: _Growing(np.int32) for c in self.coded_names}
        self.numbering: dict[str, dict] = {c: {} for c in self.coded_names}

    def add(self, chunk: pd.DataFrame) -> None:
        if ID in self.columns:
            cleaned = stripped_text(chunk[ID])
            raw = chunk[ID].astype("string").fillna("")
            self.ids.extend(text_bytes(cleaned))
            changed = bool((cleaned != raw).any())
            if changed and not self.any_raw:  # the raw ids equalled the cleaned ones until now
                self.raw_ids.extend(self.ids.values()[: -len(cleaned)])
            self.any_raw = self.any_raw or changed
            if self.any_raw:
                self.raw_ids.extend(text_bytes(raw))
        for column in self.key_names:
            cleaned = stripped_text(chunk[column])
            if column == "sha256":  # hex digests are case-insensitive (grouping.link_keys)
                cleaned = pd.Series([v.lower() for v in cleaned], dtype=object)
            self.keys[column].extend(text_bytes(cleaned))
        for column in self.coded_names:
            codes, distinct = pd.factorize(chunk[column], use_na_sentinel=False)
            numbering = self.numbering[column]
            numbers = np.array([numbering.setdefault(v, len(numbering)) for v in distinct], dtype=np.int32)
            self.codes[column].extend(numbers[codes] if len(codes) else np.empty(0, dtype=np.int32))

    def pool(self) -> PlanPool:
        ids = self.ids.values()
        raw_ids = self.raw_ids.values() if self.any_raw else ids
        return PlanPool(
            columns=self.columns, ids=ids, raw_ids=raw_ids,
            keys={c: growing.values() for c, growing in self.keys.items()},
            coded={c: (self.codes[c].values(), pd.Series(list(self.numbering[c]), dtype=object))
                   for c in self.coded_names},
        )


class _Growing:
    """A column filled a chunk at a time, in an anonymous memory map that doubles when full (or widens
    for a longer text): the memory goes back to the system when the column is dropped, and pages
    never written cost nothing."""

    def __init__(self, dtype) -> None:
        self.array = _mapped(0, np.dtype(dtype))
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        dtype = np.promote_types(self.array.dtype, values.dtype)
        if need > len(self.array) or dtype != self.array.dtype:
            grown = _mapped(max(need, 2 * len(self.array), 4096) if need > len(self.array) else len(self.array),
                            dtype)
            grown[: self.n] = self.array[: self.n]
            self.array = grown
        self.array[self.n : need] = values
        self.n = need

    def values(self) -> np.ndarray:
        return self.array[: self.n]


def _mapped(n: int, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(mmap.mmap(-1, max(1, n * dtype.itemsize)), dtype=dtype, count=n)


def pool_from_frame(frame: pd.DataFrame, label_column: str) -> PlanPool:
    """The pool of an in-memory table (every column of it), its values as they are."""
    builder = _PoolBuilder(list(frame.columns), label_column)
    frame = frame.reset_index(drop=True)
    if len(frame):
        builder.add(frame)
    pool = builder.pool()
    # One chunk: the distinct values exactly as pandas found them (a missing value once, as it was).
    coded = {c: coded_column(frame[c]) for c in builder.coded_names}
    return PlanPool(columns=pool.columns, ids=pool.ids, raw_ids=pool.raw_ids, keys=pool.keys, coded=coded)


def read_pool(path: Path, columns: Iterable[str], label_column: str, rows: int = layout.CHUNK_ROWS) -> PlanPool:
    """``columns`` of the table at ``path`` (those it has) as a pool, a chunk of ``rows`` rows at a time."""
    wanted = set(columns)
    header = [c for c in layout.table_columns(path) if c in wanted]
    builder = _PoolBuilder(header, label_column)
    for chunk in layout.read_table_chunks(path, header, rows):
        builder.add(chunk.reset_index(drop=True))
    return builder.pool()
