"""merged_data/metadata.csv and .parquet: one row per kept image, its metadata and file facts.

Also writes the merge's other tables (duplicates, quarantine, conflicts), each atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import layout
from ..atomic import atomic_open
from ..table_schema import column_types

# Columns of merged_data/metadata.csv, in order (docs/ARCHITECTURE.md); format extras follow.
METADATA_COLUMNS = [
    "isic_id", "source", "sources", "benign_malignant", "diagnosis", "age_approx", "sex",
    "anatom_site_general", "patient_id", "lesion_id", "diagnosis_confirm_type", "copyright_license",
    "attribution", "image_type", "image", "width", "height", "sha256", "file_bytes", "exif_orientation",
    "label_conflict",
]


def label_conflicts(conflicts: pd.DataFrame) -> set[str]:
    """Ids whose sources disagree on benign vs malignant: the kept label is only the first source's.

    Flagged in the metadata so that training sets can leave them out (balanced_splits does by
    default) instead of trusting one release over another without saying so.
    """
    if conflicts.empty:
        return set()
    return set(conflicts.loc[conflicts["column"] == "benign_malignant", "isic_id"])


def build_metadata(combined: pd.DataFrame, kept: Mapping[str, list[Any]], order: Mapping[str, int]) -> pd.DataFrame:
    """One row per kept image: combined metadata (or empty where an image had none) + file facts.

    ``kept`` holds the kept images' file facts column by column, in id order (``_kept_facts``).
    """
    ids = kept["isic_id"]
    columns: dict[str, list[Any]] = {
        "isic_id": ids,
        "source": kept["source"],
        "image_sources": [value.split(";") for value in kept["image_sources"]],
        "image": [f"images/{isic_id}{ext}" for isic_id, ext in zip(ids, kept["ext"], strict=True)],
        **{name: kept[name] for name in ("width", "height", "sha256", "file_bytes", "exif_orientation")},
    }
    facts = pd.DataFrame(columns) if ids else pd.DataFrame(
        [], columns=["isic_id", "source", "image_sources", "image", "width", "height", "sha256", "file_bytes",
                     "exif_orientation"])
    meta = combined.drop(columns=[c for c in ("source",) if c in combined.columns])
    frame = facts.merge(meta, on="isic_id", how="left")
    meta_sources = frame["sources"] if "sources" in frame else pd.Series("", index=frame.index)

    def all_sources(row_sources: Any, image_sources: list[str]) -> str:
        names = set(image_sources)
        if isinstance(row_sources, str) and row_sources:
            names.update(row_sources.split(";"))
        return ";".join(sorted(names, key=lambda n: order.get(n, 1 << 30)))

    frame["sources"] = [all_sources(s, i) for s, i in zip(meta_sources, frame["image_sources"], strict=True)]
    frame = frame.drop(columns=["image_sources"])
    for column in METADATA_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    extras = [c for c in frame.columns if c not in METADATA_COLUMNS]
    frame = frame[METADATA_COLUMNS + extras]
    # Numeric extras (ISIC 2024's tbp_* measurements) stay numbers in metadata.parquet.
    text_columns = [c for c in frame.columns if c not in ("age_approx", "width", "height", "file_bytes",
                                                          "exif_orientation")
                    and not (c in extras and pd.api.types.is_numeric_dtype(frame[c]))]
    frame[text_columns] = frame[text_columns].fillna("").astype(str)
    frame["age_approx"] = pd.array(frame["age_approx"], dtype="Int64") if len(frame) else frame["age_approx"]
    for column in ("width", "height", "file_bytes", "exif_orientation"):
        frame[column] = frame[column].astype("int64")
    return frame.sort_values("isic_id", kind="stable").reset_index(drop=True)



def write_tables(out_dir: Path, report: Any) -> None:
    """The small tables of a merge (duplicates, quarantine, conflicts), each atomically."""
    _write_csv(out_dir / layout.DUPLICATES_CSV, report.duplicates)
    _write_csv(out_dir / layout.QUARANTINE_CSV, report.quarantine)
    _write_csv(out_dir / layout.CONFLICTS_CSV, report.conflicts)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_open(path, "w") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")


# ----------------------------------------------------------------------------------------------
# metadata.csv and metadata.parquet a chunk of kept images at a time

_PREVIEW_ROWS = 10


@dataclass
class MetadataSummary:
    """What the Dagster layer shows of ``metadata.csv``, summed while it is written a chunk at a time
    (the whole table is never one frame: at 401,059 ISIC 2024 rows it would be about 1 GB)."""

    rows: int = 0
    columns: list[str] = field(default_factory=list)
    column_types: dict[str, str] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    image_types: dict[str, int] = field(default_factory=dict)
    classes_per_source: dict[tuple[str, str], int] = field(default_factory=dict)
    kept_per_source: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0
    file_bytes: int = 0
    preview: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return self.rows

    def add(self, chunk: pd.DataFrame) -> None:
        if self.rows == 0:
            self.columns = [str(c) for c in chunk.columns]
            self.column_types = column_types(chunk)
        if len(self.preview) < _PREVIEW_ROWS:
            self.preview = pd.concat([self.preview, chunk.head(_PREVIEW_ROWS - len(self.preview))],
                                     ignore_index=True) if len(self.preview) else chunk.head(_PREVIEW_ROWS).copy()
        self.rows += len(chunk)
        label = chunk["benign_malignant"].replace("", "unlabelled")
        _add_counts(self.class_counts, label.value_counts())
        _add_counts(self.image_types, chunk["image_type"].replace("", "(missing)").value_counts())
        _add_counts(self.kept_per_source, chunk["source"].value_counts())
        _add_counts(self.classes_per_source, pd.Series(1, index=pd.MultiIndex.from_arrays(
            [chunk["source"], label])).groupby(level=[0, 1]).sum())
        self.unlabelled += int(chunk["benign_malignant"].eq("").sum())
        self.file_bytes += int(chunk["file_bytes"].sum())

    def classes_by_source(self) -> pd.DataFrame:
        """Rows per source and label (a column per label), as ``groupby().size().unstack()`` gives."""
        if not self.classes_per_source:
            return pd.DataFrame()
        counts = pd.Series(self.classes_per_source)
        counts.index = counts.index.set_names(["source", "label"])
        return counts.sort_index().unstack(fill_value=0).reset_index()


def _add_counts(totals: dict[Any, int], counts: pd.Series) -> None:
    for key, value in counts.items():
        totals[key] = totals.get(key, 0) + int(value)


class _IdOrderedRows:
    """The combined metadata in ``isic_id`` order, handed out up to an id at a time."""

    def __init__(self, chunks: Iterator[pd.DataFrame]) -> None:
        self._chunks = chunks
        self._buffer: pd.DataFrame | None = None
        self._done = False

    def up_to(self, last_id: str) -> pd.DataFrame:
        """Every row not handed out yet whose id is at most ``last_id`` (ids ascending)."""
        parts: list[pd.DataFrame] = []
        while True:
            if self._buffer is None or not len(self._buffer):
                if self._done:
                    break
                nxt = next(self._chunks, None)
                if nxt is None:
                    self._done = True
                    break
                if self._buffer is None:
                    self._template = nxt.iloc[:0]
                self._buffer = nxt
            ids = self._buffer["isic_id"].to_numpy(dtype=object)
            cut = int(np.searchsorted(ids, last_id, side="right"))
            parts.append(self._buffer.iloc[:cut])
            self._buffer = self._buffer.iloc[cut:]
            if cut < len(ids):
                break
        if not parts:
            return getattr(self, "_template", pd.DataFrame(columns=["isic_id"]))
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def write_metadata(out_dir: Path, combined_chunks: Iterator[pd.DataFrame],
                   kept_pages: Iterable[Mapping[str, list[Any]]], order: Mapping[str, int], conflicted: set[str],
                   any_without_metadata: bool) -> MetadataSummary:
    """Write ``metadata.csv`` and ``metadata.parquet`` a page of kept images at a time.

    ``combined_chunks`` is the combined metadata sorted by ``isic_id``; ``kept_pages`` the kept
    images' file facts column by column, in id order (``_kept_facts``). Each page is joined to its
    metadata rows by :func:`build_metadata` and appended to both files, which are renamed into place
    only when complete (a crash leaves the previous tables). The dtypes are the whole table's: when any
    kept image has no metadata row, integer extras hold a missing value somewhere and are floats in
    every page, as one whole-table join would make them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _IdOrderedRows(combined_chunks)
    summary = MetadataSummary()
    schema: Any = None
    with atomic_open(out_dir / layout.METADATA_CSV, "w") as csv_handle, \
            atomic_open(out_dir / layout.METADATA_PARQUET, "wb") as parquet_handle:
        writer: Any = None
        try:
            for page in kept_pages:
                if not page["isic_id"]:
                    continue
                meta = rows.up_to(page["isic_id"][-1])
                if any_without_metadata:
                    meta = _with_missing_room(meta)
                frame = build_metadata(meta, page, order)
                frame["label_conflict"] = frame["isic_id"].isin(conflicted)
                frame.to_csv(csv_handle, index=False, lineterminator="\n", header=summary.rows == 0)
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(parquet_handle, schema)
                writer.write_table(table.cast(schema) if table.schema != schema else table)
                summary.add(frame)
            if writer is None:  # no kept image: the empty table, with its header
                frame = build_metadata(rows.up_to(""), {name: [] for name in _KEPT_COLUMNS}, order)
                frame["label_conflict"] = frame["isic_id"].isin(conflicted)
                frame.to_csv(csv_handle, index=False, lineterminator="\n")
                frame.to_parquet(parquet_handle, index=False)
                summary.add(frame)
        finally:
            if writer is not None:
                writer.close()
    return summary


_KEPT_COLUMNS = ("isic_id", "source", "image_sources", "ext", "width", "height", "sha256", "file_bytes",
                 "exif_orientation")


def _with_missing_room(meta: pd.DataFrame) -> pd.DataFrame:
    """Integer and boolean columns as the whole-table left join leaves them when some row is missing."""
    changed = {}
    for name, dtype in meta.dtypes.items():
        if name == "isic_id":
            continue
        if pd.api.types.is_bool_dtype(dtype) and not isinstance(dtype, pd.BooleanDtype):
            changed[name] = meta[name].astype(object)
        elif pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            changed[name] = meta[name].astype("float64")
    return meta.assign(**changed) if changed else meta


def ids_and_hashes(out_dir: Path) -> Iterator[tuple[str, str]]:
    """``(isic_id, sha256)`` of every row of ``metadata.parquet``, a row group at a time."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(out_dir / layout.METADATA_PARQUET) as parquet:
        for group in range(parquet.num_row_groups):
            part = parquet.read_row_group(group, columns=["isic_id", "sha256"])
            yield from zip(part.column(0).to_pylist(), part.column(1).to_pylist(), strict=True)
