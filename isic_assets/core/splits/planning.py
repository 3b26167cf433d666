"""From the prepared metadata to a split plan: label-conflict exclusion, leakage groups, assignment.

One function shared by the balanced_splits asset and the check that asks, before any image is
prepared, whether the requested balanced dataset can be built (``feasibility.py``), so both see the
same rows, the same groups and the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .assign import SplitConfig, SplitPlan, assign_splits
from .grouping import build_groups


@dataclass(frozen=True)
class PlannedSplits:
    """The plan, the metadata rows it was made from, and the ids left out for a label conflict."""

    plan: SplitPlan
    metadata: pd.DataFrame
    label_conflicts: list[str]


def label_conflicts(metadata: pd.DataFrame) -> pd.Series:
    """Rows flagged by the merge as having conflicting benign/malignant labels across sources."""
    if "label_conflict" not in metadata.columns:
        return pd.Series(False, index=metadata.index)
    return metadata["label_conflict"].astype(str).str.lower().isin({"true", "1"})


def plan_splits(metadata: pd.DataFrame, duplicates: pd.DataFrame | None, config: SplitConfig,
                exclude_label_conflicts: bool = True) -> PlannedSplits:
    """Plan the splits of ``metadata`` (one row per image), leaving out label conflicts on request.

    Groups come from every image, the left-out ones included: an excluded image can be the only link
    between two others (same lesion as one, same patient as the other).
    """
    conflicted = label_conflicts(metadata) if exclude_label_conflicts else pd.Series(False, index=metadata.index)
    groups = build_groups(metadata, duplicates)
    kept = metadata.loc[~conflicted].reset_index(drop=True)
    return PlannedSplits(plan=assign_splits(kept, groups, config), metadata=kept,
                         label_conflicts=metadata.loc[conflicted, "isic_id"].tolist())
