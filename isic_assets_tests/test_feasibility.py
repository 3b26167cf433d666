"""balanced_dataset_feasibility: the split planner run dry answers whether the dataset can be built."""

from __future__ import annotations

import pandas as pd

from isic_assets.core.splits.assign import SplitConfig
from isic_assets.core.splits.feasibility import balanced_dataset_feasibility
from isic_assets.core.splits.planning import plan_splits
from isic_assets_tests.test_splits import crafted_metadata


def test_a_skewed_but_large_enough_dataset_passes_with_the_smallest_count_in_words():
    meta, dups = crafted_metadata()
    config = SplitConfig(seed=3)
    outcome = balanced_dataset_feasibility(meta, dups, config, min_per_class=3)
    planned = plan_splits(meta, dups, config).plan.counts
    assert outcome.passed, outcome.description
    assert outcome.measured["counts"]["validation"] == {c: int(v) for c, v in planned.loc["validation"].items()}
    assert outcome.measured["natural_ratio"] > 2  # the imbalance itself is no failure
    fewest = int(planned.to_numpy().min())
    assert f"with {fewest} " in outcome.description and "at least 3 images" in outcome.description


def test_too_few_images_of_a_class_in_a_split_fails_naming_split_count_and_threshold():
    meta, dups = crafted_metadata()
    config = SplitConfig(seed=3)
    planned = plan_splits(meta, dups, config).plan.counts
    required = int(planned.loc["validation"].min()) + 1
    outcome = balanced_dataset_feasibility(meta, dups, config, min_per_class=required)
    assert not outcome.passed
    shortfall = {(o["split"], o["class"]): o["images"] for o in outcome.offending}
    assert ("validation", planned.loc["validation"].idxmin()) in shortfall
    worst = min(outcome.offending, key=lambda o: o["images"])
    assert f"would get {worst['images']} {worst['class']} image(s), fewer than the {required} required" \
        in outcome.description


def test_a_single_class_cannot_be_planned():
    meta, dups = crafted_metadata()
    only_benign = meta.assign(benign_malignant="benign")
    outcome = balanced_dataset_feasibility(only_benign, dups, SplitConfig(), min_per_class=1)
    assert not outcome.passed and "no split plan is possible" in outcome.description


def test_label_conflicts_are_left_out_as_the_splits_leave_them_out():
    meta, dups = crafted_metadata()
    flagged = meta.assign(label_conflict=["True" if i < 5 else "" for i in range(len(meta))])
    planned = plan_splits(flagged, dups, SplitConfig())
    assert planned.label_conflicts == list(meta["isic_id"][:5])
    assert not set(planned.label_conflicts) & set(planned.plan.manifest["isic_id"])
    kept = plan_splits(flagged, dups, SplitConfig(), exclude_label_conflicts=False)
    assert kept.label_conflicts == [] and kept.kept_images == len(pd.DataFrame(meta))
    assert planned.kept_images == len(meta) - 5
