"""The split assignment on integer codes (assign.py holds no Python string per image) keeps exactly
the images, splits and groups the pandas rules it replaced kept, on tricky input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.splits.assign import (
    _STAGE_CAP,
    _STAGE_ORDER,
    _STAGE_UNDERSAMPLE,
    SPLITS,
    WHOLE_GROUP_SLACK,
    SplitConfig,
    assign_splits,
    choose_whole_groups,
    map_labels,
    share_by_ratios,
)
from isic_assets.core.splits.grouping import build_groups, clean_keys
from isic_assets.core.splits.planning import plan_splits


def _pandas_rules(metadata: pd.DataFrame, groups: pd.Series, config: SplitConfig) -> tuple[pd.DataFrame, dict]:
    """The kept rows (isic_id, label, group_id, split) and the unmapped counts, by the rules as they
    were written on a pandas frame of Python strings (assign.py before it worked on codes)."""
    ids = clean_keys(metadata["isic_id"])
    raw = clean_keys(metadata[config.label_column])
    frame = pd.DataFrame({"isic_id": ids.to_numpy(),
                          "label": map_labels(metadata[config.label_column], config.class_map).to_numpy(),
                          "group_id": groups.reindex(ids.to_numpy()).astype(str).to_numpy()})
    unmapped_raw = raw[(frame["label"] == "").to_numpy()].replace("", "(empty)")
    unmapped = {str(k): int(v) for k, v in sorted(unmapped_raw.value_counts().items())}
    frame = frame[frame["label"] != ""].sort_values("isic_id", kind="stable").reset_index(drop=True)
    classes = config.classes
    table = (frame.groupby(["group_id", "label"]).size().unstack("label", fill_value=0)
             .reindex(columns=list(classes), fill_value=0).sort_index())
    rng = np.random.default_rng([config.seed, _STAGE_ORDER])
    tie_break = rng.permutation(len(table))
    order = np.lexsort((tie_break, -table.sum(axis=1).to_numpy()))
    counts, totals = table.to_numpy()[order].tolist(), table.sum(axis=0).to_numpy()
    active = [s for s, r in enumerate(config.ratios) if r > 0]
    targets = [[config.ratios[s] * t for t in totals] for s in range(len(SPLITS))]
    current = [[0.0] * len(classes) for _ in SPLITS]
    chosen = []
    for n in counts:
        best, best_cost = active[0], math.inf
        for s in active:
            cost = sum(k * (2.0 * (current[s][c] - targets[s][c]) + k) / targets[s][c] for c, k in enumerate(n) if k)
            if cost < best_cost - 1e-12:
                best, best_cost = s, cost
        chosen.append(SPLITS[best])
        for c, k in enumerate(n):
            current[best][c] += k
    frame["split"] = frame["group_id"].map(pd.Series(chosen, index=table.index[order]))
    frame["kept"] = True

    def reduce(split, label, target, seed):
        rows = frame["kept"] & (frame["split"] == split) & (frame["label"] == label)
        if int(rows.sum()) <= target:
            return
        sizes = frame.loc[rows].groupby("group_id").size().sort_index()
        keep = choose_whole_groups(sizes.to_numpy(), target, np.random.default_rng(seed))
        frame.loc[rows & frame["group_id"].isin(set(sizes.index[~keep])), "kept"] = False

    if config.cap_per_class is not None:
        shares = share_by_ratios(config.cap_per_class, config.ratios)
        for s, split in enumerate(SPLITS):
            for c, label in enumerate(classes):
                reduce(split, label, shares[s], [config.seed, _STAGE_CAP, s, c])
    if config.strategy == "undersample":
        for s, split in enumerate(SPLITS):
            if config.balance == "train_only" and split != "train":
                continue
            in_split = frame["kept"] & (frame["split"] == split)
            sizes = [int((in_split & (frame["label"] == label)).sum()) for label in classes]
            if not any(sizes):
                continue
            target = min(sizes)
            for c, label in enumerate(classes):
                before = frame["kept"] & (frame["split"] == split) & (frame["label"] == label)
                seed = [config.seed, _STAGE_UNDERSAMPLE, s, c]
                reduce(split, label, target, seed)
                now = before & frame["kept"]
                kept = int(now.sum())
                rng = np.random.default_rng([*seed, 1])
                if kept * (1.0 + WHOLE_GROUP_SLACK) < target:
                    pool = frame.index[before & ~frame["kept"]].to_numpy()
                    frame.loc[np.sort(rng.choice(pool, size=min(target - kept, len(pool)), replace=False)),
                              "kept"] = True
                elif kept > target * (1.0 + WHOLE_GROUP_SLACK):
                    pool = frame.index[now].to_numpy()
                    frame.loc[np.sort(rng.choice(pool, size=kept - target, replace=False)), "kept"] = False
    kept = frame[frame["kept"]]
    return kept[["isic_id", "label", "group_id", "split"]].reset_index(drop=True), unmapped


def _tricky(seed: int, n_patients: int) -> pd.DataFrame:
    """Many groups of equal size (ties in the seeded order) or a few groups each larger than a split's
    minority (single images top a class up, as on ISIC 2024), a third class, unmapped, empty and
    missing labels, spaces and capitals to clean, ids unsorted."""
    rng = np.random.default_rng(seed)
    n = 900
    patients = rng.integers(0, n_patients, n)
    labels = rng.choice(np.array(["benign", " Benign", "malignant", "MALIGNANT ", "indeterminate", "", "other"],
                                 dtype=object), n, p=[0.5, 0.1, 0.12, 0.03, 0.1, 0.1, 0.05])
    frame = pd.DataFrame({
        "isic_id": [f"ISIC_{i:07d}" for i in rng.permutation(n)],
        "patient_id": np.where(patients < n_patients // 10, "", np.char.add("IP_", patients.astype(str))),
        "lesion_id": "",
        "benign_malignant": labels,
        "source": rng.choice(np.array(["a", " b", "c"], dtype=object), n),
    }).astype(object)
    frame.loc[::37, "benign_malignant"] = np.nan
    return frame


CONFIGS = [
    {},
    {"balance": "train_only"},
    {"cap_per_class": 40},
    {"strategy": "none", "ratios": (0.6, 0.4, 0.0)},
    {"class_map": {"benign": "benign", "malignant": "malignant", "other": "other"}},
    {"class_map": {"malignant": "malignant", "*": "benign"}, "cap_per_class": 25, "ratios": (0.5, 0.25, 0.25)},
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_patients", [60, 6])
@pytest.mark.parametrize("settings", CONFIGS)
def test_the_coded_assignment_keeps_what_the_pandas_rules_kept(seed, n_patients, settings):
    metadata = _tricky(seed, n_patients)
    config = SplitConfig(seed=seed, **settings)
    groups = build_groups(metadata)
    expected, unmapped = _pandas_rules(metadata, groups, config)
    plan = assign_splits(metadata, groups, config)
    manifest = plan.manifest.sort_values("isic_id", kind="stable").reset_index(drop=True)
    assert (len(expected) > 20 and expected["split"].nunique() > 1) or (config.cap_per_class and n_patients < 10)
    pd.testing.assert_frame_equal(manifest[["isic_id", "label", "group_id", "split"]], expected.astype(object))
    assert plan.unmapped_values == unmapped and plan.excluded["unmapped_label"] == sum(unmapped.values())
    # The whole planning path (a pool, grouping on bytes) gives the same manifest.
    planned = plan_splits(metadata, None, config)
    pd.testing.assert_frame_equal(planned.plan.manifest, plan.manifest)
