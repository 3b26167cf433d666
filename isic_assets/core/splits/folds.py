"""Cross-validation folds over the train+validation pool, grouped by leakage group and stratified by class.

A researcher who cross-validates instead of using the fixed validation split needs folds that keep
the same promise as the splits: no patient, lesion or picture in two folds. scikit-learn's
``StratifiedGroupKFold`` does exactly that (whole groups per fold, class proportions per fold as
close to the pool's as the groups allow), seeded so the folds are reproducible. Test images never
get a fold (``NO_FOLD``): they stay held out. Augmented copies take the fold of the image they were
made from, so a copy can never sit in another fold than its original.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from .assign import SplitPlan
from .checks import augmented_mask, original_ids
from .writer import FOLD_COLUMN, NO_FOLD

POOL_SPLITS = ("train", "validation")


def assign_folds(plan: SplitPlan, n_folds: int, seed: int) -> SplitPlan:
    """``plan`` with a ``fold`` column (0..n_folds-1 for the pool, ``NO_FOLD`` for test); 0 folds: unchanged."""
    if n_folds == 0:
        return plan
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"folds must be 0 (off) or at least 2, got {n_folds!r}")
    manifest = plan.manifest.copy()
    pool = manifest["split"].isin(POOL_SPLITS).to_numpy() & ~augmented_mask(manifest).to_numpy()
    originals = manifest.loc[pool]
    n_groups = originals["group_id"].nunique()
    if n_groups < n_folds:
        raise ValueError(
            f"folds={n_folds} needs at least {n_folds} leakage groups in train+validation, found {n_groups}"
        )
    from sklearn.model_selection import StratifiedGroupKFold  # here: seconds to import, rarely needed

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of_row = np.full(len(originals), NO_FOLD, dtype=np.int64)
    with warnings.catch_warnings():
        # A class rarer than n_folds groups cannot be in every fold; the card's per-fold counts show it.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = splitter.split(np.zeros(len(originals)), originals["label"], originals["group_id"])
        for fold, (_, held_out) in enumerate(parts):
            fold_of_row[held_out] = fold
    fold_of_id = pd.Series(fold_of_row, index=originals["isic_id"].to_numpy())
    source = original_ids(manifest)
    in_pool = manifest["split"].isin(POOL_SPLITS).to_numpy()
    folds = source.map(fold_of_id).where(in_pool, NO_FOLD)
    manifest[FOLD_COLUMN] = folds.fillna(NO_FOLD).astype("int64").to_numpy()
    return dataclasses.replace(plan, manifest=manifest)


def fold_class_counts(manifest: pd.DataFrame, classes: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Original images per fold x class (augmented copies left out: they are not new evidence)."""
    if FOLD_COLUMN not in manifest.columns:
        return pd.DataFrame(columns=list(classes), dtype="int64")
    rows = manifest[~augmented_mask(manifest).to_numpy()]
    folds = pd.to_numeric(rows[FOLD_COLUMN]).astype("int64")
    rows = rows.assign(**{FOLD_COLUMN: folds})[folds != NO_FOLD]
    table = rows.groupby([FOLD_COLUMN, "label"]).size().unstack("label", fill_value=0)
    return table.reindex(columns=list(classes), fill_value=0).astype("int64")
