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
from collections.abc import Iterator, Mapping
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
    SeenIds,
    Source,
    _ages,
    _assemble,
    _count,
    _id_mismatch,
    _ids,
    _mapped,
    _missing_to_empty,
    _read_table,
    _read_table_chunks,
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


@dataclass
class _ExtraType:
    """What decides an extra column's type over the whole file, gathered a chunk at a time.

    A column is text when it is not documented as numeric and some value is no number; else it is
    int64 when every value is whole, none is missing and none is written with a decimal point, and
    float64 otherwise. Until the last chunk is read, chunks hold the parsed floats of a documented
    column and the raw text of the others (:meth:`cast` makes them the column's type).
    """

    documented: bool
    text: bool = False
    present: bool = False
    whole: bool = True
    missing: bool = False
    dot: bool = False

    def read(self, table: _Table, name: str) -> np.ndarray:
        """The chunk's values as held until the type is known, its facts added (bad numbers raise)."""
        raw = table.frame[name].reset_index(drop=True)
        parsed = table.numeric.get(name)
        if parsed is not None:
            # Parsed while reading (NUMERIC_COLUMNS): the same judgement, on the facts kept from the text.
            _value_error(table, parsed.bad, name, "a number or empty (docs/ISIC_SOURCES.md 1.6)")
            self._add(raw.dropna(), parsed.any_missing, parsed.any_dot)
            return raw.to_numpy(dtype=np.float64)
        missing = raw.isin(vocab.MISSING_SPELLINGS)
        numbers = pd.to_numeric(raw.where(~missing), errors="coerce")
        bad = (numbers.isna() & ~missing).to_numpy()
        if self.documented:
            _value_error(table, bad, name, "a number or empty (docs/ISIC_SOURCES.md 1.6)")
        self.text = self.text or bool(bad.any())
        if not self.text:
            self._add(numbers.dropna(), bool(missing.any()), bool(raw.str.contains(".", regex=False).any()))
        return raw.to_numpy(dtype=object)

    def _add(self, present: pd.Series, missing: bool, dot: bool) -> None:
        self.present = self.present or len(present) > 0
        self.whole = self.whole and bool((present == present.round()).all())
        self.missing, self.dot = self.missing or missing, self.dot or dot

    def cast(self, values: np.ndarray) -> np.ndarray:
        """Held values as the column's type, decided on every chunk."""
        series = pd.Series(values)
        if self.text:
            return _missing_to_empty(series.astype(object)).astype("str").to_numpy()
        if series.dtype == object:
            missing = series.isin(vocab.MISSING_SPELLINGS)
            series = pd.to_numeric(series.where(~missing), errors="coerce")
        integer = self.present and self.whole and not self.missing and not self.dot
        return series.astype("int64" if integer else "float64").to_numpy()


@dataclass
class _Running:
    """The whole-file facts of a chunked harmonization: counts for the notes, conflicts, column types."""

    label: str = ""
    rows: int = 0
    blank_lines: int = 0
    stripped: int = 0
    malignant: int = 0
    with_patient: int = 0
    tables: int = 0
    conflicts: list[pd.DataFrame] = field(default_factory=list)
    types: dict[str, _ExtraType] = field(default_factory=dict)


class Isic2024Chunks:
    """An ISIC 2024 source harmonized a chunk of rows at a time (:func:`harmonize_isic2024`, whole).

    Iterating gives the harmonized frames of successive chunks of the Kaggle ``train-metadata.csv``
    with the extra columns as read (:meth:`cast` gives them their types once every chunk is read);
    then :meth:`finish` gives the notes and conflicts of the whole file. Every whole-file judgement is
    a running fact: an id repeated in two chunks (:class:`SeenIds`, on disk), each extra column's
    type (:class:`_ExtraType`), the counts of the notes. The challenge layout joins two or three
    tables listed in their own orders, so it is read whole and given as one chunk (its sources are
    read in memory: docs/PERFORMANCE.md, "What still grows").
    """

    def __init__(self, metadata: Source, ground_truth: Source | None = None,
                 embedded_metadata: Source | None = None, *, chunk_rows: int | None = None) -> None:
        self.sources = (("ground_truth", ground_truth), ("metadata", metadata),
                        ("embedded_metadata", embedded_metadata))
        self.challenge = ground_truth is not None
        self.chunk_rows = chunk_rows
        self.running = _Running()
        self.finished = False

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self.challenge or self.sources[2][1] is not None:
            tables: list[tuple[_Table, pd.Series]] = []
            for role, source in self.sources:
                if source is None:
                    continue
                table = _read_table(source, "metadata" if role == "embedded_metadata" else role,
                                    numeric_columns=NUMERIC_COLUMNS)
                tables.append((table, self._ids(table, role, None, first=not tables)))
            if self.challenge:
                _require_columns(tables[0][0], ["malignant"], "the ISIC 2024 ground truth (isic_id,malignant)")
            self.running.tables = len(tables)
            yield self._part(_Columns(tables))
        else:
            self.running.tables = 1
            seen = SeenIds()
            try:
                given = False
                for table in _read_table_chunks(self.sources[1][1], "metadata", numeric_columns=NUMERIC_COLUMNS,
                                                chunk_rows=self.chunk_rows):
                    if given and not len(table):  # the rows ended with a chunk: only blank lines may follow
                        self.running.blank_lines += table.blank_lines
                        continue
                    ids = self._ids(table, "metadata", seen, first=True)
                    yield self._part(_Columns([(table, ids)]))
                    given = True
            finally:
                seen.close()
        self.finished = True

    def _ids(self, table: _Table, role: str, seen: SeenIds | None, first: bool) -> pd.Series:
        _require_columns(table, ["isic_id"], f"an ISIC 2024 {role.replace('_', ' ')} CSV")
        ids, names, removed = _ids(table, "isic_id", seen)
        if first:  # the label table: its spelling is the original name; its counts make the notes
            self.written = names
            self.running.stripped += removed
            self.running.label = table.label
            self.running.rows += len(table)
            self.running.blank_lines += table.blank_lines
        return ids

    def _part(self, columns: _Columns) -> pd.DataFrame:
        run = self.running
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
            "original_name": self.written,
        }
        frame = _assemble(n, values)
        image_type = columns.text("image_type")
        frame["image_type"] = image_type.where(image_type != vocab.MISSING, vocab.TBP_TILE_CLOSE_UP).astype("str")
        for name, table in columns.owner.items():
            if name in BASE_COLUMNS or name in frame.columns:
                continue
            if name in TEXT_COLUMNS:
                frame[name] = _missing_to_empty(table.frame[name].reset_index(drop=True)).astype("str").to_numpy()
            else:
                frame[name] = run.types.setdefault(name, _ExtraType(name in NUMERIC_COLUMNS)).read(table, name)
        run.malignant += int((benign_malignant == vocab.MALIGNANT).sum())
        run.with_patient += int(frame["patient_id"].ne("").sum())
        if len(conflicts) or not run.conflicts:  # the first chunk's, even empty: the frame's columns
            run.conflicts.append(conflicts)
        return frame

    def cast(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A chunk's frame with every extra column of its whole-file type (once every chunk is read)."""
        if not self.finished:
            raise RuntimeError("ISIC 2024 chunks: the column types are known only once every chunk is read")
        changed = {name: kind.cast(frame[name].to_numpy()) for name, kind in self.running.types.items()
                   if name in frame.columns}
        if not changed:
            return frame
        out = frame.copy(deep=False)
        for name, values in changed.items():
            out[name] = values
        return out

    def finish(self) -> tuple[list[str], pd.DataFrame]:
        """The notes and the target/iddx_1 conflicts of the whole source (once every chunk is read)."""
        run = self.running
        parts = [part for part in run.conflicts if len(part)] or run.conflicts[:1]
        conflicts = (pd.concat(parts, ignore_index=True) if len(parts) > 1
                     else parts[0] if parts else pd.DataFrame(columns=_CONFLICT_COLUMNS))
        notes = [f"{run.label}: {_count(run.rows)} rows"]
        if run.stripped:
            notes.append(f"{_count(run.stripped)} ids had the _downsampled suffix stripped")
        if run.blank_lines:
            notes.append(f"{run.label}: {run.blank_lines} blank lines skipped (not rows)")
        layout = "ISIC challenge (ground truth + supplement)" if self.challenge else "Kaggle train-metadata.csv"
        notes.append(f"ISIC 2024 {layout}, {run.tables} table(s) joined on isic_id")
        notes.append(f"{_count(run.malignant)} malignant of {_count(run.rows)}; "
                     f"{_count(run.with_patient)} rows with a patient_id")
        if len(conflicts):
            notes.append(f"{_count(len(conflicts))} rows where target and iddx_1 disagree (listed in conflicts.csv, "
                         "target kept, row flagged label_conflict)")
        return notes, conflicts.reset_index(drop=True)


def harmonize_isic2024(
    metadata: Source, ground_truth: Source | None = None, embedded_metadata: Source | None = None,
    *, chunk_rows: int | None = None,
) -> Harmonized2024:
    """One ISIC 2024 source: Kaggle ``train-metadata.csv`` alone, or the challenge ground truth plus
    its supplement (``metadata``) and the ``metadata.csv`` found inside the images zip.

    The tables must list the same images (the ids that differ are named). See the module docstring
    for the labels; every column not in the unified base follows as a typed extra. The whole frame
    in memory: the merge takes :class:`Isic2024Chunks` a chunk at a time instead (``chunk_rows``
    here only to show both give one result).
    """
    chunks = Isic2024Chunks(metadata, ground_truth, embedded_metadata, chunk_rows=chunk_rows)
    frames = list(chunks)
    frame = chunks.cast(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
    notes, conflicts = chunks.finish()
    return Harmonized2024(frame=frame, notes=notes, conflicts=conflicts)


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


def isic2024_source_chunks(files: Mapping[str, Source], images: Path, limits: ZipLimits,
                           chunk_rows: int | None = None) -> Isic2024Chunks:
    """A downloaded 2024 source to harmonize a chunk at a time (:class:`Isic2024Chunks`); in the
    challenge layout also read the zip's own metadata.csv.

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
    return Isic2024Chunks(files["metadata"], files.get("ground_truth"), embedded, chunk_rows=chunk_rows)


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
