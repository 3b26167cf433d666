"""ISIC 2024 (SLICE-3D) metadata -> the unified frame, from either published layout.

The Kaggle layout has one ``train-metadata.csv`` with the label (``target``) and everything else; the
ISIC challenge layout splits it into ``ISIC_2024_Training_GroundTruth.csv`` (``isic_id,malignant``), a
supplement CSV and a ``metadata.csv`` inside the images zip (docs/ISIC_SOURCES.md 1.6). Both go
through :func:`harmonize_isic2024`: the tables are joined on ``isic_id`` (they must list the same
images) and every column is read from the table that has it, so an error still names the right
file and line.

``benign_malignant`` comes from ``target``/``malignant`` and from ``iddx_1``; the two must agree
(target 1 with Malignant, target 0 with Benign or Indeterminate). A disagreement is not an error:
like two sources that disagree (combine.py) it is listed in ``conflicts`` with both values, the
published label (``target``) is kept, and the merge flags the row ``label_conflict``. ``diagnosis``
is the deepest ``iddx`` node we can name (vocab.ISIC2024_DIAGNOSIS_TERMS, then the archive table).
The ``tbp_*``, clinical and ``mel_*`` columns follow as extras with their types: numbers stay numbers
so metadata.parquet keeps them as such.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import vocab
from ..member_source import container_kind
from ..zip_stream import ZipLimits, read_member, scan_zip
from .common import (
    BASE_COLUMNS,
    Harmonized,
    HarmonizeError,
    Source,
    _ages,
    _assemble,
    _base_notes,
    _count,
    _id_mismatch,
    _ids,
    _mapped,
    _missing_to_empty,
    _read_table,
    _require_columns,
    _Table,
    _value_error,
)

FORMAT = "isic2024"

#: Columns that are text even when every value looks like a number (ids, labels, vocabularies).
TEXT_COLUMNS: frozenset[str] = frozenset({
    "isic_id", "patient_id", "sex", "anatom_site_general", "image_type", "tbp_tile_type", "tbp_lv_location",
    "tbp_lv_location_simple", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1", "iddx_2",
    "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
})

#: Columns documented as numbers (docs/ISIC_SOURCES.md 1.6): a value that is not one is an error.
NUMERIC_COLUMNS: frozenset[str] = frozenset({
    "clin_size_long_diam_mm", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
    *(f"tbp_lv_{name}" for name in (
        "A", "Aext", "B", "Bext", "C", "Cext", "H", "Hext", "L", "Lext", "areaMM2", "area_perim_ratio",
        "color_std_mean", "deltaA", "deltaB", "deltaL", "deltaLB", "deltaLBnorm", "eccentricity",
        "minorAxisMM", "nevi_confidence", "norm_border", "norm_color", "perimeterMM", "radial_color_std_max",
        "stdL", "stdLExt", "symm_2axis", "symm_2axis_angle", "x", "y", "z",
    )),
})

_LABEL_COLUMNS = ("target", "malignant")
_IDDX_LEVELS = tuple(f"iddx_{level}" for level in range(1, 6))
_CONFLICT_COLUMNS = ["isic_id", "column", "values", "kept"]


@dataclass
class Harmonized2024(Harmonized):
    """A harmonized 2024 source plus the rows where its own two labels disagree."""

    conflicts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_CONFLICT_COLUMNS))


class _Columns:
    """Tables of one source aligned to the label table's row order; each column read from its owner."""

    def __init__(self, tables: list[tuple[_Table, pd.Series]]) -> None:
        label_table, label_ids = tables[0]
        self.ids = label_ids
        self.owner: dict[str, _Table] = {}
        for table, ids in tables:
            if table is not label_table:
                _id_mismatch(label_table, label_ids, table, ids, both_ways=True)
                positions = pd.Index(ids).get_indexer(label_ids.to_numpy())
                table = _Table(label=table.label, frame=table.frame.iloc[positions].reset_index(drop=True),
                               lines=table.lines[positions], blank_lines=table.blank_lines,
                               numeric={name: parsed.take(positions) for name, parsed in table.numeric.items()})
            for name in table.frame.columns:
                self.owner.setdefault(name, table)

    def has(self, name: str) -> bool:
        return name in self.owner

    def table(self, name: str) -> _Table:
        return self.owner[name]

    def text(self, name: str) -> pd.Series:
        return _missing_to_empty(self.owner[name].frame[name]) if name in self.owner else pd.Series(
            [vocab.MISSING] * len(self.ids), dtype=object)


@lru_cache(maxsize=4096)
def _deepest_diagnosis(full: str) -> str:
    """The deepest ``iddx_full`` node we can name; levels are joined by ``::``."""
    nodes = [part.strip() for part in full.split("::") if part.strip()]
    for node in reversed(nodes[1:]):
        if node in vocab.ISIC2024_DIAGNOSIS_TERMS:
            return vocab.ISIC2024_DIAGNOSIS_TERMS[node]
        if node in vocab.ARCHIVE_DIAGNOSIS_TERMS:
            return vocab.ARCHIVE_DIAGNOSIS_TERMS[node]
    # No node we can place: the deepest one lower-cased, as for the archive; level 1 alone
    # (Benign / Malignant / Indeterminate) is no diagnosis, benign_malignant already says it.
    return nodes[-1].lower() if len(nodes) > 1 else vocab.MISSING


def _diagnosis(columns: _Columns) -> pd.Series:
    if columns.has("iddx_full"):
        full = columns.text("iddx_full")
    else:
        levels = [columns.text(name) for name in _IDDX_LEVELS if columns.has(name)]
        joined = [
            "::".join(value for value in row if value) for row in zip(*levels, strict=True)
        ] if levels else [vocab.MISSING] * len(columns.ids)
        full = pd.Series(joined, dtype=object)
    table = {value: _deepest_diagnosis(value) for value in full.unique()}
    return full.map(table).astype(object).reset_index(drop=True)


def _labels(columns: _Columns, ids: pd.Series) -> tuple[pd.Series, pd.DataFrame]:
    """``benign_malignant`` from target/malignant and iddx_1, and the rows where they disagree."""
    name = next((n for n in _LABEL_COLUMNS if columns.has(n)), None)
    target = None
    if name is not None:
        target = _mapped(columns.table(name), name, vocab.ISIC2024_TARGET, "0 or 1 (0.0 or 1.0)",
                         allow_missing=False)
    iddx = None
    if columns.has("iddx_1"):
        iddx = _mapped(columns.table("iddx_1"), "iddx_1", vocab.ISIC2024_IDDX_1,
                       f"one of {list(vocab.ISIC2024_IDDX_1)} or empty")
    if target is None and iddx is None:
        table = next(iter(columns.owner.values()))
        raise HarmonizeError(
            f"{table.label}: line 1: no label column; expected 'target' (Kaggle train-metadata.csv), "
            "'malignant' (ISIC_2024_Training_GroundTruth.csv) or 'iddx_1'",
            file=table.label, line=1, expected="target, malignant or iddx_1")
    if target is None:
        return iddx, _empty_conflicts()  # type: ignore[return-value]
    if iddx is None:
        return target, _empty_conflicts()
    disagree = (iddx != vocab.MISSING) & (
        ((target == vocab.MALIGNANT) & (iddx != vocab.MALIGNANT))
        | ((target == vocab.BENIGN) & (iddx == vocab.MALIGNANT))
    )
    # Where they agree, iddx_1 may say more (Indeterminate under target 0), as the archive does.
    label = iddx.where((iddx != vocab.MISSING) & ~disagree, target)
    rows = pd.DataFrame({
        "isic_id": ids[disagree].astype(str).to_numpy(),
        "column": "benign_malignant",
        "values": [f"{name}={t}; iddx_1={i}" for t, i in zip(target[disagree], iddx[disagree], strict=True)],
        "kept": target[disagree].astype(str).to_numpy(),
    }, columns=_CONFLICT_COLUMNS)
    return label.astype(object), rows


def _empty_conflicts() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype="str") for name in _CONFLICT_COLUMNS})


def _typed(table: _Table, name: str) -> pd.Series:
    """A column as numbers when it is one (documented numeric, or every value parses), else as text."""
    raw = table.frame[name].reset_index(drop=True)
    if name in TEXT_COLUMNS:
        return _missing_to_empty(raw).astype("str")
    parsed = table.numeric.get(name)
    if parsed is not None:
        # Parsed while reading (NUMERIC_COLUMNS): the same judgement, on the facts kept from the text.
        _value_error(table, parsed.bad, name, "a number or empty (docs/ISIC_SOURCES.md 1.6)")
        whole = raw.dropna()
        if len(whole) and (whole == whole.round()).all() and not parsed.any_missing and not parsed.any_dot:
            return raw.astype("int64")
        return raw.astype("float64")
    missing = raw.isin(vocab.MISSING_SPELLINGS)
    numbers = pd.to_numeric(raw.where(~missing), errors="coerce")
    bad = (numbers.isna() & ~missing).to_numpy()
    if name in NUMERIC_COLUMNS:
        _value_error(table, bad, name, "a number or empty (docs/ISIC_SOURCES.md 1.6)")
    elif bad.any():
        return _missing_to_empty(raw).astype("str")
    whole = numbers.dropna()
    if len(whole) and (whole == whole.round()).all() and not missing.any() \
            and not raw.str.contains(".", regex=False).any():
        return numbers.astype("int64")
    return numbers.astype("float64")


def harmonize_isic2024(
    metadata: Source, ground_truth: Source | None = None, embedded_metadata: Source | None = None
) -> Harmonized2024:
    """One ISIC 2024 source: Kaggle ``train-metadata.csv`` alone, or the challenge ground truth plus
    its supplement (``metadata``) and the ``metadata.csv`` found inside the images zip.

    The tables must list the same images (the ids that differ are named). See the module docstring
    for the labels; every column not in the unified base follows as a typed extra.
    """
    tables: list[tuple[_Table, pd.Series]] = []
    written = stripped = None
    for role, source in (("ground_truth", ground_truth), ("metadata", metadata),
                         ("embedded_metadata", embedded_metadata)):
        if source is None:
            continue
        table = _read_table(source, "metadata" if role == "embedded_metadata" else role,
                            numeric_columns=NUMERIC_COLUMNS)
        _require_columns(table, ["isic_id"], f"an ISIC 2024 {role.replace('_', ' ')} CSV")
        ids, names, removed = _ids(table, "isic_id")
        if written is None:
            written, stripped = names, removed
        tables.append((table, ids))
    if ground_truth is not None:
        _require_columns(tables[0][0], ["malignant"], "the ISIC 2024 ground truth (isic_id,malignant)")
    columns = _Columns(tables)
    ids = columns.ids.reset_index(drop=True)
    benign_malignant, conflicts = _labels(columns, ids)
    n = len(ids)

    def mapped(name: str, mapping: Mapping[str, str], expected: str) -> pd.Series | str:
        return _mapped(columns.table(name), name, mapping, expected) if columns.has(name) else vocab.MISSING

    license_ = (
        _mapped(columns.table("copyright_license"), "copyright_license",
                {value: value for value in vocab.ARCHIVE_LICENSES},
                f"one of {list(vocab.ARCHIVE_LICENSES)} (docs/ISIC_SOURCES.md 2.4)")
        if columns.has("copyright_license") else vocab.MISSING
    )
    values = {
        "isic_id": ids,
        "benign_malignant": benign_malignant,
        "diagnosis": _diagnosis(columns),
        "age_approx": _ages(columns.table("age_approx"), "age_approx") if columns.has("age_approx") else None,
        "sex": mapped("sex", vocab.SEX, "male, female or empty"),
        "anatom_site_general": mapped("anatom_site_general", {s: s for s in vocab.UNIFIED_SITES},
                                      f"one of {list(vocab.UNIFIED_SITES)} or empty"),
        "patient_id": columns.text("patient_id"),
        "lesion_id": columns.text("lesion_id"),
        "copyright_license": license_,
        "attribution": columns.text("attribution"),
        "original_name": written,
    }
    frame = _assemble(n, values)
    image_type = columns.text("image_type")
    frame["image_type"] = image_type.where(image_type != vocab.MISSING, vocab.TBP_TILE_CLOSE_UP).astype("str")
    for name, table in columns.owner.items():
        if name not in BASE_COLUMNS and name not in frame.columns:
            frame[name] = _typed(table, name).to_numpy()
    label_table = tables[0][0]
    notes = _base_notes(label_table, stripped or 0)
    layout = "ISIC challenge (ground truth + supplement)" if ground_truth is not None else "Kaggle train-metadata.csv"
    notes.append(f"ISIC 2024 {layout}, {len(tables)} table(s) joined on isic_id")
    notes.append(f"{_count(int((benign_malignant == vocab.MALIGNANT).sum()))} malignant of {_count(n)}; "
                 f"{_count(int(frame['patient_id'].ne('').sum()))} rows with a patient_id")
    if len(conflicts):
        notes.append(f"{_count(len(conflicts))} rows where target and iddx_1 disagree (listed in conflicts.csv, "
                     "target kept, row flagged label_conflict)")
    return Harmonized2024(frame=frame, notes=notes, conflicts=conflicts.reset_index(drop=True))


def with_image_type(format: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Give every harmonized frame an ``image_type``: its own where it has one, else the release's.

    Archive and API rows carry the archive's value (empty where the archive has none); the challenge
    years are dermoscopy throughout; 2024 rows already have theirs.
    """
    if "image_type" in frame.columns:
        return frame
    fill = vocab.RELEASE_IMAGE_TYPES.get(format, vocab.MISSING)
    return frame.assign(image_type=np.full(len(frame), fill, dtype=object)).astype({"image_type": "str"})


# ----------------------------------------------------------------------------------------------
# What the merge asks of an ISIC 2024 source


def harmonize_isic2024_source(files: Mapping[str, Source], images: Path, limits: ZipLimits) -> Harmonized2024:
    """Harmonize a downloaded 2024 source; in the challenge layout also read the zip's own metadata.csv.

    The images file is an HDF5 file (Kaggle) or a zip (challenge), told apart by content. The zip's
    ``metadata.csv`` carries ``patient_id`` and the ``tbp_*`` columns the supplement lacks
    (docs/ISIC_SOURCES.md 1.6); a zip without one is read from the CSVs alone.
    """
    embedded = None
    if container_kind(images) == "zip":
        entries = scan_zip(images, limits)
        inside = [e.name for e in entries if e.kind == "csv" and e.name.rsplit("/", 1)[-1].lower() == "metadata.csv"]
        if inside:
            embedded = io.BytesIO(read_member(images, min(inside, key=len), limits))
    if "metadata" not in files:
        raise HarmonizeError(f"format {FORMAT!r}: missing required 'metadata' file; given roles {sorted(files)}",
                             value="metadata", expected="roles ['metadata']")
    return harmonize_isic2024(files["metadata"], files.get("ground_truth"), embedded)


def refused_records(members: object, source: str) -> list[dict[str, Any]]:
    """Scan records for the members an images container refused (an HDF5 key that is no ISIC id...).

    They carry an empty ``isic_id`` (not None) so the merge lists them in quarantine.csv with the
    reason instead of passing over them.
    """
    refused = getattr(members, "refused", None)
    if refused is None:
        return []
    return [{"name": item.name, "crc": 0, "size": 0, "isic_id": "", "source": source, "status": "rejected",
             "reason": item.reason, "detail": item.detail} for item in refused()]


def reject_unlisted(format: str, records: list[dict[str, Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A 2024 image with no row in its own metadata has no label: quarantined, not kept unlabelled.

    Every 2024 image has a row (401,059 of each, docs/ISIC_SOURCES.md 1.6), so one without is a
    damaged or mixed-up download, not a release that labels only some images.
    """
    if format != FORMAT:
        return records
    listed = set(frame["isic_id"])
    return [
        {**rec, "status": "rejected", "reason": "no_metadata_row",
         "detail": f"{rec['name']}: no row with this isic_id in the source's metadata"}
        if rec.get("status") == "ok" and rec.get("isic_id") not in listed else rec
        for rec in records
    ]
