"""Can the requested balanced dataset be built from these images?

Asked of the merged metadata, before any image is prepared: the split planner runs dry (no file is
written) with the strategy, ratios, seed and class map the splits will use, and every split with a
positive ratio must receive at least ``min_per_class`` original images of every class. The natural
imbalance (about 14:1 benign to malignant on the real archive) is not a failure by itself; too few
images of a class in one split is, because a validation or test set of three melanomas measures
nothing.
"""

from __future__ import annotations

import pandas as pd

from .assign import SPLITS, SplitConfig
from .checks import CheckOutcome, augmented_mask, natural_imbalance, split_class_table
from .planning import plan_splits


def balanced_dataset_feasibility(metadata: pd.DataFrame, duplicates: pd.DataFrame | None, config: SplitConfig,
                                 min_per_class: int, exclude_label_conflicts: bool = True) -> CheckOutcome:
    """Pass when the dry-run plan gives every used split at least ``min_per_class`` images per class.

    Counts are of original images (augmented copies, which only oversampling plans and only in
    train, are not evidence). ``measured`` carries the per-split counts, the threshold and the
    natural class counts and ratio the planner faced.
    """
    natural = natural_imbalance(metadata, config.label_column, config.class_map, max_ratio=float("inf"))
    measured = {"min_per_class": min_per_class, "strategy": config.strategy, "ratios": list(config.ratios),
                "seed": config.seed, "natural_counts": natural.measured["counts"],
                "natural_ratio": natural.measured["ratio"]}
    try:
        planned = plan_splits(metadata, duplicates, config, exclude_label_conflicts)
    except ValueError as exc:  # e.g. only one class present: no classifier can be trained
        return CheckOutcome(False, measured, [{"reason": str(exc)}], f"no split plan is possible: {exc}")
    manifest = planned.plan.manifest
    originals = manifest[~augmented_mask(manifest).to_numpy()]
    table = split_class_table(originals, list(planned.plan.classes))
    used = [s for s, r in zip(SPLITS, config.ratios, strict=True) if r > 0]
    shortfalls = [
        {"split": split, "class": label, "images": int(table.loc[split, label]), "required": min_per_class}
        for split in used for label in table.columns if int(table.loc[split, label]) < min_per_class
    ]
    measured["counts"] = {s: {c: int(v) for c, v in table.loc[s].items()} for s in used}
    measured["label_conflicts_left_out"] = len(planned.label_conflicts)
    if shortfalls:
        worst = min(shortfalls, key=lambda f: (f["images"], SPLITS.index(f["split"])))
        more = f" ({len(shortfalls) - 1} more split/class pair(s) short)" if len(shortfalls) > 1 else ""
        description = (f"{worst['split']} would get {worst['images']} {worst['class']} image(s), fewer than the "
                       f"{min_per_class} required{more}; strategy {config.strategy}, ratios "
                       f"{'/'.join(f'{r:g}' for r in config.ratios)}, seed {config.seed}")
        return CheckOutcome(False, measured, shortfalls, description)
    smallest = min(((s, c) for s in used for c in table.columns), key=lambda sc: int(table.loc[sc[0], sc[1]]))
    description = (f"every split gets at least {min_per_class} images of every class (fewest: "
                   f"{smallest[0]} with {int(table.loc[smallest])} {smallest[1]}); strategy {config.strategy}, "
                   f"natural ratio {natural.measured['ratio'] or 'undefined'}:1")
    return CheckOutcome(True, measured, [], description)
