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

The table is read a chunk of rows at a time, so the parser's text for all rows is never held.
"""

from __future__ import annotations

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
        """The rows ``rows`` (a mask or positions), in that order."""
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
        self.ids: list[np.ndarray] = []
        self.raw_ids: list[np.ndarray] = []
        self.any_raw = False
        self.keys: dict[str, list[np.ndarray]] = {c: [] for c in self.key_names}
        self.codes: dict[str, list[np.ndarray]] = {c: [] for c in self.coded_names}
        self.numbering: dict[str, dict] = {c: {} for c in self.coded_names}

    def add(self, chunk: pd.DataFrame) -> None:
        if ID in self.columns:
            cleaned = stripped_text(chunk[ID])
            raw = chunk[ID].astype("string").fillna("")
            self.ids.append(text_bytes(cleaned))
            self.raw_ids.append(text_bytes(raw))
            self.any_raw = self.any_raw or bool((cleaned != raw).any())
        for column in self.key_names:
            cleaned = stripped_text(chunk[column])
            if column == "sha256":  # hex digests are case-insensitive (grouping.link_keys)
                cleaned = pd.Series([v.lower() for v in cleaned], dtype=object)
            self.keys[column].append(text_bytes(cleaned))
        for column in self.coded_names:
            codes, distinct = pd.factorize(chunk[column], use_na_sentinel=False)
            numbering = self.numbering[column]
            numbers = np.array([numbering.setdefault(v, len(numbering)) for v in distinct], dtype=np.int32)
            self.codes[column].append(numbers[codes] if len(codes) else np.empty(0, dtype=np.int32))

    def pool(self) -> PlanPool:
        ids = _joined(self.ids)
        raw_ids = _joined(self.raw_ids) if self.any_raw else ids
        return PlanPool(
            columns=self.columns, ids=ids, raw_ids=raw_ids,
            keys={c: _joined(parts) for c, parts in self.keys.items()},
            coded={c: (_joined(self.codes[c], np.int32),
                       pd.Series(list(self.numbering[c]), dtype=object)) for c in self.coded_names},
        )


def _joined(parts: list[np.ndarray], dtype=None) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=dtype or "S1")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
