"""Split planning and the checks behind balanced_splits: leakage-free, stratified, balanced, seeded."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.splits.assign import (
    SPLITS,
    SplitConfig,
    assign_splits,
    choose_whole_groups,
    share_by_ratios,
)
from isic_assets.core.splits.checks import class_balance, leakage, natural_imbalance, split_proportions
from isic_assets.core.splits.grouping import build_groups

AUG_NAME = r"^ISIC_\d{7}__aug\d+$"


def crafted_metadata(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metadata and duplicates where splitting image by image leaks through every kind of link.

    - 25 patients with 6-14 images each, some malignant;
    - 30 pairs of identical files kept under two ids (cross-source, same sha256, no patient);
    - 30 listed duplicate pairs with different ids and different bytes;
    - 20 chains A-lesion-B-patient-C-lesion-D (no key shared by all four);
    - 200 singletons without patient or lesion; plus indeterminate and unlabelled images.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    dup_rows: list[tuple[str, str]] = []

    def add(patient: str = "", lesion: str = "", sha: str | None = None, label: str | None = None) -> str:
        isic_id = f"ISIC_{len(rows) * 13 + 1_000_000:07d}"
        label = label if label is not None else ("malignant" if rng.random() < 0.2 else "benign")
        rows.append(
            {
                "isic_id": isic_id,
                "patient_id": patient,
                "lesion_id": lesion,
                "source": "isic_2020",
                "sha256": sha or f"{len(rows):064x}",
                "benign_malignant": label,
                "diagnosis": "melanoma" if label == "malignant" else str(rng.choice(["nevus", "unknown"])),
            }
        )
        return isic_id

    for p in range(25):
        for i in range(int(rng.integers(6, 15))):
            add(patient=f"IP_{p:07d}", lesion=f"IL_{p:03d}{i:04d}")
    for d in range(30):
        label = "malignant" if d % 4 == 0 else "benign"
        add(sha=f"{'e' * 60}{d:04d}", label=label)
        add(sha=f"{'e' * 60}{d:04d}", label=label)
    for d in range(30):
        label = "malignant" if d % 4 == 0 else "benign"
        kept = add(label=label)
        dup_rows.append((add(label=label), kept))
    for c in range(20):
        add(lesion=f"HAM_A{c}")
        add(lesion=f"HAM_A{c}", patient=f"BCN_P{c}")
        add(lesion=f"HAM_B{c}", patient=f"BCN_P{c}")
        add(lesion=f"HAM_B{c}")
    for _ in range(200):
        add()
    for label in ["indeterminate"] * 7 + [""] * 5:
        add(label=label)
    duplicates = pd.DataFrame(dup_rows, columns=["isic_id", "kept_isic_id"])
    duplicates["reason"] = "listed_duplicate"
    return pd.DataFrame(rows), duplicates


@pytest.fixture(scope="module")
def crafted() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    meta, dups = crafted_metadata()
    return meta, dups, build_groups(meta, dups)


def _plan(crafted, **config):
    meta, _, groups = crafted
    return assign_splits(meta, groups, SplitConfig(**config))


def _originals(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[~manifest["is_augmented"]]


# ----------------------------------------------------------------------------------------------
# leakage


@pytest.mark.parametrize("strategy", ["undersample", "oversample", "none"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_split_never_leaks(crafted, strategy, seed):
    """Patients, lesions, identical bytes and listed pairs must never straddle two splits."""
    meta, dups, _ = crafted
    plan = _plan(crafted, strategy=strategy, seed=seed)
    outcome = leakage(plan.manifest, meta, dups)
    assert outcome.passed, outcome.offending
    assert outcome.measured["leaking_keys_total"] == 0
    assert plan.manifest.groupby("group_id")["split"].nunique().max() == 1


def test_naive_image_split_leaks_on_the_same_data(crafted):
    """The crafted data really is a trap: a per-image random split leaks through every link type."""
    meta, dups, _ = crafted
    plan = _plan(crafted, strategy="none")
    naive = _originals(plan.manifest).copy()
    naive["split"] = np.random.default_rng(0).choice(list(SPLITS), size=len(naive), p=[0.7, 0.15, 0.15])
    outcome = leakage(naive, meta, dups)
    assert not outcome.passed
    for key_type in ("patient_id", "lesion_id", "sha256", "duplicate_pair"):
        assert outcome.measured["leaking_keys"][key_type] > 0, key_type
    example = outcome.offending[0]
    assert len(example["splits"]) >= 2 and example["isic_ids"], "a failure must name the ids"


def test_leakage_sees_a_dropped_copy_through_its_keeper(crafted):
    """A dropped copy whose bytes equal an image in another split leaks via the image kept for it."""
    meta, _, _ = crafted
    plan = _plan(crafted, strategy="none")
    manifest = _originals(plan.manifest)
    train_id = manifest.loc[manifest["split"] == "train", "isic_id"].iloc[0]
    test_id = manifest.loc[manifest["split"] == "test", "isic_id"].iloc[0]
    test_sha = meta.set_index("isic_id").loc[test_id, "sha256"]
    dups = pd.DataFrame({"isic_id": ["ISIC_9999999"], "kept_isic_id": [train_id], "sha256": [test_sha]})
    outcome = leakage(manifest, meta, dups)
    assert not outcome.passed
    assert outcome.measured["leaking_keys"]["sha256"] == 1


def test_leakage_fails_on_images_without_metadata(crafted):
    """An image the check cannot look up cannot be vouched for."""
    meta, dups, _ = crafted
    plan = _plan(crafted)
    outcome = leakage(plan.manifest, meta.iloc[10:], dups)
    assert not outcome.passed
    assert outcome.measured["images_without_metadata"] > 0


# ----------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_bytes_other_seed_other_split(crafted):
    """A re-run must reproduce the dataset exactly; another seed must really give another split."""
    meta, dups, groups = crafted
    config = SplitConfig(seed=5, strategy="oversample")
    first = assign_splits(meta, groups, config).manifest.to_csv(index=False)
    shuffled = meta.sample(frac=1.0, random_state=11)
    again = assign_splits(shuffled, build_groups(shuffled, dups.iloc[::-1]), config).manifest.to_csv(
        index=False
    )
    assert first == again
    a = _plan(crafted, seed=5, strategy="none").manifest.set_index("isic_id")["split"]
    b = _plan(crafted, seed=6, strategy="none").manifest.set_index("isic_id")["split"]
    assert (a != b.loc[a.index]).sum() > 50, "another seed must move many images to other splits"
    kept_5 = set(_plan(crafted, seed=5).manifest["isic_id"])
    kept_6 = set(_plan(crafted, seed=6).manifest["isic_id"])
    assert len(kept_5 ^ kept_6) > 20, "another seed must undersample other images"


# ----------------------------------------------------------------------------------------------
# stratification and strategies


def test_stratified_across_groups_with_the_ratios(crafted):
    """Every split gets about its ratio of each class, not just of images."""
    plan = _plan(crafted, strategy="none", ratios=(0.6, 0.2, 0.2))
    counts = plan.counts
    totals = counts.sum(axis=0)
    for s, ratio in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
        for label in plan.classes:
            assert abs(counts.loc[s, label] - ratio * totals[label]) <= 0.06 * totals[label] + 2, (s, label)
    assert split_proportions(plan.manifest, (0.6, 0.2, 0.2), 0.03).passed
    assert not split_proportions(plan.manifest, (0.8, 0.1, 0.1), 0.03).passed


def test_undersample_equal_classes_per_split_with_whole_groups(crafted):
    """Undersampling keeps the minority whole and takes the majority patient by patient."""
    meta, _, groups = crafted
    plan = _plan(crafted, strategy="undersample")
    counts = plan.counts
    for s in SPLITS:
        assert counts.loc[s, "benign"] == counts.loc[s, "malignant"] > 0, counts
    assert (counts.loc[:, "malignant"] == plan.assigned_counts.loc[:, "malignant"]).all()
    assert plan.excluded["undersampled"] == int(
        plan.assigned_counts.to_numpy().sum() - counts.to_numpy().sum()
    )
    kept = plan.manifest.merge(meta[["isic_id", "benign_malignant"]], on="isic_id")
    labelled = meta.assign(group_id=groups.reindex(meta["isic_id"]).to_numpy())
    for (group, label), part in kept.groupby(["group_id", "label"]):
        whole = labelled[(labelled["group_id"] == group) & (labelled["benign_malignant"] == label)]
        assert len(part) == len(whole), f"group {group} was cut inside class {label}"
    assert class_balance(plan.manifest, "undersample", 0.0).passed
    assert plan.class_weights == {"benign": 1.0, "malignant": 1.0}


def test_oversample_balances_train_only_with_named_copies(crafted):
    """Copies exist only in train, are named as copies, and validation/test stay natural."""
    plan = _plan(crafted, strategy="oversample")
    manifest, counts = plan.manifest, plan.counts
    assert counts.loc["train", "benign"] == counts.loc["train", "malignant"]
    aug = manifest[manifest["is_augmented"]]
    assert len(aug) > 0 and set(aug["split"]) == {"train"}
    assert aug["isic_id"].str.match(AUG_NAME).all()
    assert (aug["image"] == "train/" + aug["label"] + "/" + aug["isic_id"] + ".jpg").all()
    train_originals = _originals(manifest).query("split == 'train'").set_index("isic_id")["label"]
    assert aug["augmented_from"].map(train_originals).eq(aug["label"]).all()
    assert aug["aug_seed"].notna().all() and _originals(manifest)["aug_seed"].isna().all()
    originals = _originals(manifest)
    pd.testing.assert_frame_equal(
        originals.groupby(["split", "label"]).size().unstack().reindex(list(SPLITS)),
        plan.assigned_counts.rename_axis(index="split", columns="label"),
        check_dtype=False,
    )
    assert plan.augmented_counts["malignant"] == len(aug)
    # Copies are spread evenly: no original gets two more copies than another.
    per_source = (
        aug.groupby("augmented_from")
        .size()
        .reindex(train_originals[train_originals == "malignant"].index, fill_value=0)
    )
    assert per_source.max() - per_source.min() <= 1
    assert class_balance(manifest, "oversample", 0.0).passed


def test_train_only_balance_keeps_validation_and_test_at_natural_prevalence(crafted):
    """balance=train_only: train 1:1 with whole groups; validation and test keep every image they were
    assigned (the natural ratio, so PPV means what it will in practice), and nothing leaks."""
    meta, dups, groups = crafted
    plan = _plan(crafted, strategy="undersample", balance="train_only")
    counts, assigned = plan.counts, plan.assigned_counts
    assert counts.loc["train", "benign"] == counts.loc["train", "malignant"] > 0
    for split in ("validation", "test"):
        assert (counts.loc[split] == assigned.loc[split]).all(), (split, counts, assigned)
        assert counts.loc[split, "benign"] > 2 * counts.loc[split, "malignant"] > 0, counts
    # Same assignment as the default: only what undersampling drops differs.
    default = _plan(crafted, strategy="undersample")
    pd.testing.assert_frame_equal(default.assigned_counts, assigned)
    pd.testing.assert_series_equal(default.counts.loc["train"], counts.loc["train"])
    assert plan.excluded["undersampled"] == int(assigned.loc["train"].sum() - counts.loc["train"].sum())
    # Grouping: whole groups per class, and no group spans two splits.
    kept = plan.manifest.merge(meta[["isic_id", "benign_malignant"]], on="isic_id")
    labelled = meta.assign(group_id=groups.reindex(meta["isic_id"]).to_numpy())
    for (group, label), part in kept.groupby(["group_id", "label"]):
        whole = labelled[(labelled["group_id"] == group) & (labelled["benign_malignant"] == label)]
        assert len(part) == len(whole), f"group {group} was cut inside class {label}"
    assert leakage(plan.manifest, meta, dups).passed
    # The check accepts natural validation/test under this setting, and refuses them under the default.
    assert class_balance(plan.manifest, "undersample", 0.0, balance="train_only").passed
    assert not class_balance(plan.manifest, "undersample", 0.0).passed
    assert plan.config.as_dict()["balance"] == "train_only"


def test_none_keeps_the_natural_ratio_and_gives_class_weights(crafted):
    """Without balancing, every labelled image is used and the loss gets sklearn-style weights."""
    meta, _, _ = crafted
    plan = _plan(crafted, strategy="none")
    pd.testing.assert_frame_equal(plan.counts, plan.assigned_counts)
    labelled = meta["benign_malignant"].isin(["benign", "malignant"]).sum()
    assert len(plan.manifest) == labelled
    train = plan.manifest[plan.manifest["split"] == "train"]["label"].value_counts()
    for label, weight in plan.class_weights.items():
        assert weight == pytest.approx(train.sum() / (2 * train[label]), rel=1e-5)
    assert plan.class_weights["malignant"] > 1 > plan.class_weights["benign"]
    assert class_balance(plan.manifest, "none", 0.35).passed
    assert not class_balance(plan.manifest, "undersample", 0.1).passed


def test_unmapped_labels_are_left_out_and_counted(crafted):
    """indeterminate and empty labels cannot be trained on; the count says how many were dropped."""
    plan = _plan(crafted)
    assert plan.excluded["unmapped_label"] == 12
    assert plan.unmapped_values == {"(empty)": 5, "indeterminate": 7}
    assert set(plan.manifest["label"]) == {"benign", "malignant"}


def test_cap_per_class_shares_the_cap_by_ratio(crafted):
    """The seed's "1000 per class", scaled down: each split keeps its share of the cap per class.

    The crafted data has enough single-image groups for whole-group selection to hit the share.
    """
    plan = _plan(crafted, strategy="none", cap_per_class=40)
    shares = dict(zip(SPLITS, share_by_ratios(40, (0.7, 0.15, 0.15)), strict=True))
    assert shares == {"train": 28, "validation": 6, "test": 6}
    for s in SPLITS:
        assert plan.counts.loc[s].to_dict() == {"benign": shares[s], "malignant": shares[s]}
    assert plan.excluded["capped"] == int(plan.assigned_counts.to_numpy().sum()) - 80
    assert plan.manifest.groupby("group_id")["split"].nunique().max() == 1


def test_undersample_keeps_single_images_when_every_patient_is_larger_than_the_minority():
    """ISIC 2024's shape: hundreds of benign tiles per patient, a few malignant per split. Whole
    patients would keep no benign image at all (train 0 benign to 72 malignant, measured at 100k)."""
    rows = []
    for p in range(30):
        rows += [{"isic_id": f"ISIC_{p * 100 + i:07d}", "patient_id": f"IP_{p:07d}",
                  "benign_malignant": "malignant" if i < 2 else "benign"} for i in range(60)]
    meta = pd.DataFrame(rows)
    groups = build_groups(meta, None)
    plan = assign_splits(meta, groups, SplitConfig(strategy="undersample"))
    counts = plan.counts
    for s in SPLITS:
        assert counts.loc[s, "malignant"] > 0 and counts.loc[s, "benign"] == counts.loc[s, "malignant"], counts
    assert class_balance(plan.manifest, "undersample", 0.0).passed
    assert leakage(plan.manifest, meta).passed
    again = assign_splits(meta, groups, SplitConfig(strategy="undersample"))
    assert again.manifest["isic_id"].tolist() == plan.manifest["isic_id"].tolist()  # seeded


def test_cap_with_undersample_is_balanced_and_capped(crafted):
    """Capping then undersampling gives equal classes no larger than the cap."""
    plan = _plan(crafted, strategy="undersample", cap_per_class=20)
    assert plan.counts.to_dict() == {
        "benign": {"train": 14, "validation": 3, "test": 3},
        "malignant": {"train": 14, "validation": 3, "test": 3},
    }


def test_whole_group_choice_gets_as_close_as_whole_groups_allow():
    """Hits the target when groups allow; adds one more group only if that gets closer."""
    rng = np.random.default_rng(0)
    sizes = np.array([3, 1, 1, 4, 1, 2, 1])
    keep = choose_whole_groups(sizes, 7, rng)
    assert sizes[keep].sum() == 7
    assert not choose_whole_groups(np.array([30, 40]), 10, rng).any(), "30 is further from 10 than 0 is"
    assert np.array([12, 40])[choose_whole_groups(np.array([12, 40]), 10, rng)].sum() == 12
    a = choose_whole_groups(np.ones(50, dtype=int), 20, np.random.default_rng(1))
    b = choose_whole_groups(np.ones(50, dtype=int), 20, np.random.default_rng(1))
    c = choose_whole_groups(np.ones(50, dtype=int), 20, np.random.default_rng(2))
    assert (a == b).all() and (a != c).any() and a.sum() == 20


def test_a_zero_ratio_leaves_that_split_empty(crafted):
    """A user may want no validation set; nothing goes there and nothing warns about it."""
    plan = _plan(crafted, strategy="none", ratios=(0.8, 0.0, 0.2))
    assert plan.counts.loc["validation"].sum() == 0
    assert plan.counts.loc["test"].sum() > 0 and not plan.warnings


def test_melanoma_vs_rest_class_map(crafted):
    """Melanoma against everything else, on diagnosis, with the wildcard; empty stays out."""
    meta, _, groups = crafted
    meta = meta.copy()
    meta.loc[meta.index[:3], "diagnosis"] = ""
    config = SplitConfig(
        label_column="diagnosis", class_map={"Melanoma": "melanoma", "*": "other"}, strategy="none"
    )
    plan = assign_splits(meta, groups, config)
    assert plan.classes == ("melanoma", "other")
    assert plan.excluded["unmapped_label"] == 3
    expected = meta["diagnosis"].map(
        lambda d: "" if d == "" else ("melanoma" if d == "melanoma" else "other")
    )
    got = plan.manifest.set_index("isic_id")["label"]
    assert (got == expected.set_axis(meta["isic_id"]).loc[got.index]).all()
    assert set(plan.manifest["image"].str.split("/").str[1]) == {"melanoma", "other"}


def test_mapping_a_value_to_empty_excludes_it_despite_the_wildcard(crafted):
    """2020's "unknown" diagnosis may be left out on purpose rather than called benign."""
    meta, _, groups = crafted
    config = SplitConfig(
        label_column="diagnosis", class_map={"melanoma": "malignant", "unknown": "", "*": "benign"}
    )
    plan = assign_splits(meta, groups, config)
    assert plan.unmapped_values.get("unknown", 0) == (meta["diagnosis"] == "unknown").sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratios": (0.7, 0.2, 0.2)}, "sum to 1"),
        ({"ratios": (0.7, 0.3)}, "three"),
        ({"ratios": (0.0, 0.5, 0.5)}, "train ratio"),
        ({"ratios": (1.2, -0.1, -0.1)}, "non-negative"),
        ({"strategy": "smote"}, "strategy"),
        ({"balance": "test_only"}, "balance"),
        ({"cap_per_class": 0}, "cap_per_class"),
        ({"seed": -1}, "seed"),
        ({"class_map": {"benign": "benign"}}, "at least two"),
        ({"class_map": {"benign": "../x", "malignant": "malignant"}}, "folder name"),
        ({"class_map": {"Benign": "a", "benign": "b", "malignant": "c"}}, "twice"),
        ({"label_column": " "}, "label_column"),
    ],
)
def test_bad_config_fails_with_a_clear_error(kwargs, message):
    """A typo in the launchpad must fail before any file is touched, saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_inputs_are_validated(crafted):
    """Missing groups or a single class are errors, not a silently empty or one-class dataset."""
    meta, _, groups = crafted
    with pytest.raises(ValueError, match="no group"):
        assign_splits(meta, groups.iloc[5:], SplitConfig())
    one_class = meta.assign(benign_malignant="benign")
    with pytest.raises(ValueError, match="at least two"):
        assign_splits(one_class, groups, SplitConfig())


def test_manifest_is_sorted_and_paths_are_relative(crafted):
    """Stable order (split, label, id) and paths under neural_network_data/ only."""
    manifest = _plan(crafted, strategy="oversample").manifest
    order = manifest["split"].map({s: i for i, s in enumerate(SPLITS)})
    keys = list(zip(order, manifest["label"], manifest["isic_id"], strict=True))
    assert keys == sorted(keys)
    assert (
        manifest["image"] == manifest["split"] + "/" + manifest["label"] + "/" + manifest["isic_id"] + ".jpg"
    ).all()
    assert manifest["isic_id"].is_unique


# ----------------------------------------------------------------------------------------------
# checks


def test_class_balance_fails_on_an_unbalanced_split():
    """An undersampled split that is not balanced must fail and say which split."""
    manifest = pd.DataFrame(
        {
            "split": ["train"] * 5 + ["test"] * 2,
            "label": ["benign"] * 4 + ["malignant"] + ["benign", "malignant"],
            "isic_id": [f"ISIC_{i:07d}" for i in range(7)],
        }
    )
    outcome = class_balance(manifest, "undersample", 0.1)
    assert not outcome.passed
    assert [o["split"] for o in outcome.offending] == ["train"]
    assert outcome.measured["ratios"]["train"] == 4.0
    missing = class_balance(
        manifest[manifest["label"] == "benign"], "undersample", 0.1, classes=["benign", "malignant"]
    )
    assert not missing.passed and missing.measured["ratios"]["train"] is None


def test_natural_imbalance_reports_the_ratio(crafted):
    """The WARN check on merged_metadata states the imbalance the strategy has to correct."""
    meta, _, _ = crafted
    outcome = natural_imbalance(meta)
    counts = meta["benign_malignant"].value_counts()
    assert outcome.measured["counts"] == {"benign": counts["benign"], "malignant": counts["malignant"]}
    assert outcome.measured["ratio"] == round(counts["benign"] / counts["malignant"], 4)
    assert outcome.measured["unmapped"] == 12
    assert not outcome.passed
    assert natural_imbalance(meta, max_ratio=100.0).passed
    melanoma = natural_imbalance(meta, "diagnosis", {"melanoma": "malignant", "*": "benign"})
    assert melanoma.measured["counts"]["malignant"] == (meta["diagnosis"] == "melanoma").sum()


# ----------------------------------------------------------------------------------------------
# the real 2020 metadata


def test_real_2020_metadata_splits_quickly_without_leakage(isic_reference):
    """33,126 images of 2,056 patients: no patient and no listed duplicate pair in two splits."""
    meta = pd.read_csv(
        isic_reference / "ISIC_2020_Training_GroundTruth_v2.csv", dtype=str, keep_default_na=False
    ).rename(columns={"image_name": "isic_id"})
    pairs = pd.read_csv(isic_reference / "ISIC_2020_Training_Duplicates.csv", dtype=str)
    dups = pairs.rename(columns={"image_name_2": "isic_id", "image_name_1": "kept_isic_id"})
    assert len(meta) == 33_126 and meta["patient_id"].nunique() == 2_056
    start = time.perf_counter()
    plan = assign_splits(meta, build_groups(meta, dups), SplitConfig())
    elapsed = time.perf_counter() - start
    print(f"\n2020 grouped and split in {elapsed:.2f} s: {plan.counts.to_dict()}")
    split_of = plan.manifest.set_index("isic_id")["split"]
    patients = plan.manifest.merge(meta[["isic_id", "patient_id"]], on="isic_id")
    assert patients.groupby("patient_id")["split"].nunique().max() == 1
    both = pairs[pairs["image_name_1"].isin(split_of.index) & pairs["image_name_2"].isin(split_of.index)]
    assert (
        split_of.loc[both["image_name_1"]].to_numpy() == split_of.loc[both["image_name_2"]].to_numpy()
    ).all()
    assert leakage(plan.manifest, meta, dups).passed
    counts = plan.counts
    assert (counts["benign"] == counts["malignant"]).all() and counts["malignant"].sum() > 500
    assert split_proportions(plan.manifest, (0.7, 0.15, 0.15), 0.02).passed


@pytest.mark.parametrize("strategy", ["undersample", "oversample", "none"])
def test_plan_from_shared_chunks_equals_the_plan_from_the_whole_table(tmp_path, strategy):
    """balanced_splits reads its columns a chunk at a time as shared Python strings
    (``layout.read_table_shared``); chunks of 7 rows cut through patients, lesion chains and
    duplicate pairs, and the plan, groups and folds are those of the Arrow-backed whole table."""
    from isic_assets.core import layout
    from isic_assets.core.splits.planning import plan_splits

    meta, dups = crafted_metadata(3)
    path = tmp_path / "metadata.csv"
    meta.to_csv(path, index=False)
    whole = layout.read_table(path)
    shared = layout.read_table_shared(path, rows=7)
    assert shared.columns.tolist() == whole.columns.tolist()
    assert shared.astype(str).equals(whole.astype(object).astype(str))
    assert all(dtype is np.dtype(object) for dtype in shared.dtypes)
    assert shared["source"].iloc[0] is shared["source"].iloc[1]  # one string per distinct value of a chunk
    config = SplitConfig(strategy=strategy)
    folds = 0 if strategy == "oversample" else 3
    a = plan_splits(whole, dups, config, folds=folds, seed=4).plan
    b = plan_splits(shared, dups, config, folds=folds, seed=4).plan
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert a.summary() == b.summary()
