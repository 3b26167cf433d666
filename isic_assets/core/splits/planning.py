"""From the prepared metadata to a split plan: label-conflict exclusion, leakage groups, assignment.

One function shared by the balanced_splits asset and the check that asks, before any image is
prepared, whether the requested balanced dataset can be built (``feasibility.py``), so both see the
same rows, the same groups and the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import layout
from .assign import SplitConfig, SplitPlan, assign_splits
from .folds import assign_folds
from .grouping import LINK_COLUMNS, build_groups, factorize
from .near_duplicates import to_drop


def plan_columns(label_column: str) -> tuple[str, ...]:
    """The metadata columns planning, the dataset card and the licence counts read: a transformed
    ISIC 2024 table has 61, of which the plan needs these (docs/PERFORMANCE.md "ISIC 2024 at archive
    scale"). The splits' per-image metadata files carry every column, read for the planned rows only."""
    return ("isic_id", label_column, "source", "sources", "image_type", "label_conflict", *LINK_COLUMNS,
            "copyright_license", "attribution")


# Read as Arrow-backed text, not Python strings: unique per image and only compared (grouping).
ARROW_COLUMNS = ("sha256",)


def read_plan_table(path: Path, label_column: str) -> pd.DataFrame:
    """The ``plan_columns`` of a metadata table as planning wants them: a chunk at a time, Python
    strings shared per distinct value, the digest as Arrow text (docs/PERFORMANCE.md "The stages
    after the merge")."""
    return layout.read_table_shared(path, plan_columns(label_column), keep_arrow=ARROW_COLUMNS)


@dataclass(frozen=True)
class PlannedSplits:
    """The plan, the metadata rows it was made from, and what was left out: label conflicts by id,
    near-duplicates (``isic_id``, ``kept_isic_id``, ``reason``) when they are dropped."""

    plan: SplitPlan
    metadata: pd.DataFrame
    label_conflicts: list[str]
    near_duplicates_dropped: pd.DataFrame


def label_conflicts(metadata: pd.DataFrame) -> pd.Series:
    """Rows flagged by the merge as having conflicting benign/malignant labels across sources."""
    if "label_conflict" not in metadata.columns:
        return pd.Series(False, index=metadata.index)
    codes, values = factorize(metadata["label_conflict"].astype(str))  # a few distinct values
    return pd.Series(values.str.lower().isin({"true", "1"}).to_numpy()[codes], index=metadata.index)


def plan_splits(metadata: pd.DataFrame, duplicates: pd.DataFrame | None, config: SplitConfig,
                exclude_label_conflicts: bool = True, near_duplicates: pd.DataFrame | None = None,
                near_duplicate_mode: str = "group", folds: int = 0, seed: int = 0) -> PlannedSplits:
    """Plan the splits of ``metadata`` (one row per image), leaving out label conflicts on request.

    Groups come from every image, the left-out ones included: an excluded image can be the only link
    between two others (same lesion as one, same patient as the other). Near-duplicate pairs join
    one group (``group``), also leave all but one image of each set out (``drop``), or are ignored
    (``off``). ``folds`` > 0 adds grouped, stratified folds over the train+validation pool.
    """
    # One Python string per distinct value, shared by every step below; the digest stays Arrow text,
    # which grouping numbers as it is (docs/PERFORMANCE.md "The stages after the merge").
    metadata = layout.shared_strings(metadata, keep_arrow=ARROW_COLUMNS)
    conflicted = label_conflicts(metadata) if exclude_label_conflicts else pd.Series(False, index=metadata.index)
    pairs = near_duplicates if near_duplicate_mode != "off" else None
    groups = build_groups(metadata, duplicates, pairs)
    dropped = to_drop(pairs if near_duplicate_mode == "drop" else None, metadata.loc[~conflicted, "isic_id"])
    kept = metadata.loc[~conflicted & ~metadata["isic_id"].isin(dropped["isic_id"])].reset_index(drop=True)
    plan = assign_folds(assign_splits(kept, groups, config), folds, seed)
    return PlannedSplits(plan=plan, metadata=kept, label_conflicts=metadata.loc[conflicted, "isic_id"].tolist(),
                         near_duplicates_dropped=dropped)
