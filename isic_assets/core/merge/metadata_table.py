"""merged_data/metadata.csv and .parquet: one row per kept image, its metadata and file facts.

Also writes the merge's other tables (duplicates, quarantine, conflicts), each atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..atomic import atomic_open

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
    _write_csv(out_dir / layout.METADATA_CSV, report.metadata)
    with atomic_open(out_dir / layout.METADATA_PARQUET, "wb") as handle:
        report.metadata.to_parquet(handle, index=False)
    _write_csv(out_dir / layout.DUPLICATES_CSV, report.duplicates)
    _write_csv(out_dir / layout.QUARANTINE_CSV, report.quarantine)
    _write_csv(out_dir / layout.CONFLICTS_CSV, report.conflicts)


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_open(path, "w") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")
