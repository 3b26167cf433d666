"""One ``harmonize_<format>`` function per ISIC metadata format -> the unified metadata frame.

Every year publishes its labels in its own shape (docs/ISIC_SOURCES.md 1.4): headerless 2016 CSVs,
one-hot floats in 2017-2019, HAM10000's own columns, 2020's two header versions, and the archive's
export whose schema changed in 2024-2026 (docs/ISIC_SOURCES.md 2.3). Each function here reads one format
and returns :class:`Harmonized`, whose frame has one row per canonical ``isic_id`` and the columns
of :data:`BASE_COLUMNS` in that order, values mapped through ``vocab.py``.

Reading is strict on purpose: a value we do not understand raises :class:`HarmonizeError` naming the
file, the 1-based line, the column, the value found and what was expected. No row is ever dropped:
a row is either harmonized or the whole file is rejected.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from ...ids import normalize_isic_id
from .. import vocab

#: A CSV given as a path, an open binary stream (e.g. a zip member) or raw bytes.
Source = str | Path | IO[bytes] | bytes

#: The unified columns, in order (docs/ARCHITECTURE.md "Unified metadata schema"); format-specific
#: extra columns follow them.
BASE_COLUMNS: tuple[str, ...] = (
    "isic_id",
    "benign_malignant",
    "diagnosis",
    "age_approx",
    "sex",
    "anatom_site_general",
    "patient_id",
    "lesion_id",
    "diagnosis_confirm_type",
    "copyright_license",
    "attribution",
    "original_name",
)

#: Catalog format names accepted by :func:`harmonize`.
FORMATS: tuple[str, ...] = ("isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "isic_archive_zip")

#: File roles that carry metadata; other catalog roles (image zips) are not harmonize's business.
METADATA_ROLES: frozenset[str] = frozenset({"ground_truth", "metadata", "lesion_groupings", "duplicates"})

_ID_EXPECTED = "ISIC_ + 7 digits, optionally with the _downsampled suffix (docs/ISIC_SOURCES.md 1.3)"
_AGE_EXPECTED = "an age in whole years such as 45 or 45.0, or empty"
_AGE_RE = re.compile(r"^[0-9]{1,3}(\.0*)?$")
_MAX_CSV_BYTES = 1 << 30  # a zip member bigger than 1 GiB is not a metadata CSV


class HarmonizeError(ValueError):
    """A metadata file that cannot be harmonized; the message says where and why.

    The parts are also attributes (``file``, ``line``, ``column``, ``value``, ``expected``) so
    callers can quarantine or report without parsing the message.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
        value: str | None = None,
        expected: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.column = column
        self.value = value
        self.expected = expected


@dataclass
class Harmonized:
    """A harmonized source: the unified frame, listed duplicate pairs and human-readable notes."""

    frame: pd.DataFrame
    duplicate_pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading CSVs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """A CSV read as strings, with the 1-based file line of every row for error messages."""

    label: str
    frame: pd.DataFrame
    lines: np.ndarray
    blank_lines: int

    def line(self, position: int) -> int:
        return int(self.lines[position])

    def __len__(self) -> int:
        return len(self.frame)


def _source_bytes(source: Source, role: str) -> tuple[str, bytes]:
    """Read a source fully; a zip holding exactly one CSV is opened (2018 ground truth ships so)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise HarmonizeError(
                f"{path}: cannot read the {role} file ({exc.strerror or exc})", file=str(path)
            ) from exc
        label = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), f"<{role} bytes>"
    else:
        data = source.read()
        label = str(getattr(source, "name", "") or f"<{role} stream>")
        if isinstance(data, str):
            raise HarmonizeError(f"{label}: the {role} stream is a text stream; expected bytes", file=label)
    if data[:4] == b"PK\x03\x04":
        return _single_csv_from_zip(label, data, role)
    return label, data


def _single_csv_from_zip(label: str, data: bytes, role: str) -> tuple[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise HarmonizeError(
            f"{label}: not a readable zip ({exc}); expected a CSV or a zip of one CSV"
        ) from exc
    with archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and info.filename.lower().endswith(".csv")
            and not info.filename.startswith("__MACOSX/")
            and not info.filename.rsplit("/", 1)[-1].startswith("._")
        ]
        if len(members) != 1:
            names = [info.filename for info in members]
            raise HarmonizeError(
                f"{label}: the {role} zip holds {len(members)} CSV files {names}; expected exactly one",
                file=label,
            )
        member = members[0]
        if member.file_size > _MAX_CSV_BYTES:
            raise HarmonizeError(
                f"{label}: member {member.filename} is {member.file_size} bytes uncompressed; "
                f"expected a metadata CSV under {_MAX_CSV_BYTES} bytes",
                file=label,
            )
        return f"{label}!{member.filename}", archive.read(member)


def _decode(label: str, data: bytes) -> str:
    """UTF-8 with or without a BOM (``utf-8-sig`` drops it); anything else names the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise HarmonizeError(
            f"{label}: line {line}: byte {data[exc.start]:#04x} is not UTF-8; expected a UTF-8 CSV",
            file=label,
            line=line,
        ) from exc


def _read_table(
    source: Source,
    role: str,
    *,
    headerless_columns: Sequence[str] | None = None,
) -> _Table:
    """Parse a CSV into strings, keeping the file line of each row.

    The csv module is used instead of ``pd.read_csv`` because pandas silently skips blank lines,
    which would make the reported line numbers wrong. CRLF, a missing final newline and a UTF-8 BOM
    are all handled. Every value is a stripped string; nothing is converted to NaN here, so the
    2020 label ``unknown`` survives (docs/ISIC_SOURCES.md 1.2).
    """
    label, data = _source_bytes(source, role)
    text = _decode(label, data)
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    lines: list[int] = []
    blank = 0
    previous_end = 0
    try:
        for record in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not record:
                blank += 1
                continue
            records.append([value.strip() for value in record])
            lines.append(start)
    except csv.Error as exc:
        raise HarmonizeError(
            f"{label}: line {reader.line_num}: unreadable CSV ({exc})", file=label, line=reader.line_num
        ) from exc

    if headerless_columns is not None:
        header = list(headerless_columns)
        body, body_lines = records, lines
    else:
        if not records:
            raise HarmonizeError(
                f"{label}: line 1: the file is empty; expected a CSV header", file=label, line=1
            )
        header, body, body_lines = records[0], records[1:], lines[1:]
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise HarmonizeError(
                    f"{label}: line {lines[0]}: column {name!r} appears twice in the header {header}; "
                    "expected unique column names",
                    file=label,
                    line=lines[0],
                    column=name,
                )
            seen.add(name)
    width = len(header)
    for record, line in zip(body, body_lines):
        if len(record) != width:
            raise HarmonizeError(
                f"{label}: line {line}: found {len(record)} fields {record}; expected {width} "
                f"(header {header})",
                file=label,
                line=line,
                value=",".join(record),
                expected=f"{width} fields",
            )
    # object dtype while validating (building Arrow strings per step is slow); _assemble converts.
    frame = (
        pd.DataFrame(body, columns=header, dtype=object)
        if body
        else pd.DataFrame({name: pd.Series([], dtype=object) for name in header})
    )
    return _Table(label=label, frame=frame, lines=np.asarray(body_lines, dtype=np.int64), blank_lines=blank)


def _require_columns(table: _Table, required: Collection[str], what: str) -> None:
    header = list(table.frame.columns)
    for name in required:
        if name not in header:
            raise HarmonizeError(
                f"{table.label}: line 1: missing required column {name!r}; found header {header}, "
                f"expected {what} with columns {list(required)}",
                file=table.label,
                line=1,
                column=name,
                value=",".join(header),
                expected=f"columns {list(required)}",
            )


def _value_error(table: _Table, mask: np.ndarray | pd.Series, column: str, expected: str) -> None:
    """Raise for the first row where ``mask`` is true (and say how many more rows share the fault)."""
    flags = np.asarray(mask, dtype=bool)
    if not flags.any():
        return
    position = int(np.argmax(flags))
    count = int(flags.sum())
    value = str(table.frame[column].iloc[position])
    line = table.line(position)
    more = f" ({count - 1} more such rows)" if count > 1 else ""
    raise HarmonizeError(
        f"{table.label}: line {line}: column {column!r}: found {value!r}, expected {expected}{more}",
        file=table.label,
        line=line,
        column=column,
        value=value,
        expected=expected,
    )


# ---------------------------------------------------------------------------------------------
# Column helpers
# ---------------------------------------------------------------------------------------------


def _ids(table: _Table, column: str) -> tuple[pd.Series, pd.Series, int]:
    """Canonical ids, the ids as written, and how many had ``_downsampled`` stripped.

    Two rows with one canonical id in one file are an error naming both lines: which row is right
    cannot be decided here, and keeping either would drop the other silently.
    """
    written = table.frame[column]
    canonical = [normalize_isic_id(value) for value in written.tolist()]
    _value_error(table, np.array([value is None for value in canonical], dtype=bool), column, _ID_EXPECTED)
    ids = pd.Series(canonical, dtype=object)
    repeated = ids.duplicated(keep="first").to_numpy()
    if repeated.any():
        second = int(np.argmax(repeated))
        first = int(np.argmax((ids == ids.iloc[second]).to_numpy()))
        line_a, line_b = table.line(first), table.line(second)
        raise HarmonizeError(
            f"{table.label}: lines {line_a} and {line_b}: column {column!r}: id {ids.iloc[second]} appears "
            f"twice ({written.iloc[first]!r} and {written.iloc[second]!r}); expected one row per image",
            file=table.label,
            line=line_b,
            column=column,
            value=str(written.iloc[second]),
            expected="one row per image",
        )
    stripped = int((ids != written).sum())
    return ids, written.reset_index(drop=True), stripped


def _missing_to_empty(values: pd.Series) -> pd.Series:
    """Map every missing spelling (vocab.MISSING_SPELLINGS) to the empty string."""
    return values.where(~values.isin(vocab.MISSING_SPELLINGS), vocab.MISSING).reset_index(drop=True)


def _mapped(
    table: _Table, column: str, mapping: Mapping[str, str], expected: str, *, allow_missing: bool = True
) -> pd.Series:
    """Map a column through a vocab table; a value outside it is an error, missing spellings -> ""."""
    values = table.frame[column].reset_index(drop=True)
    missing = values.isin(vocab.MISSING_SPELLINGS) if allow_missing else pd.Series(False, index=values.index)
    known = values.isin(list(mapping))
    _value_error(table, (~known & ~missing).to_numpy(), column, expected)
    mapped = values.map(dict(mapping)).where(known, vocab.MISSING)
    return mapped.astype(object)


def _per_value(values: pd.Series, function: Callable[[str], object]) -> np.ndarray:
    """Apply ``function`` once per distinct value: label and age columns hold a few dozen values."""
    codes, uniques = pd.factorize(values, sort=False, use_na_sentinel=False)
    results = np.empty(len(uniques), dtype=object)
    results[:] = [function(value) for value in uniques]
    return results[codes]


def _age_or_error(value: str) -> object:
    if value in vocab.MISSING_SPELLINGS:
        return pd.NA
    return int(value.split(".", 1)[0]) if _AGE_RE.match(value) else None


def _ages(table: _Table, column: str) -> pd.Series:
    """Ages as nullable Int64; ``45``, ``45.0`` (HAM, Kaggle) and missing spellings are accepted."""
    parsed = _per_value(table.frame[column], _age_or_error)
    _value_error(table, np.array([value is None for value in parsed], dtype=bool), column, _AGE_EXPECTED)
    return pd.Series(pd.array(list(parsed), dtype="Int64"))


def _binary_or_error(value: str) -> int:
    try:
        number = float(value)
    except ValueError:
        return -1
    return int(number) if number in (0.0, 1.0) else -1


def _one_hot(table: _Table, columns: Sequence[str]) -> np.ndarray:
    """The 0/1 matrix of one-hot label columns; any value other than 0/1 (as 0.0/1.0) is an error."""
    matrix = np.zeros((len(table), len(columns)), dtype=np.int8)
    for index, name in enumerate(columns):
        numbers = _per_value(table.frame[name], _binary_or_error).astype(np.int8)
        _value_error(table, numbers < 0, name, "0.0 or 1.0")
        matrix[:, index] = numbers
    return matrix


def _require_exactly_one(table: _Table, matrix: np.ndarray, columns: Sequence[str], id_column: str) -> None:
    """Every row must set exactly one class (the 2018/2019 landing pages: one disease per image)."""
    sums = matrix.sum(axis=1)
    bad = sums != 1
    if not bad.any():
        return
    position = int(np.argmax(bad))
    set_columns = [columns[i] for i in np.flatnonzero(matrix[position])]
    found = ", ".join(f"{name}={table.frame[name].iloc[position]}" for name in set_columns) or "no class set"
    count = int(bad.sum())
    more = f" ({count - 1} more such rows)" if count > 1 else ""
    line = table.line(position)
    raise HarmonizeError(
        f"{table.label}: line {line}: {table.frame[id_column].iloc[position]}: columns {list(columns)}: "
        f"found {found}; expected exactly one class set to 1.0{more}",
        file=table.label,
        line=line,
        column=",".join(set_columns) or ",".join(columns),
        value=found,
        expected="exactly one class set to 1.0",
    )


def _lookup(ids: pd.Series, by_id: pd.DataFrame, column: str, fill: object) -> pd.Series:
    """Values of ``by_id[column]`` for ``ids`` (a metadata join); ids without a row get ``fill``."""
    return by_id[column].reindex(ids.to_numpy()).fillna(fill).reset_index(drop=True)


def _assemble(
    n: int, values: Mapping[str, object], extras: Mapping[str, pd.Series] | None = None
) -> pd.DataFrame:
    """The unified frame: BASE_COLUMNS in order (strings, "" when absent; age Int64), then extras."""
    data: dict[str, pd.Series] = {}
    for name in BASE_COLUMNS:
        value = values.get(name)
        if name == "age_approx":
            series = value if isinstance(value, pd.Series) else pd.Series([pd.NA] * n, dtype="Int64")
            data[name] = series.astype("Int64").reset_index(drop=True)
            continue
        if isinstance(value, pd.Series):
            series = value.reset_index(drop=True)
        else:
            series = pd.Series([vocab.MISSING if value is None else str(value)] * n)
        data[name] = series.fillna(vocab.MISSING).astype("str")
    for name, series in (extras or {}).items():
        data[name] = series.reset_index(drop=True).fillna(vocab.MISSING).astype("str")
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def _count(n: int) -> str:
    return f"{n:,}"


def _id_mismatch(
    left: _Table, left_ids: pd.Series, right: _Table, right_ids: pd.Series, *, both_ways: bool
) -> None:
    """Raise listing ids of ``right`` missing from ``left`` (and the reverse when ``both_ways``)."""
    right_missing = np.flatnonzero(~right_ids.isin(left_ids).to_numpy())
    left_missing = (
        np.flatnonzero(~left_ids.isin(right_ids).to_numpy()) if both_ways else np.array([], dtype=int)
    )
    only_right = [(int(i), str(right_ids.iloc[i])) for i in right_missing]
    only_left = [(int(i), str(left_ids.iloc[i])) for i in left_missing]
    if not only_right and not only_left:
        return
    parts = []
    if only_right:
        sample = ", ".join(f"{v} (line {right.line(i)})" for i, v in only_right[:10])
        parts.append(f"{_count(len(only_right))} ids of {right.label} are not in {left.label}: {sample}")
    if only_left:
        sample = ", ".join(f"{v} (line {left.line(i)})" for i, v in only_left[:10])
        parts.append(f"{_count(len(only_left))} ids of {left.label} are not in {right.label}: {sample}")
    first_table, first = (right, only_right[0]) if only_right else (left, only_left[0])
    raise HarmonizeError(
        "; ".join(parts) + "; expected the same images in both files",
        file=first_table.label,
        line=first_table.line(first[0]),
        value=first[1],
        expected="the same images in both files",
    )


def _base_notes(table: _Table, stripped: int) -> list[str]:
    notes = [f"{table.label}: {_count(len(table))} rows"]
    if stripped:
        notes.append(f"{_count(stripped)} ids had the _downsampled suffix stripped")
    if table.blank_lines:
        notes.append(f"{table.label}: {table.blank_lines} blank lines skipped (not rows)")
    return notes


def _class_of(diagnoses: pd.Series) -> pd.Series:
    return diagnoses.map(vocab.DIAGNOSIS_BENIGN_MALIGNANT).fillna(vocab.MISSING).astype(object)


# ---------------------------------------------------------------------------------------------
# 2016
# ---------------------------------------------------------------------------------------------


def harmonize_isic2016(ground_truth: Source) -> Harmonized:
    """ISBI 2016 Part 3 ground truth: no header; ``benign``/``malignant`` (train) or ``0.0``/``1.0`` (test).

    Both encodings are accepted because the two official files differ (docs/ISIC_SOURCES.md 1.2); 2016
    publishes no diagnosis, so ``diagnosis`` is empty.
    """
    table = _read_table(
        ground_truth, "ground_truth", headerless_columns=("column 1 (image id)", "column 2 (label)")
    )
    ids, written, stripped = _ids(table, "column 1 (image id)")
    labels = _mapped(
        table,
        "column 2 (label)",
        vocab.ISIC2016_LABELS,
        "benign, malignant, 0.0 or 1.0 (docs/ISIC_SOURCES.md 1.2)",
        allow_missing=False,
    )
    frame = _assemble(
        len(table),
        {
            "isic_id": ids,
            "benign_malignant": labels,
            "copyright_license": vocab.RELEASE_LICENSES["isic2016"],
            "attribution": vocab.RELEASE_ATTRIBUTIONS["isic2016"],
            "original_name": written,
        },
    )
    counts = labels.value_counts()
    notes = _base_notes(table, stripped)
    notes.append(
        f"{_count(int(counts.get('benign', 0)))} benign / {_count(int(counts.get('malignant', 0)))} malignant"
    )
    return Harmonized(frame=frame, notes=notes)


# ---------------------------------------------------------------------------------------------
# 2017
# ---------------------------------------------------------------------------------------------


def harmonize_isic2017(ground_truth: Source, metadata: Source | None = None) -> Harmonized:
    """ISBI 2017 Part 3: floats ``melanoma``/``seborrheic_keratosis``, nevus = both 0 (docs/ISIC_SOURCES.md 1.2).

    Both 1 is an error. The optional training metadata (``image_id,age_approximate,sex``) writes
    missing values as ``unknown``, which become empty; a metadata id absent from the ground truth
    is an error, a ground-truth id without metadata keeps empty age and sex (noted).
    """
    table = _read_table(ground_truth, "ground_truth")
    label_columns = list(vocab.ISIC2017_LABEL_COLUMNS)
    _require_columns(table, ["image_id", *label_columns], "the ISIC 2017 Part 3 ground truth")
    ids, written, stripped = _ids(table, "image_id")
    matrix = _one_hot(table, label_columns)
    both = matrix.sum(axis=1) > 1
    if both.any():
        position = int(np.argmax(both))
        line = table.line(position)
        raise HarmonizeError(
            f"{table.label}: line {line}: {ids.iloc[position]}: columns {label_columns}: found both 1.0; "
            "expected at most one (nevus is both 0.0, docs/ISIC_SOURCES.md 1.2)",
            file=table.label,
            line=line,
            column=",".join(label_columns),
            value="1.0,1.0",
            expected="at most one 1.0",
        )
    diagnosis = np.full(len(table), vocab.ISIC2017_NEITHER, dtype=object)
    for index, name in enumerate(label_columns):
        diagnosis[matrix[:, index] == 1] = vocab.ISIC2017_LABEL_COLUMNS[name]
    diagnoses = pd.Series(diagnosis, dtype=object)
    values: dict[str, object] = _diagnosis_columns("isic2017", ids, written, diagnoses)
    notes = _base_notes(table, stripped)
    counts = diagnoses.value_counts()
    notes.append(
        ", ".join(
            f"{_count(int(counts.get(d, 0)))} {d}"
            for d in (vocab.MELANOMA, vocab.SEBORRHEIC_KERATOSIS, vocab.NEVUS)
        )
    )
    if metadata is not None:
        meta = _read_table(metadata, "metadata")
        _require_columns(meta, ["image_id", "age_approximate", "sex"], "the ISIC 2017 metadata")
        meta_ids, _, _ = _ids(meta, "image_id")
        _id_mismatch(table, ids, meta, meta_ids, both_ways=False)
        by_id = pd.DataFrame(
            {
                "age": _ages(meta, "age_approximate"),
                "sex": _mapped(meta, "sex", vocab.SEX, "male, female or unknown (docs/ISIC_SOURCES.md 1.2)"),
            }
        ).set_axis(meta_ids.to_numpy())
        values["age_approx"] = by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True)
        values["sex"] = _lookup(ids, by_id, "sex", vocab.MISSING)
        unknown_age = int(meta.frame["age_approximate"].isin(vocab.MISSING_SPELLINGS).sum())
        unknown_sex = int(meta.frame["sex"].isin(vocab.MISSING_SPELLINGS).sum())
        notes.append(
            f"{meta.label}: {_count(unknown_age)} ages and {_count(unknown_sex)} sexes missing ('unknown')"
        )
        without = int((~ids.isin(set(meta_ids))).sum())
        if without:
            notes.append(f"{_count(without)} ground-truth ids have no metadata row (age and sex left empty)")
    return Harmonized(frame=_assemble(len(table), values), notes=notes)


# ---------------------------------------------------------------------------------------------
# 2018 (HAM10000)
# ---------------------------------------------------------------------------------------------

_HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
_GROUPING_IMAGE_COLUMNS = ("image", "image_id", "isic_id", "image_name")


def _ham_metadata(meta: _Table) -> tuple[pd.Series, pd.DataFrame]:
    """HAM10000_metadata.csv (7 columns, or 8 with ``dataset``, docs/ISIC_SOURCES.md 1.2) by canonical id."""
    _require_columns(meta, _HAM_COLUMNS, "HAM10000_metadata.csv")
    meta_ids, _, _ = _ids(meta, "image_id")
    dx = _mapped(meta, "dx", vocab.HAM10000_DX, f"one of {list(vocab.HAM10000_DX)}", allow_missing=False)
    by_id = pd.DataFrame(
        {
            "dx": dx,
            "confirm": _mapped(
                meta, "dx_type", vocab.HAM10000_DX_TYPE, f"one of {list(vocab.HAM10000_DX_TYPE)} or empty"
            ),
            "age": _ages(meta, "age"),
            "sex": _mapped(meta, "sex", vocab.SEX, "male, female or unknown"),
            "site": _mapped(
                meta, "localization", vocab.HAM10000_LOCALIZATION, "one of the 15 HAM10000 localizations"
            ),
            "lesion_id": _missing_to_empty(meta.frame["lesion_id"]),
            "dataset": meta.frame["dataset"].reset_index(drop=True)
            if "dataset" in meta.frame.columns
            else "",
        }
    ).set_axis(meta_ids.to_numpy())
    return meta_ids, by_id


def _lesion_groupings(groupings: _Table) -> tuple[pd.Series, pd.DataFrame]:
    """The 2018 lesion groupings CSV; its header is UNVERIFIED (docs/ISIC_SOURCES.md 1.2), so we accept an
    image column under any usual name plus ``lesion_id``, and an optional confirm-type column."""
    header = list(groupings.frame.columns)
    image_column = next((name for name in _GROUPING_IMAGE_COLUMNS if name in header), None)
    if image_column is None or "lesion_id" not in header:
        raise HarmonizeError(
            f"{groupings.label}: line 1: found header {header}; expected an image column (one of "
            f"{list(_GROUPING_IMAGE_COLUMNS)}) and a 'lesion_id' column (the official header is unverified, "
            "docs/ISIC_SOURCES.md 1.2)",
            file=groupings.label,
            line=1,
            value=",".join(header),
            expected="an image column and lesion_id",
        )
    ids, _, _ = _ids(groupings, image_column)
    by_id = pd.DataFrame({"lesion_id": _missing_to_empty(groupings.frame["lesion_id"])})
    confirm_column = next((n for n in ("diagnosis_confirm_type", "dx_type") if n in header), None)
    if confirm_column is not None:
        allowed = {**vocab.HAM10000_DX_TYPE, **{v: v for v in vocab.ARCHIVE_CONFIRM_TYPES}}
        by_id["confirm"] = _mapped(groupings, confirm_column, allowed, f"one of {sorted(allowed)} or empty")
    return ids, by_id.set_axis(ids.to_numpy())


def _diagnosis_columns(fmt: str, ids: pd.Series, written: pd.Series, diagnoses: pd.Series) -> dict[str, object]:
    """The columns every diagnosis-labelled release shares: ids, label, diagnosis, release licence."""
    return {
        "isic_id": ids,
        "benign_malignant": _class_of(diagnoses),
        "diagnosis": diagnoses,
        "copyright_license": vocab.RELEASE_LICENSES[fmt],
        "attribution": vocab.RELEASE_ATTRIBUTIONS[fmt],
        "original_name": written,
    }


def _one_hot_ground_truth(table: _Table, class_map: Mapping[str, str], what: str
                          ) -> tuple[pd.Series, pd.Series, int, pd.Series]:
    """Ids and unified diagnoses of a one-hot ``image,<CLASS>...`` table (2018 and 2019 formats).

    Exactly one ``1.0`` per row is required; anything else is an error naming the line.
    """
    classes = list(class_map)
    _require_columns(table, ["image", *classes], what)
    ids, written, stripped = _ids(table, "image")
    matrix = _one_hot(table, classes)
    _require_exactly_one(table, matrix, classes, "image")
    class_names = np.array([class_map[name] for name in classes], dtype=object)
    return ids, written, stripped, pd.Series(class_names[matrix.argmax(axis=1)], dtype=object)


def harmonize_isic2018(
    ground_truth: Source,
    metadata: Source | None = None,
    lesion_groupings: Source | None = None,
) -> Harmonized:
    """ISIC 2018 Task 3: one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, exactly one 1 per row.

    The ground truth may be the CSV or the official ``..._GroundTruth.zip`` holding it. HAM10000
    metadata, when given, supplies age, sex, site, lesion_id and the confirm type, and its ``dx`` must
    agree with the ground truth; lesion groupings, when given, supply lesion_id (and confirm type) and
    must agree with HAM where both speak. Licence CC-BY-NC (docs/ISIC_SOURCES.md 1.2).
    """
    table = _read_table(ground_truth, "ground_truth")
    ids, written, stripped, diagnoses = _one_hot_ground_truth(table, vocab.ISIC2018_CLASSES,
                                                              "the ISIC 2018 Task 3 ground truth")
    values: dict[str, object] = _diagnosis_columns("isic2018", ids, written, diagnoses)
    extras: dict[str, pd.Series] = {}
    notes = _base_notes(table, stripped)
    lesion = pd.Series([vocab.MISSING] * len(table), dtype=object)
    confirm = pd.Series([vocab.MISSING] * len(table), dtype=object)
    if metadata is not None:
        meta = _read_table(metadata, "metadata")
        meta_ids, by_id = _ham_metadata(meta)
        _id_mismatch(table, ids, meta, meta_ids, both_ways=False)
        _check_ham_dx(table, ids, diagnoses, meta, meta_ids, by_id)
        values["age_approx"] = by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True)
        values["sex"] = _lookup(ids, by_id, "sex", vocab.MISSING)
        values["anatom_site_general"] = _lookup(ids, by_id, "site", vocab.MISSING)
        lesion = _lookup(ids, by_id, "lesion_id", vocab.MISSING)
        confirm = _lookup(ids, by_id, "confirm", vocab.MISSING)
        if "dataset" in meta.frame.columns:
            extras["dataset"] = _lookup(ids, by_id, "dataset", vocab.MISSING)
        notes.append(
            f"{meta.label}: {_count(len(meta))} images, "
            f"{_count(by_id['lesion_id'].replace('', np.nan).nunique())} "
            "lesions"
        )
        without = int((~ids.isin(set(meta_ids))).sum())
        if without:
            notes.append(f"{_count(without)} ground-truth ids have no HAM10000 row (metadata left empty)")
    if lesion_groupings is not None:
        groups = _read_table(lesion_groupings, "lesion_groupings")
        group_ids, by_group = _lesion_groupings(groups)
        _id_mismatch(table, ids, groups, group_ids, both_ways=False)
        lesion = _merge_agreeing(table, ids, lesion, by_group, "lesion_id", groups, group_ids)
        if "confirm" in by_group.columns:
            confirm = _merge_agreeing(table, ids, confirm, by_group, "confirm", groups, group_ids)
        notes.append(f"{groups.label}: {_count(len(groups))} lesion groupings")
    values["lesion_id"] = lesion
    values["diagnosis_confirm_type"] = confirm
    return Harmonized(frame=_assemble(len(table), values, extras), notes=notes)


def _check_ham_dx(
    table: _Table,
    ids: pd.Series,
    diagnoses: pd.Series,
    meta: _Table,
    meta_ids: pd.Series,
    by_id: pd.DataFrame,
) -> None:
    """HAM ``dx`` and the 2018 one-hot are the same labels (docs/ISIC_SOURCES.md 4.3); a disagreement is an error."""
    ham = by_id["dx"].reindex(ids.to_numpy()).reset_index(drop=True)
    bad = (ham.notna() & (ham != diagnoses)).to_numpy()
    if not bad.any():
        return
    position = int(np.argmax(bad))
    meta_position = int(np.argmax((meta_ids == ids.iloc[position]).to_numpy()))
    line = meta.line(meta_position)
    found = str(meta.frame["dx"].iloc[meta_position])
    raise HarmonizeError(
        f"{meta.label}: line {line}: column 'dx': found {found!r} for {ids.iloc[position]}, expected the "
        f"class of {table.label} line {table.line(position)} ({diagnoses.iloc[position]})",
        file=meta.label,
        line=line,
        column="dx",
        value=found,
        expected=str(diagnoses.iloc[position]),
    )


def _merge_agreeing(
    table: _Table,
    ids: pd.Series,
    current: pd.Series,
    by_id: pd.DataFrame,
    column: str,
    other: _Table,
    other_ids: pd.Series,
) -> pd.Series:
    """Fill ``current`` from a second file; where both give a value they must be equal."""
    incoming = by_id[column].reindex(ids.to_numpy()).fillna(vocab.MISSING).reset_index(drop=True)
    clash = ((current != "") & (incoming != "") & (current != incoming)).to_numpy()
    if clash.any():
        position = int(np.argmax(clash))
        other_position = int(np.argmax((other_ids == ids.iloc[position]).to_numpy()))
        line = other.line(other_position)
        raise HarmonizeError(
            f"{other.label}: line {line}: {ids.iloc[position]}: {column} {incoming.iloc[position]!r} "
            "disagrees "
            f"with the HAM10000 metadata ({current.iloc[position]!r}); expected the same value",
            file=other.label,
            line=line,
            column=column,
            value=str(incoming.iloc[position]),
            expected=str(current.iloc[position]),
        )
    return current.where(current != "", incoming).astype(object)


# ---------------------------------------------------------------------------------------------
# 2019
# ---------------------------------------------------------------------------------------------


def harmonize_isic2019(ground_truth: Source, metadata: Source) -> Harmonized:
    """ISIC 2019: one-hot ground truth ``image,MEL,...,SCC,UNK`` plus its metadata CSV.

    2,074 names carry ``_downsampled`` (docs/ISIC_SOURCES.md 1.3): the suffix is stripped from
    ``isic_id`` and kept in ``original_name``. Ground truth and metadata must list the same images;
    the ids that differ are reported. Missing values are empty strings (docs/ISIC_SOURCES.md 1.2).
    """
    table = _read_table(ground_truth, "ground_truth")
    ids, written, stripped, diagnoses = _one_hot_ground_truth(table, vocab.ISIC2019_CLASSES,
                                                              "the ISIC 2019 ground truth")

    meta = _read_table(metadata, "metadata")
    _require_columns(meta, ["image", "age_approx", "anatom_site_general", "sex"], "the ISIC 2019 metadata")
    meta_ids, _, _ = _ids(meta, "image")
    _id_mismatch(table, ids, meta, meta_ids, both_ways=True)
    by_id = pd.DataFrame(
        {
            "age": _ages(meta, "age_approx"),
            "sex": _mapped(meta, "sex", vocab.SEX, "male, female or empty"),
            "site": _mapped(
                meta,
                "anatom_site_general",
                {site: site for site in vocab.SITES_2019},
                f"one of {list(vocab.SITES_2019)} or empty (docs/ISIC_SOURCES.md 1.2)",
            ),
            "lesion_id": _missing_to_empty(meta.frame["lesion_id"])
            if "lesion_id" in meta.frame.columns
            else vocab.MISSING,
        }
    ).set_axis(meta_ids.to_numpy())
    values = {
        **_diagnosis_columns("isic2019", ids, written, diagnoses),
        "age_approx": by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True),
        "sex": _lookup(ids, by_id, "sex", vocab.MISSING),
        "anatom_site_general": _lookup(ids, by_id, "site", vocab.MISSING),
        "lesion_id": _lookup(ids, by_id, "lesion_id", vocab.MISSING),
    }
    frame = _assemble(len(table), values)
    notes = _base_notes(table, stripped)
    notes.append(
        f"{meta.label}: missing {_count(int(frame['age_approx'].isna().sum()))} ages, "
        f"{_count(int((frame['anatom_site_general'] == '').sum()))} sites, "
        f"{_count(int((frame['sex'] == '').sum()))} sexes, "
        f"{_count(int((frame['lesion_id'] == '').sum()))} lesion_ids"
    )
    return Harmonized(frame=frame, notes=notes)


# ---------------------------------------------------------------------------------------------
# 2020
# ---------------------------------------------------------------------------------------------

_ISIC2020_COLUMNS = (
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
)


def harmonize_isic2020(ground_truth: Source, duplicates: Source | None = None) -> Harmonized:
    """SIIM-ISIC 2020 training ground truth, v1 or v2 (v2 adds ``lesion_id``; detected by header).

    ``target`` and ``benign_malignant`` must agree. ``diagnosis`` ``unknown`` is a label ("subtype not
    given") and is kept, unlike the missing spellings elsewhere (docs/ISIC_SOURCES.md 1.2). The Kaggle
    ``train.csv`` (ages written ``45.0``) reads the same as v1. The optional duplicates CSV
    (``image_name_1,image_name_2``, 425 pairs) becomes ``duplicate_pairs``; its ids must be in the
    ground truth.
    """
    table = _read_table(ground_truth, "ground_truth")
    _require_columns(table, _ISIC2020_COLUMNS, "the ISIC 2020 training ground truth")
    version = "v2" if "lesion_id" in table.frame.columns else "v1"
    ids, written, stripped = _ids(table, "image_name")
    bm = _mapped(
        table,
        "benign_malignant",
        {vocab.BENIGN: vocab.BENIGN, vocab.MALIGNANT: vocab.MALIGNANT},
        "benign or malignant",
        allow_missing=False,
    )
    target = _mapped(table, "target", vocab.ISIC2020_TARGET, "0 or 1", allow_missing=False)
    disagree = (bm != target).to_numpy()
    if disagree.any():
        position = int(np.argmax(disagree))
        line = table.line(position)
        found = f"target={table.frame['target'].iloc[position]}, benign_malignant={bm.iloc[position]}"
        raise HarmonizeError(
            f"{table.label}: line {line}: {ids.iloc[position]}: columns 'target' and 'benign_malignant': "
            "found "
            f"{found}; expected target 1 with malignant and 0 with benign",
            file=table.label,
            line=line,
            column="target,benign_malignant",
            value=found,
            expected="target 1 <-> malignant, 0 <-> benign",
        )
    diagnosis = _mapped(
        table,
        "diagnosis",
        {value: value for value in vocab.ISIC2020_DIAGNOSES},
        f"one of {list(vocab.ISIC2020_DIAGNOSES)} (docs/ISIC_SOURCES.md 1.2)",
        allow_missing=False,
    )
    site = _mapped(
        table,
        "anatom_site_general_challenge",
        {value: value for value in vocab.ISIC2020_SITES},
        f"one of {list(vocab.ISIC2020_SITES)} or empty",
    )
    values = {
        "isic_id": ids,
        "benign_malignant": bm,
        "diagnosis": diagnosis,
        "age_approx": _ages(table, "age_approx"),
        "sex": _mapped(table, "sex", vocab.SEX, "male, female or empty"),
        "anatom_site_general": site,
        "patient_id": _missing_to_empty(table.frame["patient_id"]),
        "lesion_id": _missing_to_empty(table.frame["lesion_id"]) if version == "v2" else vocab.MISSING,
        "copyright_license": vocab.RELEASE_LICENSES["isic2020"],
        "attribution": vocab.RELEASE_ATTRIBUTIONS["isic2020"],
        "original_name": written,
    }
    notes = _base_notes(table, stripped)
    notes.append(
        f"{table.label}: ISIC 2020 ground truth {version} "
        f"({'lesion_id present' if version == 'v2' else 'no lesion_id'})"
    )
    notes.append(f"{_count(int((bm == vocab.MALIGNANT).sum()))} malignant of {_count(len(table))}")
    pairs: list[tuple[str, str]] = []
    if duplicates is not None:
        pairs = _duplicate_pairs(duplicates, set(ids), table.label)
        notes.append(f"{_count(len(pairs))} listed duplicate pairs")
    return Harmonized(frame=_assemble(len(table), values), duplicate_pairs=pairs, notes=notes)


def _duplicate_pairs(duplicates: Source, known: set[str], ground_truth_label: str) -> list[tuple[str, str]]:
    table = _read_table(duplicates, "duplicates")
    _require_columns(table, ["image_name_1", "image_name_2"], "the ISIC 2020 duplicates list")
    columns = []
    for name in ("image_name_1", "image_name_2"):
        canonical = [normalize_isic_id(value) for value in table.frame[name].tolist()]
        _value_error(table, np.array([value is None for value in canonical]), name, _ID_EXPECTED)
        unknown = np.array([value not in known for value in canonical])
        _value_error(table, unknown, name, f"an image listed in {ground_truth_label}")
        columns.append(canonical)
    same = np.array([a == b for a, b in zip(*columns)], dtype=bool)
    _value_error(table, same, "image_name_2", "a different image from image_name_1")
    return [(str(a), str(b)) for a, b in zip(*columns)]


# ---------------------------------------------------------------------------------------------
# ISIC Archive export (metadata.csv inside the zip-download / isic-cli output)
# ---------------------------------------------------------------------------------------------

_DIAGNOSIS_LEVELS = tuple(f"diagnosis_{level}" for level in range(1, 6))
_SITE_LEVELS = tuple(f"anatom_site_{level}" for level in range(1, 6))


def _segments(value: str) -> list[str]:
    """Nodes of a hierarchical value: "Trunk:Posterior trunk:Upper back" or a lone "Upper back"."""
    return [part.strip() for part in value.split(":") if part.strip()]


@lru_cache(maxsize=4096)
def _deepest_site(value: str) -> str:
    for node in reversed(_segments(value)):
        if node in vocab.ARCHIVE_SITE_TERMS:
            return vocab.ARCHIVE_SITE_TERMS[node]
    return vocab.MISSING


@lru_cache(maxsize=4096)
def _deepest_diagnosis(value: str) -> str:
    for node in reversed(_segments(value)):
        if node in vocab.ARCHIVE_DIAGNOSIS_TERMS:
            return vocab.ARCHIVE_DIAGNOSIS_TERMS[node]
    return vocab.MISSING


def _map_unique(values: pd.Series, function: Callable[[str], str]) -> pd.Series:
    """Apply a per-value function once per distinct value (archive columns repeat a few hundred values)."""
    table = {value: function(value) for value in values.unique()}
    return values.map(table).astype(object)


def _first_node_check(table: _Table, column: str, allowed: Collection[str]) -> pd.Series:
    values = _missing_to_empty(table.frame[column])
    first = values.map(lambda value: (_segments(value) or [""])[0])
    _value_error(
        table, ((values != "") & ~first.isin(list(allowed))).to_numpy(), column, f"one of {list(allowed)}"
    )
    return values


def _archive_benign_malignant(table: _Table, columns: list[str]) -> tuple[pd.Series, pd.Series | None]:
    current = pd.Series([vocab.MISSING] * len(table), dtype=object)
    if "diagnosis_1" in columns:
        values = _first_node_check(table, "diagnosis_1", vocab.ARCHIVE_DIAGNOSIS_1)
        current = values.map(lambda v: vocab.ARCHIVE_DIAGNOSIS_1.get((_segments(v) or [""])[0], "")).astype(
            object
        )
    legacy_raw = None
    if "benign_malignant" in columns:
        legacy = _mapped(
            table,
            "benign_malignant",
            vocab.LEGACY_BENIGN_MALIGNANT,
            f"one of {list(vocab.LEGACY_BENIGN_MALIGNANT)} or empty (docs/ISIC_SOURCES.md 2.3)",
        )
        current = current.where(current != "", legacy)
        legacy_raw = _missing_to_empty(table.frame["benign_malignant"])
    return current, legacy_raw


def _archive_diagnosis(table: _Table, columns: list[str]) -> pd.Series:
    """Deepest ``diagnosis_2..5`` node in the unified vocabulary, else the deepest value lower-cased."""
    levels = [name for name in _DIAGNOSIS_LEVELS if name in columns]
    mapped = pd.Series([vocab.MISSING] * len(table), dtype=object)
    deepest = pd.Series([vocab.MISSING] * len(table), dtype=object)
    for name in levels:
        values = _missing_to_empty(table.frame[name])
        last = _map_unique(values, lambda v: (_segments(v) or [""])[-1])
        deepest = last.where(last != "", deepest)
        if name != "diagnosis_1":
            term = _map_unique(values, _deepest_diagnosis)
            mapped = term.where(term != "", mapped)
    current = mapped.where(mapped != "", deepest.str.lower())
    if "diagnosis" in columns:
        legacy = _missing_to_empty(table.frame["diagnosis"])
        current = current.where(current != "", legacy)
    return current.astype(object)


def _archive_site(table: _Table, columns: list[str]) -> pd.Series:
    """Deepest ``anatom_site_1..5`` node we can place; the legacy ``anatom_site_general`` fills gaps."""
    site = pd.Series([vocab.MISSING] * len(table), dtype=object)
    for name in [level for level in _SITE_LEVELS if level in columns]:
        values = (
            _first_node_check(table, name, vocab.ARCHIVE_SITE_LEVEL_1)
            if name == "anatom_site_1"
            else _missing_to_empty(table.frame[name])
        )
        term = _map_unique(values, _deepest_site)
        site = term.where(term != "", site)
    if "anatom_site_general" in columns:
        legacy = _mapped(
            table,
            "anatom_site_general",
            {value: value for value in vocab.UNIFIED_SITES},
            f"one of {list(vocab.UNIFIED_SITES)} or empty",
        )
        site = site.where(site != "", legacy)
    return site


def harmonize_isic_archive(metadata_csv: Source) -> Harmonized:
    """``metadata.csv`` of an ISIC Archive export (zip download or isic-cli), current or legacy schema.

    Current schema (docs/ISIC_SOURCES.md 2.3): ``benign_malignant`` from ``diagnosis_1``
    (Benign/Malignant/Indeterminate); ``diagnosis`` from the deepest ``diagnosis_N`` mapped through
    ``vocab.ARCHIVE_DIAGNOSIS_TERMS``, else the deepest value lower-cased; the site from the deepest
    placeable ``anatom_site_N`` node (so posterior/anterior/lateral torso when given). Legacy schema:
    ``benign_malignant`` (``indeterminate/benign`` and ``indeterminate/malignant`` -> ``indeterminate``,
    the published value kept in ``legacy_benign_malignant``; vocab.py docstring), ``diagnosis`` kept as
    published, ``anatom_site_general``. A file with both uses the current columns and fills gaps from
    the legacy ones. Licence and attribution are per image. Columns the export leaves out (keys with
    no value are absent, docs/ISIC_SOURCES.md 2.2) are empty; all other columns follow as extras.
    """
    table = _read_table(metadata_csv, "metadata")
    _require_columns(table, ["isic_id", "copyright_license", "attribution"], "an ISIC Archive metadata.csv")
    columns = list(table.frame.columns)
    ids, written, stripped = _ids(table, "isic_id")
    license_ = _mapped(
        table,
        "copyright_license",
        {value: value for value in vocab.ARCHIVE_LICENSES},
        f"one of {list(vocab.ARCHIVE_LICENSES)} (docs/ISIC_SOURCES.md 2.4)",
        allow_missing=False,
    )
    benign_malignant, legacy_raw = _archive_benign_malignant(table, columns)

    def optional(name: str) -> pd.Series | str:
        return _missing_to_empty(table.frame[name]) if name in columns else vocab.MISSING

    values = {
        "isic_id": ids,
        "benign_malignant": benign_malignant,
        "diagnosis": _archive_diagnosis(table, columns),
        "age_approx": _ages(table, "age_approx") if "age_approx" in columns else None,
        "sex": _mapped(table, "sex", vocab.SEX, "male, female or empty")
        if "sex" in columns
        else vocab.MISSING,
        "anatom_site_general": _archive_site(table, columns),
        "patient_id": optional("patient_id"),
        "lesion_id": optional("lesion_id"),
        "diagnosis_confirm_type": optional("diagnosis_confirm_type"),
        "copyright_license": license_,
        "attribution": table.frame["attribution"],
        "original_name": written,
    }
    extras = {name: table.frame[name] for name in columns if name not in BASE_COLUMNS}
    if legacy_raw is not None:
        extras["legacy_benign_malignant"] = legacy_raw
    schema = (
        "current+legacy"
        if "diagnosis_1" in columns and "benign_malignant" in columns
        else "current"
        if "diagnosis_1" in columns or "anatom_site_1" in columns
        else "legacy"
        if "benign_malignant" in columns or "diagnosis" in columns
        else "no label columns"
    )
    notes = _base_notes(table, stripped)
    notes.append(f"{table.label}: archive schema {schema}")
    if legacy_raw is not None:
        leaning = int(legacy_raw.isin(["indeterminate/benign", "indeterminate/malignant"]).sum())
        if leaning:
            notes.append(
                f"{_count(leaning)} legacy indeterminate/benign|malignant labels unified to indeterminate"
            )
    return Harmonized(frame=_assemble(len(table), values, extras), notes=notes)


# ---------------------------------------------------------------------------------------------
# Dispatch on catalog format names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FormatSpec:
    function: Callable[..., Harmonized]
    required: tuple[str, ...]
    optional: tuple[str, ...]


_FORMAT_SPECS: dict[str, _FormatSpec] = {
    "isic2016": _FormatSpec(harmonize_isic2016, ("ground_truth",), ()),
    "isic2017": _FormatSpec(harmonize_isic2017, ("ground_truth",), ("metadata",)),
    "isic2018": _FormatSpec(harmonize_isic2018, ("ground_truth",), ("metadata", "lesion_groupings")),
    "isic2019": _FormatSpec(harmonize_isic2019, ("ground_truth", "metadata"), ()),
    "isic2020": _FormatSpec(harmonize_isic2020, ("ground_truth",), ("duplicates",)),
    "isic_archive_zip": _FormatSpec(lambda metadata: harmonize_isic_archive(metadata), ("metadata",), ()),
}


def harmonize(format: str, files: Mapping[str, Source]) -> Harmonized:
    """Harmonize one catalog source: ``format`` is the catalog format name, ``files`` maps roles to files.

    Roles are ``ground_truth``, ``metadata``, ``lesion_groupings`` and ``duplicates`` (for
    ``isic_archive_zip``, ``metadata`` is the metadata.csv the caller read from inside the zip).
    Roles that carry no metadata (e.g. an images zip) are ignored; a metadata role the format does
    not use, a missing required role or an unknown format raises :class:`HarmonizeError`.
    """
    spec = _FORMAT_SPECS.get(format)
    if spec is None:
        raise HarmonizeError(f"unknown ISIC format {format!r}; expected one of {list(FORMATS)}", value=format)
    accepted = set(spec.required) | set(spec.optional)
    for role in files:
        if role in METADATA_ROLES and role not in accepted:
            raise HarmonizeError(
                f"format {format!r} does not use a {role!r} file; expected roles {sorted(accepted)}",
                value=role,
            )
    for role in spec.required:
        if files.get(role) is None:
            extra = (
                " (HAM10000 metadata alone is not enough: the ground truth is required)"
                if format == "isic2018" and role == "ground_truth"
                else ""
            )
            raise HarmonizeError(
                f"format {format!r}: missing required {role!r} file{extra}; given roles {sorted(files)}",
                value=role,
                expected=f"roles {list(spec.required)}",
            )
    arguments = {
        role: files[role] for role in (*spec.required, *spec.optional) if files.get(role) is not None
    }
    return spec.function(**arguments)
