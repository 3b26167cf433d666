"""The EDA's tables: the merged metadata normalized once, then counts, crosstabs, age and size
summaries, missing values and the reasons images were dropped; the figures are drawn from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .overlap import source_overlap

LABEL_COLUMN = "benign_malignant"
UNLABELLED = "unlabelled"
MISSING = "(missing)"
UNKNOWN_SOURCE = "(no source)"
#: Classes in the order every figure and table shows them; unexpected labels follow, sorted.
CLASS_ORDER: tuple[str, ...] = ("benign", "malignant", "indeterminate", UNLABELLED)
AGE_STEP = 5  # ISIC publishes age_approx in 5-year steps
#: The metadata columns the figures and tables read row by row (the missing values and the
#: fingerprint cover every column, but need only one chunk of rows at a time: ``MetadataFacts``).
EDA_COLUMNS = ("isic_id", LABEL_COLUMN, "source", "sources", "sex", "anatom_site_general", "age_approx", "width",
               "height", "image_type")


@dataclass(frozen=True)
class MetadataFacts:
    """What the report says about the whole metadata table: its size, the missing share of every
    column (the checks' rule) and a fingerprint of every cell. Summed chunk by chunk (``from_chunks``),
    so the EDA can hold only ``EDA_COLUMNS`` of a 61-column table and still report every column."""

    rows: int
    columns: tuple[str, ...]
    missing_percent: dict[str, float]
    fingerprint: str

    @classmethod
    def of(cls, metadata: pd.DataFrame) -> MetadataFacts:
        return cls.from_chunks([metadata], list(metadata.columns))

    @classmethod
    def from_chunks(cls, chunks: Iterable[pd.DataFrame], columns: list[str], fingerprint: bool = True
                    ) -> MetadataFacts:
        """The same numbers as on the whole table: per-row hashes and missing counts do not depend on
        how the rows are cut. ``columns``: the columns to count (and hash); ``fingerprint=False``
        leaves the fingerprint empty (the missing_data check needs none)."""
        digest = hashlib.sha256("\x1f".join(map(str, columns)).encode())
        missing = dict.fromkeys(columns, 0)
        rows = 0
        for chunk in chunks:
            rows += len(chunk)
            if fingerprint:
                cells = pd.util.hash_pandas_object(chunk[columns].astype("string").fillna(""), index=False)
                digest.update(cells.to_numpy().tobytes())
            for column in columns:
                values = chunk[column]
                missing[column] += int((values.isna() | (values.astype(str).str.strip() == "")).sum())
        # missing_percentages' own arithmetic: round(100 * mean, 3), the mean being count / rows.
        percent = {c: round(100.0 * (n / rows), 3) if rows else 0.0 for c, n in missing.items()}
        return cls(rows, tuple(columns), percent, digest.hexdigest()[:16] if fingerprint else "")


@dataclass(frozen=True)
class _Columns:
    """The metadata columns the figures use, normalized once: text stripped, missing as ``""``."""

    n: int
    label: pd.Series
    source: pd.Series
    sex: pd.Series
    site: pd.Series
    age: pd.Series
    width: pd.Series
    height: pd.Series


def _tables(cols: _Columns, metadata: pd.DataFrame, duplicates: pd.DataFrame,
            quarantine: pd.DataFrame, near_duplicates: pd.DataFrame | None = None,
            source_order: tuple[str, ...] = (), facts: MetadataFacts | None = None) -> dict[str, pd.DataFrame]:
    facts = facts if facts is not None else MetadataFacts.of(metadata)
    classes = _class_order(cols.label)
    return {
        "class_counts": _class_counts(cols.label, classes),
        "source_by_class": _crosstab_table(cols.source, cols.label, classes, "source"),
        "anatomical_site_by_class": _crosstab_table(cols.site, cols.label, classes, "anatom_site_general"),
        "sex_by_class": _crosstab_table(cols.sex, cols.label, classes, "sex"),
        "image_type_by_class": _crosstab_table(_text(metadata, "image_type").replace("", MISSING), cols.label,
                                               classes, "image_type"),
        "age_summary": _age_summary(cols, classes),
        "dimensions_by_source": _dimensions_by_source(cols),
        "missing_values": _missing_table(facts),
        "duplicates_by_reason": _reason_counts(duplicates),
        "quarantine_by_reason": _reason_counts(quarantine),
        "source_overlap": source_overlap(metadata, duplicates, near_duplicates, source_order),
    }


def _summarize(cols: _Columns, metadata: pd.DataFrame, duplicates: pd.DataFrame,
               quarantine: pd.DataFrame, facts: MetadataFacts | None = None) -> dict[str, object]:
    facts = facts if facts is not None else MetadataFacts.of(metadata)
    per_source = cols.source.value_counts().sort_index()
    return {
        "metadata rows": facts.rows,
        "metadata columns": len(facts.columns),
        "sources": ", ".join(f"{name} ({count:,})" for name, count in per_source.items()) or "none",
        "duplicates rows": len(duplicates),
        "quarantine rows": len(quarantine),
        "metadata fingerprint": facts.fingerprint,
    }


def _normalize(metadata: pd.DataFrame) -> _Columns:
    return _Columns(
        n=len(metadata),
        label=_text(metadata, LABEL_COLUMN).replace("", UNLABELLED),
        source=_text(metadata, "source").replace("", UNKNOWN_SOURCE),
        sex=_text(metadata, "sex").replace("", MISSING),
        site=_text(metadata, "anatom_site_general").replace("", MISSING),
        age=_numbers(metadata, "age_approx"),
        width=_numbers(metadata, "width"),
        height=_numbers(metadata, "height"),
    )


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A text column with every spelling of 'missing' (NaN, NA, blanks) turned into ``""``.

    Works the same on the CSV read as strings and on the typed parquet frame; an absent column
    reads as all missing so a partial frame still gets its figures.
    """
    if column not in frame.columns:
        return pd.Series("", index=frame.index, dtype="string")
    return frame[column].astype("string").fillna("").str.strip()


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    """A numeric column as float64 with NaN for missing or unparsable cells (``""`` included)."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


def _class_order(labels: pd.Series) -> list[str]:
    extra = sorted(set(labels.unique()) - set(CLASS_ORDER))
    return [*CLASS_ORDER, *extra]


def _class_counts(labels: pd.Series, classes: list[str]) -> pd.DataFrame:
    counts = labels.value_counts().reindex(classes, fill_value=0).astype("int64")
    total = int(counts.sum())
    percent = (100.0 * counts / total).round(2) if total else counts * 0.0
    return pd.DataFrame({"class": classes, "count": counts.to_numpy(), "percent": percent.to_numpy()})


def _crosstab_table(rows: pd.Series, labels: pd.Series, classes: list[str], name: str) -> pd.DataFrame:
    """Counts per category (rows) and class (columns) plus a total, largest first, missing last."""
    table = pd.crosstab(rows, labels).reindex(columns=classes, fill_value=0).astype("int64")
    table["total"] = table.sum(axis=1)
    missing_last = table.index == MISSING
    order = np.lexsort((table.index.astype(str), -table["total"].to_numpy(), missing_last))
    table = table.iloc[order]
    table.index.name = name
    table.columns.name = None
    return table.reset_index()


def _age_summary(cols: _Columns, classes: list[str]) -> pd.DataFrame:
    rows = []
    for cls in ["all", *classes]:  # a handful of classes, not rows
        ages = cols.age if cls == "all" else cols.age[cols.label == cls]
        known = ages.dropna()
        rows.append({
            "class": cls,
            "images": len(ages),
            "with_age": len(known),
            "missing_age": int(len(ages) - len(known)),
            "median": float(known.median()) if len(known) else np.nan,
            "min": float(known.min()) if len(known) else np.nan,
            "max": float(known.max()) if len(known) else np.nan,
        })
    return pd.DataFrame(rows)


def _valid_dimensions(cols: _Columns) -> pd.DataFrame:
    frame = pd.DataFrame({"source": cols.source, "width": cols.width, "height": cols.height})
    return frame[(frame["width"] > 0) & (frame["height"] > 0)]


def _dimensions_by_source(cols: _Columns) -> pd.DataFrame:
    dims = _valid_dimensions(cols)
    columns = ["source", "images", "distinct_sizes", "min_width", "median_width", "max_width",
               "min_height", "median_height", "max_height"]
    if dims.empty:
        return pd.DataFrame(columns=columns)
    grouped = dims.groupby("source", sort=True)
    table = pd.DataFrame({
        "images": grouped.size(),
        "distinct_sizes": grouped[["width", "height"]].apply(lambda g: len(g.drop_duplicates())),
        "min_width": grouped["width"].min(),
        "median_width": grouped["width"].median(),
        "max_width": grouped["width"].max(),
        "min_height": grouped["height"].min(),
        "median_height": grouped["height"].median(),
        "max_height": grouped["height"].max(),
    })
    for column in ("min_width", "max_width", "min_height", "max_height"):
        table[column] = table[column].astype("int64")
    return table.reset_index()[columns]


def _missing_table(facts: MetadataFacts) -> pd.DataFrame:
    """Missing percentage per column, using the checks' own rule (quality.missing_percentages)."""
    percentages = facts.missing_percent
    return pd.DataFrame({"column": list(percentages), "missing_percent": list(percentages.values())})


def _reason_counts(frame: pd.DataFrame) -> pd.DataFrame:
    reasons = _text(frame, "reason").replace("", MISSING)
    counts = reasons.value_counts()
    table = pd.DataFrame({"reason": counts.index.astype(str), "count": counts.to_numpy().astype("int64")})
    return table.sort_values(["count", "reason"], ascending=[False, True], kind="stable").reset_index(drop=True)


def text_fingerprint(path: Path, chunk_chars: int = 1 << 20) -> str:
    """``fingerprint([path.read_text()])`` of the Dagster layer (sha256 of the text, UTF-8, then a
    newline; 32 hex digits), read a megabyte at a time: the merged ``metadata.csv`` of 401,059
    ISIC 2024 rows is about 200 MB, and its text and its encoding were both in memory at once.
    Opened as ``read_text`` opens it (the same encoding and newline translation; a ``\\r\\n`` cut
    between two reads is still one newline)."""
    digest = hashlib.sha256()
    with Path(path).open() as handle:  # the same encoding and newlines as read_text
        while chunk := handle.read(chunk_chars):
            digest.update(chunk.encode())
    digest.update(b"\n")
    return digest.hexdigest()[:32]
