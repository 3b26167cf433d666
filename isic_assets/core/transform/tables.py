"""The transform stage's tables: data_transformed/metadata.csv and quarantine.csv.

metadata.csv carries the merged columns of every transformed image (the merged file's name, size,
dimensions and hash renamed to ``merged_image`` / ``source_*``), the output's own ``image``, size and
hash, and the transform that made it; quarantine.csv lists every image the transform refused, with
the reason. Both are written atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import layout
from ..atomic import atomic_open
from ..table_schema import column_types, typed_columns
from .image_ops import TransformSettings
from .records import TransformReport, output_name

# Merged columns that describe the merged file, renamed so the output's own columns can take the names.
SOURCE_RENAMES = {"image": "merged_image", "width": "source_width", "height": "source_height",
                  "sha256": "source_sha256", "file_bytes": "source_file_bytes"}
QUARANTINE_COLUMNS = ["isic_id", "src", "reason"]
# Columns the transform adds (the merged ones are carried over as text, see transformed_column_types).
OWN_COLUMNS = ("image", "width", "height", "sha256", "transform", "transform_fingerprint")


def transformed_metadata(metadata: pd.DataFrame, report: TransformReport, settings: TransformSettings) -> pd.DataFrame:
    """One row per transformed image: its merged columns plus the output's path, size, hash and transform."""
    positions = report.images.positions(metadata["isic_id"].to_numpy())
    has_output = positions >= 0
    done = metadata[has_output].copy()
    done = done.rename(columns=SOURCE_RENAMES)
    outputs, at = report.images, positions[has_output]
    done["image"] = [output_name(i.decode()) for i in outputs.ids[at].tolist()]
    done["width"] = outputs.width[at]
    done["height"] = outputs.height[at]
    done["sha256"] = np.asarray(outputs.sha256_strings(at), dtype=object)
    done["transform"] = describe_transform(settings)
    done["transform_fingerprint"] = report.fingerprint
    return done


def quarantine_table(report: TransformReport) -> pd.DataFrame:
    return pd.DataFrame([q.__dict__ for q in report.quarantine], columns=QUARANTINE_COLUMNS)


@dataclass(frozen=True)
class WrittenTable:
    """What ``write_transform_tables`` wrote to metadata.csv: how many rows, the columns, and the
    types of the transform's own columns (the rest are the merged ones, see transformed_column_types)."""

    rows: int
    columns: tuple[str, ...]
    own_types: dict[str, str]


def write_transform_tables(metadata: pd.DataFrame | Iterable[pd.DataFrame], report: TransformReport,
                           settings: TransformSettings, out_dir: Path) -> WrittenTable:
    """Write metadata.csv and quarantine.csv into ``out_dir``; return what metadata.csv holds.

    ``metadata`` is the merged table, whole or as consecutive chunks of rows (``layout.read_table_chunks``):
    each chunk is written as it comes, so the 61 columns of an ISIC 2024 archive are never all in
    memory at once, and the bytes are the same as from the whole table.
    """
    chunks = [metadata] if isinstance(metadata, pd.DataFrame) else metadata
    rows, columns, own_types, typed = 0, (), {}, False
    with atomic_open(Path(out_dir) / layout.METADATA_CSV, "w") as handle:
        for number, chunk in enumerate(chunks):
            done = transformed_metadata(chunk, report, settings)
            done.to_csv(handle, index=False, header=number == 0, lineterminator="\n")
            rows += len(done)
            columns = tuple(str(c) for c in done.columns)
            if not typed:  # the own columns' dtypes as a table with rows has them
                own_types = {k: v for k, v in column_types(done).items() if k in OWN_COLUMNS}
                typed = len(done) > 0
    with atomic_open(Path(out_dir) / layout.QUARANTINE_CSV, "w") as handle:
        quarantine_table(report).to_csv(handle, index=False, lineterminator="\n")
    return WrittenTable(rows, columns, own_types)


def describe_transform(settings: TransformSettings) -> str:
    """The transform in words, e.g. ``pad 256x256; shades-of-gray; jpeg q95``."""
    steps = [f"{settings.mode} {settings.size}x{settings.size}"]
    if settings.color_constancy:
        steps.append("shades-of-gray")
    if settings.hair_removal:
        steps.append("hair-removal")
    steps.append(f"jpeg q{settings.jpeg_quality}")
    return "; ".join(steps)


def transformed_column_types(table: pd.DataFrame | WrittenTable, merged_types: dict[str, str]) -> dict[str, str]:
    """Column types of metadata.csv: the transform's own columns as they were written, every merged
    column as merged_data/metadata.parquet stores it (``merged_types``), under its renamed name."""
    renamed = {SOURCE_RENAMES.get(name, name): kind for name, kind in merged_types.items()}
    if isinstance(table, WrittenTable):
        return typed_columns(table.columns, table.own_types, renamed)
    own = {name: kind for name, kind in column_types(table).items() if name in OWN_COLUMNS}
    return typed_columns(table.columns, own, renamed)
