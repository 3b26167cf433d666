"""Combine harmonized sources into one row per ``isic_id``, and list the label conflicts between them.

The same image appears in several releases (docs/ISIC_SOURCES.md 1.5: all of 2017 and HAM10000 are in
2019, 1,212 of the 1,279 2016 images too), sometimes with different detail: 2016 gives only
benign/malignant, 2019 adds the site, HAM gives the site 2019 left empty. Combining keeps, for each
column, the first non-empty value in catalog order and fills gaps from later sources, so no
information is lost and the choice is predictable.

Two non-empty values that differ are a *conflict* unless one is the other said more precisely
(``vocab.GRANULARITY_RULES``: ``benign keratosis`` vs ``seborrheic keratosis``, ``torso`` vs
``anterior torso``, HAM ``akiec`` vs 2019 ``actinic keratosis``...). For such compatible values the
finer one is kept (``prefer_finer=True``, the default): it is the same fact with more detail, e.g.
the 2019 AK/SCC split of HAM ``akiec``. Genuine conflicts keep the first value in catalog order and
are listed in ``Combined.conflicts`` for a human to look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import vocab

#: Columns whose disagreement between sources is reported (docs/ARCHITECTURE.md conflicts.csv).
CONFLICT_COLUMNS: tuple[str, ...] = (
    "benign_malignant",
    "diagnosis",
    "sex",
    "age_approx",
    "anatom_site_general",
    "patient_id",
    "lesion_id",
)

CONFLICT_FRAME_COLUMNS: tuple[str, ...] = ("isic_id", "column", "values", "kept")

_ORDER = "__catalog_order"
_SOURCE = "__source"


@dataclass
class Combined:
    """One row per image across sources, plus one row per (image, column) genuine disagreement."""

    frame: pd.DataFrame
    conflicts: pd.DataFrame


def _is_text(series: pd.Series) -> bool:
    return _is_text_dtype(series.dtype)


def _is_text_dtype(dtype: Any) -> bool:
    return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)


def _present(series: pd.Series) -> pd.Series:
    """Non-empty cells: not NA, and for text columns not the empty string (the unified missing)."""
    if _is_text(series):
        return series.notna() & (series.astype("str") != vocab.MISSING)
    return series.notna()


def _as_text(series: pd.Series) -> pd.Series:
    """Values as strings for comparing and reporting (ages ``45``, not ``45.0``)."""
    if pd.api.types.is_integer_dtype(series.dtype) or pd.api.types.is_float_dtype(series.dtype):
        numbers = series.astype("Float64")
        whole = numbers.round() == numbers
        return numbers.astype("Int64").astype("str").where(whole.fillna(False), numbers.astype("str"))
    return series.astype("str")


def _long_frame(frames: Sequence[tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, list[str]]:
    """All sources stacked in catalog order, tagged with their name and position; checks each source."""
    parts: list[pd.DataFrame] = []
    columns: list[str] = []
    for order, (name, frame) in enumerate(frames):
        if "isic_id" not in frame.columns:
            raise ValueError(f"source {name!r}: no isic_id column; expected a harmonized frame")
        repeated = frame["isic_id"].duplicated()
        if repeated.any():
            raise ValueError(
                f"source {name!r}: isic_id {frame['isic_id'][repeated].iloc[0]} appears more than once; "
                "expected one row per image (harmonize first)"
            )
        for column in frame.columns:
            if column not in columns and column != "isic_id":
                columns.append(column)
        part = frame.reset_index(drop=True).assign(**{_ORDER: order, _SOURCE: name})
        parts.append(part)
    return pd.concat(parts, ignore_index=True, sort=False), columns


def _first_present(long: pd.DataFrame, codes: np.ndarray, column: str) -> pd.Series:
    """Per id code, the first non-empty value in catalog order (rows are already in that order)."""
    values = long[column]
    return values.where(_present(values)).groupby(codes, sort=True).first()


def _sources_column(
    long: pd.DataFrame, codes: np.ndarray, n_ids: int, names_in_order: list[str]
) -> np.ndarray:
    """``;``-joined source names per id code, in catalog order, without a Python call per id.

    Each id gets a bit mask of the sources listing it; the string is built once per distinct mask
    (a handful: the release overlaps of docs/ISIC_SOURCES.md 1.5), not once per image.
    """
    positions = long[_ORDER].to_numpy(dtype=np.int64)
    names = list(dict.fromkeys(names_in_order))
    if len(names) > 62:
        joined = long[[_SOURCE]].assign(code=codes).drop_duplicates()
        return joined.groupby("code", sort=True)[_SOURCE].agg(";".join).to_numpy(dtype=object)
    name_bit = np.array([names.index(name) for name in names_in_order], dtype=np.int64)
    masks = np.zeros(n_ids, dtype=np.int64)
    np.bitwise_or.at(masks, codes, np.left_shift(np.int64(1), name_bit[positions]))
    distinct, inverse = np.unique(masks, return_inverse=True)
    labels = np.array(
        [";".join(name for bit, name in enumerate(names) if int(mask) >> bit & 1) for mask in distinct],
        dtype=object,
    )
    return labels[inverse]


def _finest(column: str, distinct: list[str]) -> str | None:
    """The one value every other value is a coarser form of, or None when there is none."""
    for candidate in distinct:
        if all(other == candidate or vocab.refines(column, other, candidate) for other in distinct):
            return candidate
    return None


def _column_conflicts(
    long: pd.DataFrame, codes: np.ndarray, unique_ids: pd.Index, column: str, prefer_finer: bool
) -> tuple[list[dict[str, str]], dict[int, str]]:
    """Conflict rows for one column and, by id code, the finer values to keep where values agree.

    Only ids with two or more distinct non-empty values are looked at one by one; they are a few
    hundred of the ~60k (docs/ISIC_SOURCES.md 1.5 overlaps), everything else stays vectorised.
    """
    present = _present(long[column]).to_numpy()
    value_codes, _ = pd.factorize(long.loc[present, column], sort=False)
    id_codes = codes[present]
    pairs_frame = pd.DataFrame({"id": id_codes, "value": value_codes}).drop_duplicates()
    distinct_counts = np.bincount(pairs_frame["id"].to_numpy(), minlength=len(unique_ids))
    candidates = np.flatnonzero(distinct_counts > 1)
    conflicts: list[dict[str, str]] = []
    refined: dict[int, str] = {}
    if len(candidates) == 0:
        return conflicts, refined
    chosen = np.isin(codes, candidates) & present
    rows = pd.DataFrame(
        {
            "code": codes[chosen],
            "source": long.loc[chosen, _SOURCE].to_numpy(dtype=object),
            "value": _as_text(long.loc[chosen, column]).to_numpy(dtype=object),
        }
    )
    by_code: dict[int, list[tuple[str, str]]] = {}
    for code, source, value in zip(
        rows["code"].tolist(), rows["source"].tolist(), rows["value"].tolist(), strict=True
    ):
        by_code.setdefault(code, []).append((source, value))
    id_names = unique_ids.tolist()
    has_rules = column in vocab.GRANULARITY_COLUMNS
    for code, pairs in sorted(by_code.items()):
        isic_id = id_names[code]
        distinct = list(dict.fromkeys(value for _, value in pairs))
        agree = has_rules and all(
            vocab.compatible(column, left, right)
            for i, left in enumerate(distinct)
            for right in distinct[i + 1 :]
        )
        finest = _finest(column, distinct) if agree else None
        if agree:
            if prefer_finer and finest is not None and finest != distinct[0]:
                refined[int(code)] = finest
            continue
        conflicts.append(
            {
                "isic_id": str(isic_id),
                "column": column,
                "values": "; ".join(f"{source}={value}" for source, value in pairs),
                "kept": distinct[0],
            }
        )
    return conflicts, refined


def combine_sources(frames: Sequence[tuple[str, pd.DataFrame]], *, prefer_finer: bool = True,
                    dtypes: Mapping[str, Any] | None = None) -> Combined:
    """Combine ``(source name, harmonized frame)`` pairs given in CATALOG order.

    The result has one row per ``isic_id`` (in order of first appearance), a ``sources`` column with
    every source that listed the id (``;``-joined, catalog order), and each other column filled with
    the first non-empty value in catalog order; for values that differ only by granularity the finer
    one is kept unless ``prefer_finer`` is False. ``conflicts`` lists every id and column in
    :data:`CONFLICT_COLUMNS` where sources give incompatible non-empty values, as
    ``values = "isic2016=benign; isic2019=malignant"`` and the ``kept`` value.

    Each id is combined from its own rows alone, so the frames may be one range of ids at a time
    (merge/id_ranges.py); ``dtypes`` then gives each column the type it has in the whole table,
    which the rows of one range alone may not show.
    """
    if not frames:
        empty = pd.DataFrame({"isic_id": pd.Series([], dtype="str"), "sources": pd.Series([], dtype="str")})
        return Combined(frame=empty, conflicts=_conflict_frame([]))
    long, columns = _long_frame(frames)
    # Codes number the ids in order of first appearance, so code order is the output row order.
    codes, unique_ids = pd.factorize(long["isic_id"], sort=False)
    index = pd.RangeIndex(len(unique_ids))
    combined: dict[str, pd.Series] = {
        "isic_id": pd.Series(np.asarray(unique_ids, dtype=object), index=index, dtype="str"),
        "sources": pd.Series(
            _sources_column(long, codes, len(unique_ids), [name for name, _ in frames]),
            index=index,
            dtype="str",
        ),
    }
    for column in columns:
        combined[column] = _first_present(long, codes, column).reindex(index)

    conflict_rows: list[dict[str, str]] = []
    for column in CONFLICT_COLUMNS:
        if column not in long.columns:
            continue
        rows, refined = _column_conflicts(long, codes, unique_ids, column, prefer_finer)
        conflict_rows += rows
        if refined and _is_text(long[column]):
            kept = combined[column].astype("str")
            kept.loc[list(refined)] = list(refined.values())
            combined[column] = kept

    for column in columns:
        dtype = dtypes[column] if dtypes is not None and column in dtypes else long[column].dtype
        if _is_text_dtype(dtype):
            combined[column] = combined[column].fillna(vocab.MISSING).astype("str")
        else:
            combined[column] = combined[column].astype(dtype)
    return Combined(frame=pd.DataFrame(combined, index=index), conflicts=_conflict_frame(conflict_rows))


def _conflict_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    order = {column: index for index, column in enumerate(CONFLICT_COLUMNS)}
    rows = sorted(rows, key=lambda row: (row["isic_id"], order[row["column"]]))
    data = {name: pd.Series([row[name] for row in rows], dtype="str") for name in CONFLICT_FRAME_COLUMNS}
    return pd.DataFrame(data)
