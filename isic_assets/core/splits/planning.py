"""From the prepared metadata to a split plan: label-conflict exclusion, leakage groups, assignment.

One function shared by the balanced_splits asset and the check that asks, before any image is
prepared, whether the requested balanced dataset can be built (``feasibility.py``), so both see the
same rows, the same groups and the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .assign import SplitConfig, SplitPlan, assign_pool
from .checks import original_ids
from .folds import assign_folds
from .grouping import LINK_COLUMNS, group_codes
from .near_duplicates import to_drop
from .pool import ID, PlanPool, pool_from_frame, read_pool, text_bytes


def plan_columns(label_column: str) -> tuple[str, ...]:
    """The metadata columns planning, the dataset card and the licence counts read: a transformed
    ISIC 2024 table has 61, of which the plan needs these (docs/PERFORMANCE.md "ISIC 2024 at archive
    scale"). The splits' per-image metadata files carry every column, read for the planned rows only."""
    return ("isic_id", label_column, "source", "sources", "image_type", "label_conflict", *LINK_COLUMNS,
            "copyright_license", "attribution")


def read_plan_table(path: Path, label_column: str) -> PlanPool:
    """The ``plan_columns`` of a metadata table as planning wants them: a pool of numpy arrays, read a
    chunk of rows at a time (``pool.py``; docs/PERFORMANCE.md "The stages after the merge")."""
    return read_pool(path, plan_columns(label_column), label_column)


@dataclass(frozen=True)
class PlannedSplits:
    """The plan, the metadata of the images it names, and what was left out: label conflicts by id,
    near-duplicates (``isic_id``, ``kept_isic_id``, ``reason``) when they are dropped.

    ``metadata`` holds the planned columns of the original images the manifest names (what the
    dataset card and the licence counts read); ``kept_images`` counts the images planned from (after
    the exclusions, before balancing) and ``source_cells`` holds the distinct ``sources`` cells of
    those (what ``facts.source_facts`` reads), so no table of every image outlives planning.
    """

    plan: SplitPlan
    metadata: pd.DataFrame
    label_conflicts: list[str]
    near_duplicates_dropped: pd.DataFrame
    kept_images: int
    source_cells: pd.DataFrame


def label_conflicts(metadata: pd.DataFrame | PlanPool) -> np.ndarray:
    """Rows flagged by the merge as having conflicting benign/malignant labels across sources."""
    pool = _as_pool(metadata, "")
    if "label_conflict" not in pool:
        return np.zeros(len(pool), dtype=bool)
    codes, values = pool.codes("label_conflict")  # a few distinct values
    return values.astype(str).str.lower().isin({"true", "1"}).to_numpy()[codes]


def _as_pool(metadata: pd.DataFrame | PlanPool, label_column: str) -> PlanPool:
    return metadata if isinstance(metadata, PlanPool) else pool_from_frame(metadata, label_column)


def plan_splits(metadata: pd.DataFrame | PlanPool, duplicates: pd.DataFrame | None, config: SplitConfig,
                exclude_label_conflicts: bool = True, near_duplicates: pd.DataFrame | None = None,
                near_duplicate_mode: str = "group", folds: int = 0, seed: int = 0) -> PlannedSplits:
    """Plan the splits of ``metadata`` (one row per image; a table or ``read_plan_table``'s pool),
    leaving out label conflicts on request.

    Groups come from every image, the left-out ones included: an excluded image can be the only link
    between two others (same lesion as one, same patient as the other). Near-duplicate pairs join
    one group (``group``), also leave all but one image of each set out (``drop``), or are ignored
    (``off``). ``folds`` > 0 adds grouped, stratified folds over the train+validation pool.
    """
    pool = _as_pool(metadata, config.label_column)
    if ID not in pool:
        raise ValueError("metadata has no isic_id column")
    conflicted = label_conflicts(pool) if exclude_label_conflicts else np.zeros(len(pool), dtype=bool)
    pairs = near_duplicates if near_duplicate_mode != "off" else None
    group_of, group_names = group_codes(pool.ids, pool.keys, duplicates, pairs)
    dropped = to_drop(pairs if near_duplicate_mode == "drop" else None, _named_in(pairs, pool.raw_ids[~conflicted]))
    kept = ~conflicted & ~np.isin(pool.raw_ids, _as_bytes(dropped["isic_id"]))
    kept_pool = pool.take(kept)
    plan = assign_folds(assign_pool(kept_pool, group_of[kept], group_names, config), folds, seed)
    named = np.isin(kept_pool.raw_ids, _as_bytes(original_ids(plan.manifest)))
    return PlannedSplits(plan=plan, metadata=kept_pool.frame(named),
                         label_conflicts=[v.decode("utf-8") for v in pool.raw_ids[conflicted].tolist()],
                         near_duplicates_dropped=dropped, kept_images=len(kept_pool),
                         source_cells=_source_cells(kept_pool))


def _source_cells(pool: PlanPool) -> pd.DataFrame:
    """The distinct ``sources`` cells of the pool's rows (no column when the table has none)."""
    if "sources" not in pool:
        return pd.DataFrame()
    codes, values = pool.codes("sources")
    return pd.DataFrame({"sources": values.to_numpy(dtype=object)[np.unique(codes)]})


def _as_bytes(values) -> np.ndarray:
    return text_bytes(pd.Series([str(v) for v in values], dtype=object))


def _named_in(pairs: pd.DataFrame | None, ids: np.ndarray) -> list[str]:
    """The ids the near-duplicate pairs name that are among ``ids`` (bytes): all ``to_drop`` needs of them."""
    if pairs is None or len(pairs) == 0:
        return []
    named = pd.unique(pd.concat([pairs["isic_id_a"], pairs["isic_id_b"]], ignore_index=True).astype(str))
    return [v for v, present in zip(named, np.isin(_as_bytes(named), ids), strict=True) if present]
