"""Measurements behind the balanced_splits checks, on plain DataFrames.

Each function returns a ``CheckOutcome`` ``(passed, measured, offending, description)``: ``measured``
is a small JSON-able dict that carries the threshold and the measured values, ``offending`` names the
rows or keys at fault, and ``description`` says in words what was measured against which threshold,
so a check explains itself on the asset page, passed or failed. They accept the manifest either
as planned (``SplitPlan.manifest``) or as read back from ``manifest.csv`` (every column a string).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .assign import AUG_MARK, SPLITS, SplitConfig, map_labels, unmapped_counts
from .grouping import LINK_COLUMNS, clean_keys, link_keys, stripped_text
from .pool import PlanPool, coded_column

LEAK_KEYS = LINK_COLUMNS
MAX_EXAMPLES = 20
_IDS_PER_EXAMPLE = 10


class CheckOutcome(NamedTuple):
    """What a check found: pass/fail, the measured values (with thresholds), the offending cases, and
    one sentence giving the measured value and the threshold."""

    passed: bool
    measured: dict[str, Any]
    offending: list[dict[str, Any]]
    description: str = ""


def augmented_mask(manifest: pd.DataFrame) -> pd.Series:
    """True for augmented copies, whether ``is_augmented`` is a bool column, a CSV string, or absent.

    Without the column, the ``__aug`` mark in the id decides: copies are named so it always can.
    """
    if "is_augmented" in manifest.columns:
        flags = manifest["is_augmented"]
        if flags.dtype == bool:
            return flags
        return clean_keys(flags).str.lower().isin({"true", "1"})
    return clean_keys(manifest["isic_id"]).str.contains(AUG_MARK, regex=False)


def original_ids(manifest: pd.DataFrame) -> pd.Series:
    """The original image behind each row: itself, or the image an augmented copy was made from."""
    ids = clean_keys(manifest["isic_id"])
    aug = augmented_mask(manifest).to_numpy()
    if "augmented_from" in manifest.columns:
        source = clean_keys(manifest["augmented_from"])
    else:
        source = ids.str.split(AUG_MARK, n=1, regex=False).str[0]
    return ids.where(~aug, source)


# ----------------------------------------------------------------------------------------------
# leakage


def leakage(
    manifest: pd.DataFrame,
    metadata: pd.DataFrame,
    duplicates: pd.DataFrame | None = None,
    *,
    near_duplicates: pd.DataFrame | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> CheckOutcome:
    """No image, patient, lesion, content hash, listed duplicate or near-duplicate pair may span two splits.

    Checked on the facts themselves, not on the group ids the plan used, so a bug in grouping is
    caught here. Dropped duplicates count as present in the split of the image kept instead (their
    hash, and patient/lesion where duplicates carries them, are checked there). A manifest image
    without a metadata row cannot be verified and fails the check.
    """
    placed = pd.DataFrame(
        {"isic_id": original_ids(manifest).to_numpy(), "split": clean_keys(manifest["split"]).to_numpy()}
    ).drop_duplicates()
    # Only the placed images' rows take part (their keys are the occurrences); the rest of a
    # 400,000-row table is never made Python strings (docs/PERFORMANCE.md "The stages after the merge").
    metadata = metadata[stripped_text(metadata["isic_id"]).isin(placed["isic_id"].unique()).to_numpy()]
    meta_ids = clean_keys(metadata["isic_id"])
    unknown = sorted(set(placed.loc[~placed["isic_id"].isin(meta_ids), "isic_id"]))
    occurrences = pd.concat(
        [
            _id_occurrences(placed),
            _metadata_occurrences(placed, metadata, meta_ids),
            _duplicate_occurrences(placed, duplicates),
            _near_duplicate_occurrences(placed, near_duplicates),
        ],
        ignore_index=True,
    )
    occurrences = occurrences[occurrences["key"] != ""]
    spread = occurrences.groupby(["key_type", "key"])["split"].nunique()
    leaking = spread[spread > 1].sort_index()
    per_type = {
        t: int((leaking.index.get_level_values(0) == t).sum())
        for t in ("isic_id", *LEAK_KEYS, "duplicate_pair", "near_duplicate")
    }
    offending = _leak_examples(occurrences, leaking, max_examples)
    offending += [
        {"key_type": "missing_metadata", "key": i, "splits": [], "isic_ids": [i]}
        for i in unknown[:max_examples]
    ]
    measured = {
        "rows_checked": len(manifest),
        "images_checked": int(placed["isic_id"].nunique()),
        "leaking_keys": per_type,
        "leaking_keys_total": len(leaking),
        "images_without_metadata": len(unknown),
        "threshold": 0,
    }
    if leaking.empty and not unknown:
        description = (f"no image, patient, lesion, content hash or listed duplicate of the "
                       f"{measured['images_checked']} images is in two splits (none allowed)")
    elif len(leaking):
        first = offending[0]
        description = (f"{len(leaking)} key(s) appear in two splits, none allowed; e.g. {first['key_type']} "
                       f"{first['key']} in {' and '.join(first['splits'])}")
    else:
        description = (f"{len(unknown)} manifest image(s) have no metadata row, so their leakage cannot be "
                       f"verified (none allowed), e.g. {unknown[0]}")
    return CheckOutcome(leaking.empty and not unknown, measured, offending, description)


def _occ(key_type: str, key: pd.Series | Any, split: Any, isic_id: Any) -> pd.DataFrame:
    return pd.DataFrame({"key_type": key_type, "key": key, "split": split, "isic_id": isic_id})


def _id_occurrences(placed: pd.DataFrame) -> pd.DataFrame:
    """The image itself: one original written to two splits is the plainest leak of all."""
    return _occ(
        "isic_id", placed["isic_id"].to_numpy(), placed["split"].to_numpy(), placed["isic_id"].to_numpy()
    )


def _metadata_occurrences(placed: pd.DataFrame, metadata: pd.DataFrame, meta_ids: pd.Series) -> pd.DataFrame:
    keys = link_keys(metadata, meta_ids)
    joined = placed.merge(keys.drop_duplicates("isic_id"), on="isic_id", how="inner")
    return pd.concat(
        [
            _occ(c, joined[c].to_numpy(), joined["split"].to_numpy(), joined["isic_id"].to_numpy())
            for c in LEAK_KEYS
        ],
        ignore_index=True,
    )


def _duplicate_occurrences(placed: pd.DataFrame, duplicates: pd.DataFrame | None) -> pd.DataFrame:
    """Each listed pair as a shared key, plus the dropped copy's own keys in its keeper's split."""
    if duplicates is None or duplicates.empty:
        return _occ("duplicate_pair", [], [], [])
    dup = link_keys(duplicates, clean_keys(duplicates["isic_id"])).rename(columns={"isic_id": "dropped"})
    dup["kept"] = clean_keys(duplicates["kept_isic_id"]).to_numpy()
    split_of = placed.groupby("isic_id")["split"].first()
    as_kept = dup.assign(split=dup["kept"].map(split_of)).dropna(subset=["split"])
    as_dropped = dup.assign(split=dup["dropped"].map(split_of)).dropna(subset=["split"])
    parts = [
        _occ(
            "duplicate_pair",
            as_kept["dropped"].to_numpy(),
            as_kept["split"].to_numpy(),
            as_kept["kept"].to_numpy(),
        ),
        _occ(
            "duplicate_pair",
            as_dropped["dropped"].to_numpy(),
            as_dropped["split"].to_numpy(),
            as_dropped["dropped"].to_numpy(),
        ),
    ]
    parts += [
        _occ(c, as_kept[c].to_numpy(), as_kept["split"].to_numpy(), as_kept["dropped"].to_numpy())
        for c in LEAK_KEYS
    ]
    return pd.concat(parts, ignore_index=True)


def _near_duplicate_occurrences(placed: pd.DataFrame, pairs: pd.DataFrame | None) -> pd.DataFrame:
    """Each confirmed look-alike pair as a key shared by both images, wherever they were placed."""
    if pairs is None or pairs.empty:
        return _occ("near_duplicate", [], [], [])
    a, b = clean_keys(pairs["isic_id_a"]), clean_keys(pairs["isic_id_b"])
    key = (a + "~" + b).to_numpy()
    split_of = placed.groupby("isic_id")["split"].first()
    parts = []
    for ids in (a, b):
        splits = ids.map(split_of)
        present = splits.notna().to_numpy()
        parts.append(_occ("near_duplicate", key[present], splits[present].to_numpy(), ids[present].to_numpy()))
    return pd.concat(parts, ignore_index=True)


def _leak_examples(occurrences: pd.DataFrame, leaking: pd.Series, max_examples: int) -> list[dict[str, Any]]:
    examples = []
    for key_type, key in leaking.index[:max_examples]:
        rows = occurrences[(occurrences["key_type"] == key_type) & (occurrences["key"] == key)]
        examples.append(
            {
                "key_type": key_type,
                "key": key,
                "splits": sorted(set(rows["split"])),
                "isic_ids": sorted(set(rows["isic_id"]))[:_IDS_PER_EXAMPLE],
            }
        )
    return examples


# ----------------------------------------------------------------------------------------------
# balance and proportions


def split_class_table(manifest: pd.DataFrame, classes: list[str] | None = None) -> pd.DataFrame:
    """Rows per split x class, augmented copies included (rows in SPLITS order)."""
    labels = clean_keys(manifest["label"])
    splits = clean_keys(manifest["split"])
    classes = classes if classes is not None else sorted(set(labels))
    table = pd.DataFrame({"split": splits, "label": labels}).groupby(["split", "label"]).size()
    table = table.unstack("label", fill_value=0) if len(table) else pd.DataFrame()
    return table.reindex(index=list(SPLITS), columns=classes, fill_value=0).astype("int64")


def _max_min_ratio(counts: pd.Series) -> float:
    """Largest over smallest class count; infinite when a class is absent (the worst imbalance)."""
    smallest, largest = int(counts.min()), int(counts.max())
    return math.inf if smallest == 0 else largest / smallest


def _json_ratio(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 4)


def class_balance(
    manifest: pd.DataFrame,
    strategy: str,
    tolerance: float = 0.1,
    *,
    natural_ratio: float | None = None,
    classes: list[str] | None = None,
    balance: str = "all_splits",
) -> CheckOutcome:
    """Per split, the max/min class count ratio is where the strategy says it must be.

    With ``balance="train_only"`` undersampling balanced train alone: validation and test keep their
    natural ratio and, as with ``oversample``, are only reported.

    ``undersample``: every split about 1 (ratio <= 1 + tolerance). ``oversample``: train about 1;
    validation and test keep their natural ratio and are only reported. ``none``: each split's ratio
    within ``tolerance`` (relative) of the natural ratio, which is the manifest's own overall ratio
    unless given, since stratification should have kept it everywhere. Pass ``classes`` to also
    catch a class missing from the whole manifest. Empty splits (ratio 0) are skipped.
    """
    if strategy not in ("undersample", "oversample", "none"):
        raise ValueError(f"unknown strategy {strategy!r}")
    table = split_class_table(manifest, classes)
    if natural_ratio is None and strategy == "none":
        originals = manifest[~augmented_mask(manifest).to_numpy()]
        natural_ratio = _max_min_ratio(split_class_table(originals, list(table.columns)).sum(axis=0))
    ratios = {split: _max_min_ratio(table.loc[split]) for split in SPLITS if table.loc[split].sum() > 0}
    train_only = strategy == "oversample" or (strategy == "undersample" and balance == "train_only")
    checked = ["train"] if train_only else list(ratios)
    offending = []
    for split in checked:
        ratio = ratios.get(split, math.inf)
        expected = 1.0 if strategy != "none" else natural_ratio
        if not _ratio_ok(ratio, expected, tolerance, strategy):
            offending.append(
                {
                    "split": split,
                    "ratio": _json_ratio(ratio),
                    "expected": _json_ratio(expected),
                    "counts": {c: int(v) for c, v in table.loc[split].items()},
                }
            )
    measured = {
        "strategy": strategy,
        "balance": balance,
        "tolerance": tolerance,
        "expected_ratio": _json_ratio(natural_ratio) if strategy == "none" else 1.0,
        "ratios": {s: _json_ratio(r) for s, r in ratios.items()},
        "checked_splits": checked,
        "counts": {s: {c: int(v) for c, v in row.items()} for s, row in table.iterrows()},
    }
    allowed = (f"at most {1.0 + tolerance:.2f}" if strategy != "none"
               else f"within {tolerance:.0%} of the natural {_describe_ratio(natural_ratio)}")
    if offending:
        worst = offending[0]
        counts = " to ".join(f"{n} {c}" for c, n in worst["counts"].items())
        ratio = _describe_ratio(ratios.get(worst["split"], math.inf))
        description = (f"{worst['split']} has {counts} (majority/minority {ratio}); "
                       f"{strategy} allows {allowed}")
    elif checked:
        worst_split = max(checked, key=lambda s: ratios.get(s, math.inf))
        description = (f"{strategy}: every checked split's majority/minority ratio is {allowed} "
                       f"(largest: {worst_split} {_describe_ratio(ratios[worst_split])})")
    else:
        description = "no split holds any image"
    natural = [s for s in ratios if s not in checked]
    if natural:
        description += ("; natural ratio kept in " +
                        ", ".join(f"{s} {_describe_ratio(ratios[s])}" for s in natural) + " (reported, not checked)")
    return CheckOutcome(not offending, measured, offending, description)


def _describe_ratio(ratio: float | None) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "infinite ratio (a class is absent)"
    return f"{ratio:.2f}"


def _ratio_ok(ratio: float, expected: float | None, tolerance: float, strategy: str) -> bool:
    if not math.isfinite(ratio) or expected is None or not math.isfinite(expected):
        return False
    if strategy == "none":
        return abs(ratio / expected - 1.0) <= tolerance
    return ratio <= 1.0 + tolerance


def split_proportions(
    manifest: pd.DataFrame, ratios: tuple[float, float, float], tolerance: float = 0.05
) -> CheckOutcome:
    """Each split's share of the original images is within ``tolerance`` (absolute) of its ratio.

    Augmented copies are left out: oversampling inflates train on purpose and must not read as a
    wrong split.
    """
    originals = clean_keys(manifest.loc[~augmented_mask(manifest).to_numpy(), "split"])
    total = len(originals)
    shares = {s: (float((originals == s).sum()) / total if total else 0.0) for s in SPLITS}
    offending = [
        {"split": s, "share": round(shares[s], 4), "expected": r}
        for s, r in zip(SPLITS, ratios, strict=True)
        if abs(shares[s] - r) > tolerance
    ]
    if total == 0:
        offending.append({"split": "*", "share": 0.0, "expected": None, "reason": "no image in the manifest"})
    measured = {
        "tolerance": tolerance,
        "expected": dict(zip(SPLITS, (float(r) for r in ratios), strict=True)),
        "shares": {s: round(v, 4) for s, v in shares.items()},
        "counts": {s: int((originals == s).sum()) for s in SPLITS},
    }
    if total == 0:
        description = "the manifest holds no original image"
    elif len(offending):
        worst = max(offending, key=lambda o: abs(o["share"] - o["expected"]))
        description = (f"{worst['split']} holds {worst['share']:.1%} of the original images, "
                       f"{abs(worst['share'] - worst['expected']):.1%} away from its ratio {worst['expected']:.0%} "
                       f"(tolerance {tolerance:.1%})")
    else:
        gap = max(abs(shares[s] - r) for s, r in zip(SPLITS, ratios, strict=True))
        description = (f"every split's share of the {total} original images is within {tolerance:.1%} of its "
                       f"ratio (largest gap {gap:.1%})")
    return CheckOutcome(not offending, measured, offending, description)


def natural_imbalance(
    metadata: pd.DataFrame | PlanPool,
    label_column: str = "benign_malignant",
    class_map: Mapping[str, str] | None = None,
    *,
    max_ratio: float = 2.0,
) -> CheckOutcome:
    """The natural class ratio of the labelled metadata; fails (a WARN) above ``max_ratio``.

    It does not stop anything: it tells the user how much balancing the splits will have to do
    (the seed measured about 14:1 benign to malignant). Labels are mapped exactly as the splits map
    them, so the number reported is the one the split strategy faces.
    """
    config = SplitConfig(label_column=label_column, **({"class_map": dict(class_map)} if class_map else {}))
    if isinstance(metadata, PlanPool):
        if label_column not in metadata:
            raise ValueError(f"metadata has no {label_column!r} column")
        codes, distinct = metadata.codes(label_column)
    else:
        if label_column not in metadata.columns:
            raise ValueError(f"metadata has no {label_column!r} column")
        codes, distinct = coded_column(metadata[label_column])
    labels = map_labels(distinct, config.class_map).to_numpy(dtype=object)  # per distinct value
    per_value = np.bincount(codes, minlength=len(distinct)) if len(codes) else np.zeros(len(distinct), np.int64)
    counts = {c: int(per_value[labels == c].sum()) for c in config.classes}
    ratio = _max_min_ratio(pd.Series(counts))
    passed = math.isfinite(ratio) and ratio <= max_ratio
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    unmapped = unmapped_counts(codes, distinct, labels == "")
    measured = {
        "label_column": label_column,
        "counts": counts,
        "ratio": _json_ratio(ratio),
        "max_ratio": max_ratio,
        "unmapped": sum(unmapped.values()),
        "unmapped_values": unmapped,
    }
    offending = [] if passed else [{"class": c, "count": n} for c, n in (ordered[0], ordered[-1])]
    return CheckOutcome(passed, measured, offending)
