"""What every format of this package shares: the unified schema, strict CSV reading, column helpers.

Reading is strict on purpose: a value we do not understand raises :class:`HarmonizeError` naming the
file, the 1-based line, the column, the value found and what was expected. No row is ever dropped:
a row is either harmonized or the whole file is rejected. The format modules (one per family of
releases) build on the helpers here; their underscore names are private to this package.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    # Columns parsed into float64 while reading (``_read_table(numeric_columns=...)``).
    numeric: Mapping[str, NumericColumn] = field(default_factory=dict)

    def line(self, position: int) -> int:
        return int(self.lines[position])

    def __len__(self) -> int:
        return len(self.frame)


def _source_text(source: Source, role: str) -> tuple[str, Iterator[str]]:
    """The text of a source, a block of whole lines at a time; a zip holding exactly one CSV is
    opened (2018 ground truth ships so). A file on disk is read a block at a time, never whole."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise HarmonizeError(
                f"{path}: cannot read the {role} file ({exc.strerror or exc})", file=str(path)
            ) from exc
        return _text_of_stream(str(path), handle, role, close=True)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _text_of_stream(f"<{role} bytes>", io.BytesIO(bytes(source)), role)
    return _text_of_stream(str(getattr(source, "name", "") or f"<{role} stream>"), source, role)


def _text_of_stream(label: str, stream: IO[bytes], role: str, close: bool = False) -> tuple[str, Iterator[str]]:
    try:
        first = stream.read(_BLOCK_BYTES)
    except OSError as exc:
        stream.close()
        raise HarmonizeError(f"{label}: cannot read the {role} file ({exc.strerror or exc})", file=label) from exc
    if isinstance(first, str):
        raise HarmonizeError(f"{label}: the {role} stream is a text stream; expected bytes", file=label)
    if first[:4] == b"PK\x03\x04":
        data = first + stream.read()
        if close:
            stream.close()
        label, data = _single_csv_from_zip(label, data, role)
        return label, _text_blocks(label, io.BytesIO(data), b"")
    return label, _text_blocks(label, stream, first, close=close)


def _text_blocks(label: str, stream: IO[bytes], first: bytes, close: bool = False) -> Iterator[str]:
    """The decoded text of ``stream`` a block of whole lines at a time (``first``: bytes already read).

    Blocks end after a ``\\n``, so neither a line ending nor a UTF-8 character is cut; a file without
    one (``\\r`` line endings) is one block. A byte that is not UTF-8 names its line, as when the
    file was decoded whole.
    """
    carry, newlines, bom = first, 0, True
    try:
        while True:
            block = stream.read(_BLOCK_BYTES)
            data = carry + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            if data:
                yield _decode(label, data, newlines, bom=bom)
                bom = False
                newlines += data.count(b"\n")
            if not block:
                return
    finally:
        if close:
            stream.close()


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


def _decode(label: str, data: bytes, lines_before: int = 0, *, bom: bool = True) -> str:
    """UTF-8 with or without a BOM (``utf-8-sig`` drops it); anything else names the line."""
    try:
        return data.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + data.count(b"\n", 0, exc.start) + 1
        raise HarmonizeError(
            f"{label}: line {line}: byte {data[exc.start]:#04x} is not UTF-8; expected a UTF-8 CSV",
            file=label,
            line=line,
        ) from exc


# A line and its ending as io.StringIO(newline="") splits them (\r\n, \r or \n), or a last unended line.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    """The lines of the text blocks for csv.reader, one at a time.

    io.StringIO would copy the whole text into a 4-byte-per-character buffer: 180 MB for the
    45 MB metadata CSV of 100k ISIC 2024 images, more than the table it becomes. Blocks end with a
    line, so a line is never split between two.
    """
    for text in blocks:
        for match in _LINE.finditer(text):
            yield match.group()


_CHUNK_ROWS = 8192  # rows parsed before they are turned into compact columns
_BLOCK_BYTES = 4 << 20  # bytes of a CSV file read and decoded at a time
_SHARED_VALUES = 4096  # distinct values per column shared as one object; beyond that, ids or numbers


@dataclass(frozen=True)
class NumericColumn:
    """What parsing a documented numeric column left behind besides its float64 values.

    ``bad`` flags the rows whose value is neither a number nor a missing spelling (their raw text is
    in ``bad_text`` by file line, for the error message); ``any_missing`` and ``any_dot`` decide, as
    for a column of strings, whether whole numbers stay integers.
    """

    bad: np.ndarray
    bad_text: Mapping[int, str]
    any_missing: bool
    any_dot: bool

    def take(self, positions: np.ndarray) -> NumericColumn:
        return NumericColumn(self.bad[positions], self.bad_text, self.any_missing, self.any_dot)


class _ColumnBuilder:
    """Rows in, compact columns out: chunks of parsed rows become one array per column.

    Keeping every row as a list of strings costs about 7 KB per ISIC 2024 row (55 columns); here a
    repeated value (a sex, a site, a patient id) is one shared object, and the documented numeric
    columns are parsed chunk by chunk into float64 right away.
    """

    def __init__(self, header: list[str], numeric_columns: Collection[str]) -> None:
        self.header = header
        self.numeric = {name for name in header if name in numeric_columns}
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in header}
        self.shared: dict[str, dict[str, str] | None] = {name: {} for name in header if name not in self.numeric}
        self.bad: dict[str, list[np.ndarray]] = {name: [] for name in self.numeric}
        self.bad_text: dict[str, dict[int, str]] = {name: {} for name in self.numeric}
        self.any_missing = dict.fromkeys(self.numeric, False)
        self.any_dot = dict.fromkeys(self.numeric, False)

    def add(self, rows: list[list[str]], lines: list[int]) -> None:
        if not rows:
            return
        for name, values in zip(self.header, zip(*rows, strict=True), strict=True):
            if name in self.numeric:
                self._add_numbers(name, values, lines)
            else:
                self._add_text(name, values)

    def _add_text(self, name: str, values: tuple[str, ...]) -> None:
        shared = self.shared[name]
        array = np.empty(len(values), dtype=object)
        if shared is None:
            array[:] = values
        else:
            array[:] = [shared.setdefault(value, value) for value in values]
            if len(shared) > _SHARED_VALUES:
                self.shared[name] = None  # ids or measurements: nothing to share
        self.chunks[name].append(array)

    def _add_numbers(self, name: str, values: tuple[str, ...], lines: list[int]) -> None:
        raw = pd.Series(np.array(values, dtype=object), dtype=object)
        missing = raw.isin(vocab.MISSING_SPELLINGS)
        numbers = pd.to_numeric(raw.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(numbers) & ~missing.to_numpy()
        for position in np.flatnonzero(bad):
            self.bad_text[name][lines[position]] = values[position]
        self.chunks[name].append(numbers)
        self.bad[name].append(bad)
        self.any_missing[name] = self.any_missing[name] or bool(missing.any())
        self.any_dot[name] = self.any_dot[name] or any("." in value for value in values)

    def frame(self) -> tuple[pd.DataFrame, dict[str, NumericColumn]]:
        data: dict[str, pd.Series] = {}
        numeric: dict[str, NumericColumn] = {}
        for name in self.header:
            chunks = self.chunks.pop(name)
            if name in self.numeric:
                data[name] = pd.Series(np.concatenate(chunks) if chunks else np.empty(0), dtype=np.float64)
                bad = np.concatenate(self.bad[name]) if chunks else np.zeros(0, dtype=bool)
                numeric[name] = NumericColumn(bad, self.bad_text[name], self.any_missing[name], self.any_dot[name])
            else:
                data[name] = pd.Series(np.concatenate(chunks) if chunks else np.empty(0, dtype=object), dtype=object)
        return pd.DataFrame(data, columns=self.header), numeric


def _read_table(
    source: Source,
    role: str,
    *,
    headerless_columns: Sequence[str] | None = None,
    numeric_columns: Collection[str] = (),
) -> _Table:
    """Parse a CSV into strings, keeping the file line of each row (the whole file as one table).

    The csv module is used instead of ``pd.read_csv`` because pandas silently skips blank lines,
    which would make the reported line numbers wrong. CRLF, a missing final newline and a UTF-8 BOM
    are all handled. Every value is a stripped string; nothing is converted to NaN here, so the
    2020 label ``unknown`` survives (docs/ISIC_SOURCES.md 1.2). The exception: ``numeric_columns``
    present in the file are parsed into float64 as they are read (``_Table.numeric`` keeps what
    the caller needs to judge them), so a 400k-row table of measurements is not held as text.
    Rows are turned into columns every few thousand, so memory follows the table, not its text.
    """
    return next(_read_table_chunks(source, role, headerless_columns=headerless_columns,
                                   numeric_columns=numeric_columns))


def _read_table_chunks(
    source: Source,
    role: str,
    *,
    headerless_columns: Sequence[str] | None = None,
    numeric_columns: Collection[str] = (),
    chunk_rows: int | None = None,
) -> Iterator[_Table]:
    """:func:`_read_table` a chunk of ``chunk_rows`` rows at a time (``None``: one table of every row).

    Each table carries the file lines of its own rows and the blank lines met since the previous
    one. The last table is always given, even empty. A fault of the file (unreadable CSV, a row of
    the wrong width, a repeated header name) is raised before the table of the rows it lies among,
    so with one chunk the errors come in the order of the whole-file reading.
    """
    label, blocks = _source_text(source, role)
    reader = csv.reader(_lines(blocks))
    header: list[str] | None = list(headerless_columns) if headerless_columns is not None else None
    header_line = 0
    builder = _ColumnBuilder(header, numeric_columns) if header is not None else None
    rows: list[list[str]] = []
    row_lines: list[int] = []
    body_lines: list[int] = []
    # Found while reading but raised after it, so an unreadable line further down is reported first.
    wrong_width: tuple[int, list[str]] | None = None
    blank = 0
    previous_end = 0
    in_chunk = 0

    def table() -> _Table:
        assert header is not None
        _check_header(label, header, header_line, headerless_columns is None)
        _check_width(label, header, wrong_width)
        done = builder or _ColumnBuilder(header, numeric_columns)
        done.add(rows, row_lines)
        # object dtype while validating (building Arrow strings per step is slow); _assemble converts.
        frame, numeric = done.frame()
        return _Table(label=label, frame=frame, lines=np.asarray(body_lines + row_lines, dtype=np.int64),
                      blank_lines=blank, numeric=numeric)

    try:
        for record in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not record:
                blank += 1
                continue
            values = [value.strip() for value in record]
            if header is None:
                header, header_line = values, start
                continue
            if len(values) != len(header):
                wrong_width = wrong_width or (start, values)
                continue
            if builder is None:
                builder = _ColumnBuilder(header, numeric_columns) if len(set(header)) == len(header) else None
            rows.append(values)
            row_lines.append(start)
            in_chunk += 1
            if chunk_rows is not None and in_chunk == chunk_rows:
                yield table()
                builder, rows, row_lines, body_lines, blank, in_chunk = None, [], [], [], 0, 0
            elif len(rows) == _CHUNK_ROWS:
                if builder is not None:
                    builder.add(rows, row_lines)
                body_lines += row_lines
                rows, row_lines = [], []
    except csv.Error as exc:
        raise HarmonizeError(
            f"{label}: line {reader.line_num}: unreadable CSV ({exc})", file=label, line=reader.line_num
        ) from exc

    if header is None:
        raise HarmonizeError(
            f"{label}: line 1: the file is empty; expected a CSV header", file=label, line=1
        )
    yield table()


def _check_header(label: str, header: list[str], header_line: int, named: bool) -> None:
    if not named:
        return
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise HarmonizeError(
                f"{label}: line {header_line}: column {name!r} appears twice in the header {header}; "
                "expected unique column names",
                file=label,
                line=header_line,
                column=name,
            )
        seen.add(name)


def _check_width(label: str, header: list[str], wrong_width: tuple[int, list[str]] | None) -> None:
    if wrong_width is None:
        return
    width = len(header)
    line, record = wrong_width
    raise HarmonizeError(
        f"{label}: line {line}: found {len(record)} fields {record}; expected {width} "
        f"(header {header})",
        file=label,
        line=line,
        value=",".join(record),
        expected=f"{width} fields",
    )


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
    line = table.line(position)
    parsed = table.numeric.get(column)
    value = parsed.bad_text[line] if parsed is not None else str(table.frame[column].iloc[position])
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


class SeenIds:
    """The ids of the chunks of one file read so far, kept on disk, so a chunked reading still finds
    an id repeated in two chunks (a private temporary SQLite database: gone when closed)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "": a temporary database on disk, not in memory
        self.db.execute("CREATE TABLE seen (isic_id TEXT PRIMARY KEY, line INTEGER, written TEXT) WITHOUT ROWID")

    def first_repeat(self, table: _Table, ids: list[str], written: list[str]) -> tuple[int, int, str] | None:
        """Record this chunk's ids; the first row whose id an earlier row had (in this chunk or an
        earlier one), as (position, that earlier row's line, its spelling), or None."""
        before = self.db.total_changes
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)",
                            zip(ids, table.lines.tolist(), written, strict=True))
        if self.db.total_changes - before == len(ids):
            return None
        for position, isic_id in enumerate(ids):
            line, spelled = self.db.execute("SELECT line, written FROM seen WHERE isic_id = ?", (isic_id,)).fetchone()
            if line != table.line(position):
                return position, int(line), str(spelled)
        return None

    def close(self) -> None:
        self.db.close()


def _ids(table: _Table, column: str, seen: SeenIds | None = None) -> tuple[pd.Series, pd.Series, int]:
    """Canonical ids, the ids as written, and how many had ``_downsampled`` stripped.

    Two rows with one canonical id in one file are an error naming both lines: which row is right
    cannot be decided here, and keeping either would drop the other silently. ``seen`` holds the
    ids of the earlier chunks when a file is read a chunk at a time.
    """
    written = table.frame[column]
    canonical = [normalize_isic_id(value) for value in written.tolist()]
    _value_error(table, np.array([value is None for value in canonical], dtype=bool), column, _ID_EXPECTED)
    ids = pd.Series(canonical, dtype=object)
    if seen is not None:  # one look-up finds a repeat within this chunk or of an earlier one
        repeat = seen.first_repeat(table, canonical, written.tolist())  # type: ignore[arg-type]
    else:
        repeated = ids.duplicated(keep="first").to_numpy()
        second = int(np.argmax(repeated))
        first = int(np.argmax((ids == ids.iloc[second]).to_numpy())) if repeated.any() else 0
        repeat = (second, table.line(first), written.iloc[first]) if repeated.any() else None
    if repeat is not None:
        second, line_a, spelled_a = repeat
        line_b = table.line(second)
        raise HarmonizeError(
            f"{table.label}: lines {line_a} and {line_b}: column {column!r}: id {ids.iloc[second]} appears "
            f"twice ({spelled_a!r} and {written.iloc[second]!r}); expected one row per image",
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

