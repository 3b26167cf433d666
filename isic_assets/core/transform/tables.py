"""The transform stage's tables: data_transformed/metadata.csv and quarantine.csv.

metadata.csv carries the merged columns of every transformed image (the merged file's name, size,
dimensions and hash renamed to ``merged_image`` / ``source_*``), the output's own ``image``, size and
hash, and the transform that made it; quarantine.csv lists every image the transform refused, with
the reason. Both are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import layout
from ..atomic import atomic_open
from ..table_schema import column_types, typed_columns
from .image_ops import TransformSettings
from .records import TransformReport

# Merged columns that describe the merged file, renamed so the output's own columns can take the names.
SOURCE_RENAMES = {"image": "merged_image", "width": "source_width", "height": "source_height",
                  "sha256": "source_sha256", "file_bytes": "source_file_bytes"}
QUARANTINE_COLUMNS = ["isic_id", "src", "reason"]
# Columns the transform adds (the merged ones are carried over as text, see transformed_column_types).
OWN_COLUMNS = ("image", "width", "height", "sha256", "transform", "transform_fingerprint")


def transformed_metadata(metadata: pd.DataFrame, report: TransformReport, settings: TransformSettings) -> pd.DataFrame:
    """One row per transformed image: its merged columns plus the output's path, size, hash and transform."""
    done = metadata[metadata["isic_id"].isin(report.images)].copy()
    done = done.rename(columns=SOURCE_RENAMES)
    outputs = [report.images[i] for i in done["isic_id"]]
    done["image"] = [o.path for o in outputs]
    done["width"] = [o.width for o in outputs]
    done["height"] = [o.height for o in outputs]
    done["sha256"] = [o.sha256 for o in outputs]
    done["transform"] = describe_transform(settings)
    done["transform_fingerprint"] = report.fingerprint
    return done


def quarantine_table(report: TransformReport) -> pd.DataFrame:
    return pd.DataFrame([q.__dict__ for q in report.quarantine], columns=QUARANTINE_COLUMNS)


def write_transform_tables(metadata: pd.DataFrame, report: TransformReport, settings: TransformSettings,
                           out_dir: Path) -> pd.DataFrame:
    """Write metadata.csv and quarantine.csv into ``out_dir``; return the metadata table as written."""
    done = transformed_metadata(metadata, report, settings)
    with atomic_open(Path(out_dir) / layout.METADATA_CSV, "w") as handle:
        done.to_csv(handle, index=False, lineterminator="\n")
    with atomic_open(Path(out_dir) / layout.QUARANTINE_CSV, "w") as handle:
        quarantine_table(report).to_csv(handle, index=False, lineterminator="\n")
    return done


def describe_transform(settings: TransformSettings) -> str:
    """The transform in words, e.g. ``pad 256x256; shades-of-gray; jpeg q95``."""
    steps = [f"{settings.mode} {settings.size}x{settings.size}"]
    if settings.color_constancy:
        steps.append("shades-of-gray")
    if settings.hair_removal:
        steps.append("hair-removal")
    steps.append(f"jpeg q{settings.jpeg_quality}")
    return "; ".join(steps)


def transformed_column_types(table: pd.DataFrame, merged_types: dict[str, str]) -> dict[str, str]:
    """Column types of metadata.csv: the transform's own columns as they were written, every merged
    column as merged_data/metadata.parquet stores it (``merged_types``), under its renamed name."""
    renamed = {SOURCE_RENAMES.get(name, name): kind for name, kind in merged_types.items()}
    own = {name: kind for name, kind in column_types(table).items() if name in OWN_COLUMNS}
    return typed_columns(table.columns, own, renamed)
