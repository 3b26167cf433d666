"""Data-quality measurements behind the asset checks, computed on plain DataFrames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

LABEL_COLUMN = "benign_malignant"
GROUPING_COLUMNS = ("patient_id", "lesion_id")


def missing_percentages(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, float]:
    """Percentage of rows with no value per column; empty strings count as missing.

    The merged CSV writes every missing value as an empty cell, whatever the source spelled it, so
    one rule covers every year (``unknown`` in 2020 ``diagnosis`` is a label and is not counted).
    """
    columns = columns if columns is not None else list(frame.columns)
    if len(frame) == 0:
        return dict.fromkeys(columns, 0.0)
    result = {}
    for column in columns:
        values = frame[column]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        result[column] = round(100.0 * float(missing.mean()), 3)
    return result


def share_without_grouping_key(frame: pd.DataFrame) -> float:
    """Percentage of rows with neither a patient nor a lesion id: each is its own split group."""
    if len(frame) == 0:
        return 0.0
    present = [c for c in GROUPING_COLUMNS if c in frame.columns]
    if not present:
        return 100.0
    has_key = pd.Series(False, index=frame.index)
    for column in present:
        has_key |= frame[column].fillna("").astype(str).str.strip() != ""
    return round(100.0 * float((~has_key).mean()), 3)


def class_counts(frame: pd.DataFrame, column: str = LABEL_COLUMN) -> dict[str, int]:
    """Rows per label value, with missing labels counted under ``unlabelled``."""
    if column not in frame.columns or len(frame) == 0:
        return {}
    values = frame[column].fillna("").astype(str).replace("", "unlabelled")
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def unreadable_images(frame: pd.DataFrame, base: Path, size_column: str | None = None) -> list[dict[str, str]]:
    """Rows whose ``image`` file is missing, has another size than recorded, or whose header fails.

    A header read (Pillow ``open``, tens of microseconds) proves the file is an image of the
    recorded kind without decoding it again: the full decode already happened when it was written.
    """
    from PIL import Image, UnidentifiedImageError

    problems = []
    for row in frame.itertuples(index=False):
        path = Path(base) / str(row.image)
        reason = ""
        if not path.is_file():
            reason = "missing file"
        elif size_column and str(getattr(row, size_column)) and path.stat().st_size != int(getattr(row, size_column)):
            reason = f"size {path.stat().st_size} != recorded {getattr(row, size_column)}"
        else:
            try:
                with Image.open(path) as img:
                    img.size  # noqa: B018 - the header parse is the check
            except (OSError, UnidentifiedImageError) as exc:
                reason = f"not readable: {exc}"
        if reason:
            problems.append({"isic_id": str(row.isic_id), "image": str(row.image), "reason": reason})
    return problems
