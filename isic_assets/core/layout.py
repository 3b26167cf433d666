"""The data layout in one place: the data root, every stage's folder and file names, and how a
pipeline table is read back. No stage guesses another's paths."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .sources.catalog import Source

DEMO_MIRROR = "demo_mirror"
DOWNLOADS = "downloaded_zips"
MERGED = "merged_data"
TRANSFORMED = "data_transformed"
EDA = "data_visual_repr"
SPLITS_DIR = "neural_network_data"
# Official evaluation sets, beside the splits and never inside them: tools that infer splits from
# folder names (Hugging Face maps eval/evaluation/*_test/*_validation) would mix them in.
EVALUATION_DIR = "evaluation_data"
LOGS = "logs"
# The record of each stage's last complete run, what a no-change re-run compares against
# (core/stage_fingerprint.py).
STAGE_RECORDS = "stage_records"

# File names inside the stage folders.
DOWNLOAD_MANIFEST = "manifest.json"  # downloaded_zips/: url, size, sha256, etag per file
METADATA_CSV = "metadata.csv"  # merged_data/, data_transformed/, an API download
# merged_data/: the same rows with their types; each split folder: the imagefolder metadata.
METADATA_PARQUET = "metadata.parquet"
DUPLICATES_CSV = "duplicates.csv"  # merged_data/
QUARANTINE_CSV = "quarantine.csv"  # merged_data/ and data_transformed/
CONFLICTS_CSV = "conflicts.csv"  # merged_data/
NEAR_DUPLICATES_CSV = "near_duplicates.csv"  # merged_data/: confirmed look-alike pairs of different ids
STATE_DIR = "_state"  # merged_data/_state/: caches that make re-runs incremental
NORMALIZATION_JSON = "normalization.json"  # data_transformed/
REPORT_HTML = "report.html"  # data_visual_repr/
MANIFEST_CSV = "manifest.csv"  # neural_network_data/
PLAN_JSON = "splits.json"  # neural_network_data/: the split plan and its config
DATASET_CARD = "DATASET_CARD.md"  # neural_network_data/
EVALUATION_OVERLAP_CSV = "evaluation_overlap.csv"  # evaluation_data/: training images held out, and why

DATA_DIR_ENV = "ISIC_DATA_DIR"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``data/`` in the repository for a checkout (editable install), else ``data/`` in the cwd."""
    repo = PACKAGE_ROOT.parent
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / "data"


def data_root(explicit: str | None = None) -> Path:
    """The data root: ``explicit``, else $ISIC_DATA_DIR, else :func:`default_data_dir` (not created)."""
    raw = explicit or os.environ.get(DATA_DIR_ENV) or str(default_data_dir())
    return Path(raw).expanduser().resolve()


# Rows per chunk of ``read_table_chunks``. A chunk's Python strings, not its text, are the cost: chunks
# of 10,000 rows of the 83 transformed columns of a 2024 source raised the transform stage's table
# side by about 40 MB over chunks of 2,000 rows (docs/PERFORMANCE.md "ISIC 2024 at archive scale").
CHUNK_ROWS = 4096


def read_table(path: Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """A table the pipeline wrote: every column as text, missing values as empty strings.

    ``columns`` reads only those columns (in the file's order; a name the file lacks is left out, so
    ``"x" in frame.columns`` still tells): a stage that needs five of the 61 columns of an ISIC 2024
    table then holds a tenth of the strings (docs/PERFORMANCE.md "ISIC 2024 at archive scale").
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; materialize the upstream asset first")
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=_wanted(columns))


def read_table_chunks(path: Path, columns: Iterable[str] | None = None,
                      rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """:func:`read_table` a chunk of ``rows`` rows at a time (the same text, row order and index)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; materialize the upstream asset first")
    with pd.read_csv(path, dtype=str, keep_default_na=False, usecols=_wanted(columns), chunksize=rows) as reader:
        yield from reader


def read_table_shared(path: Path, columns: Iterable[str] | None = None, rows: int = CHUNK_ROWS,
                      keep_arrow: Iterable[str] = ()) -> pd.DataFrame:
    """:func:`read_table` with every column as Python strings, one string per distinct value of a chunk
    shared by its rows (:func:`shared_strings`), read a chunk at a time: the same values.

    For stages that work on Python objects (grouping, planning): converting the Arrow-backed text of
    a whole table makes a string per row and column, and the parser's buffers for all rows at once
    come on top; a chunk at a time, a repeated value (a label, a source, a patient) costs a pointer
    per row (docs/PERFORMANCE.md "The stages after the merge"). Columns named in ``keep_arrow`` (a
    digest, unique per row and only ever compared) stay Arrow-backed text: about half the bytes.
    """
    keep = tuple(keep_arrow)
    parts = [shared_strings(chunk, keep) for chunk in read_table_chunks(path, columns, rows)]
    if len(parts) <= 1:
        return parts[0] if parts else shared_strings(read_table(path, columns), keep)
    return pd.concat(parts, ignore_index=True)


def shared_strings(frame: pd.DataFrame, keep_arrow: Iterable[str] = ()) -> pd.DataFrame:
    """``frame`` with every text column as Python strings, one string per distinct value shared by its
    rows, values unchanged (other columns, and those named in ``keep_arrow``, as they are). Each
    conversion of an Arrow-backed text column to Python objects otherwise makes a new string per row
    (about 60 to 110 bytes)."""
    out = {}
    keep = set(keep_arrow)
    for column in frame.columns:
        values = frame[column]
        if column not in keep and values.dtype != object and pd.api.types.is_string_dtype(values.dtype):
            codes, uniques = pd.factorize(values)
            table = np.append(uniques.to_numpy(dtype=object), np.array([np.nan], dtype=object))
            values = pd.Series(table[codes], index=frame.index, dtype=object)
        out[column] = values
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def read_rows_of(path: Path, isic_ids: Iterable[str], column: str = "isic_id") -> pd.DataFrame:
    """Every column of the rows of ``path`` whose ``column`` is one of ``isic_ids``, in file order:
    the same frame as ``read_table(path)`` filtered to those rows (index renumbered), read a chunk at
    a time so the other rows are never all held."""
    wanted = set(isic_ids)
    if not wanted:  # the header only: nothing to read (evaluation_sets without an evaluation source)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist; materialize the upstream asset first")
        return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0)
    parts = [chunk[chunk[column].isin(wanted)] for chunk in read_table_chunks(path)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


def row_count_and_widths(path: Path, columns: Sequence[str], rows: int = CHUNK_ROWS) -> tuple[int, list[int]]:
    """The number of rows of a table and the longest UTF-8 value (in bytes, at least 1) of each of
    ``columns``, read ``rows`` rows at a time: the first pass of a read into fixed-width bytes columns
    made at their final size and then filled. Gathering each chunk's columns and joining them held
    the columns twice, and what was freed stayed in the heap."""
    count, widths = 0, [1] * len(columns)
    for chunk in read_table_chunks(path, columns=columns, rows=rows):
        count += len(chunk)
        for number, name in enumerate(columns):
            longest = pc.max(pc.binary_length(pa.array(chunk[name], type=pa.string()))).as_py()
            widths[number] = max(widths[number], longest or 0)
    return count, widths


def table_columns(path: Path) -> list[str]:
    """The header of a table the pipeline wrote, without reading its rows."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; materialize the upstream asset first")
    return list(pd.read_csv(path, dtype=str, keep_default_na=False, nrows=0).columns)


def _wanted(columns: Iterable[str] | None) -> Callable[[str], bool] | None:
    if columns is None:
        return None
    wanted = frozenset(columns)
    return wanted.__contains__


def download_path(root: Path, source: Source, role: str) -> Path:
    """Where raw_zips puts a source's file: ``downloaded_zips/<source>/<file name as published>``."""
    return Path(root) / DOWNLOADS / source.name / source.files[role].filename


def api_folder(root: Path, source: Source) -> Path:
    """Where an ``isic_api`` source's images/ and metadata.csv are downloaded."""
    return Path(root) / DOWNLOADS / source.name


def downloaded_files(root: Path, source: Source) -> dict[str, Path]:
    """Every file of a source as downloaded, by role; an error names the first one missing."""
    if source.format == "isic_api":
        folder = api_folder(root, source)
        if not (folder / METADATA_CSV).is_file():
            raise FileNotFoundError(f"source {source.name!r} has no {folder / {METADATA_CSV}}; "
                                    "materialize raw_zips first")
        return {"folder": folder}
    files = {role: download_path(root, source, role) for role in source.files}
    missing = [f"{role}: {path}" for role, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"source {source.name!r} is not fully downloaded ({'; '.join(missing)}); materialize raw_zips first"
        )
    return files
