"""Planning train/validation/test splits: leakage-free, stratified, balanced and reproducible.

The plan is pure data (a manifest table plus counts); ``split_writer`` turns it into folders. Order
of work, each step seeded and independent of input row order:

1. map the label column to classes with ``class_map``; unmapped values (indeterminate, empty) are
   left out and counted;
2. assign whole leakage groups (``grouping.build_groups``) to splits, stratified by class: largest
   group first (seeded order among equal sizes), each to the split whose per-class counts move
   closest to the targets;
3. optionally cap every class per split (``cap_per_class`` shared out by the ratios), whole groups;
4. balance: ``undersample`` keeps every class of a split at the split's minority count (whole
   groups; with ``balance="train_only"`` in train only, validation and test keep the natural
   ratio), ``none`` keeps the natural ratio and reports class weights, ``oversample`` plans seeded
   augmented copies of the train minority up to the train majority. Augmentation is planned only
   after the split and only in train, so no copy of a validation or test image can leak into train.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .grouping import clean_keys, factorize

SPLITS = ("train", "validation", "test")
STRATEGIES = ("undersample", "oversample", "none")
# Which splits undersampling balances: all of them (the seed's way, the default), or train only so
# that validation and test keep the natural class ratio, where precision and PPV mean what they
# will mean on real patients.
BALANCE_SCOPES = ("all_splits", "train_only")
WILDCARD = "*"
AUG_MARK = "__aug"
IMAGE_EXT = ".jpg"
MANIFEST_COLUMNS = [
    "isic_id",
    "split",
    "label",
    "group_id",
    "source",
    "image",
    "is_augmented",
    "augmented_from",
    "aug_seed",
]
# Class names become folder names in neural_network_data/, so they must be safe path components.
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Stage codes mixed into the seed so every selection draws from its own independent stream.
_STAGE_ORDER, _STAGE_CAP, _STAGE_UNDERSAMPLE, _STAGE_OVERSAMPLE = 1, 2, 3, 4


def _default_class_map() -> dict[str, str]:
    return {"benign": "benign", "malignant": "malignant"}


@dataclass(frozen=True)
class SplitConfig:
    """How to split and balance; validated on construction so a bad config fails before any work.

    ``class_map`` maps values of ``label_column`` (compared case-insensitively, whitespace stripped)
    to class names (used as folder names). The key ``"*"`` is a wildcard for every other non-empty
    value; an empty or missing value is never matched, so unlabelled images always stay out. Map a
    value to ``""`` to leave it out even when a wildcard is present. Melanoma vs rest::

        SplitConfig(label_column="diagnosis", class_map={"melanoma": "malignant", "*": "benign"})

    ``cap_per_class`` is the most images of one class over all splits (the seed's 1000 per class);
    each split gets its share by the ratios, so the proportions hold.
    """

    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 0
    strategy: str = "undersample"
    cap_per_class: int | None = None
    label_column: str = "benign_malignant"
    class_map: dict[str, str] = field(default_factory=_default_class_map)
    #: Keep only these ``image_type`` values (empty: every type present), e.g. ``("dermoscopic",)``
    #: to keep ISIC 2024's TBP tiles out of a dermoscopy dataset, or ``("TBP tile: close-up",)`` alone.
    image_types: tuple[str, ...] = ()
    #: ``all_splits`` or ``train_only`` (``BALANCE_SCOPES``): where ``undersample`` balances.
    balance: str = "all_splits"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", _validated_ratios(self.ratios))
        object.__setattr__(self, "class_map", _validated_class_map(self.class_map))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.balance not in BALANCE_SCOPES:
            raise ValueError(f"balance must be one of {', '.join(BALANCE_SCOPES)}; got {self.balance!r}")
        if self.cap_per_class is not None and (
            isinstance(self.cap_per_class, bool)
            or not isinstance(self.cap_per_class, int | np.integer)
            or self.cap_per_class < 1
        ):
            raise ValueError(f"cap_per_class must be a positive integer or None, got {self.cap_per_class!r}")
        if not isinstance(self.label_column, str) or not self.label_column.strip():
            raise ValueError("label_column must name a metadata column")
        if isinstance(self.image_types, str) or not all(isinstance(t, str) and t.strip() for t in self.image_types):
            raise ValueError(f"image_types must be a list of image_type values, got {self.image_types!r}")
        object.__setattr__(self, "image_types", tuple(t.strip() for t in self.image_types))

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, sorted: the order of folders, counts and class weights."""
        return tuple(sorted({c for c in self.class_map.values() if c}))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for run metadata."""
        out = asdict(self)
        out["ratios"] = list(self.ratios)
        out["image_types"] = list(self.image_types)
        return out


def _validated_ratios(ratios: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ratios must be three numbers (train, validation, test), got {ratios!r}") from exc
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(
            f"ratios must be three non-negative numbers (train, validation, test), got {ratios!r}"
        )
    if values[0] <= 0:
        raise ValueError(f"the train ratio must be positive, got {ratios!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {ratios!r} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def _validated_class_map(class_map: Any) -> dict[str, str]:
    if not isinstance(class_map, Mapping) or not class_map:
        raise ValueError("class_map must be a non-empty mapping of label values to class names")
    out: dict[str, str] = {}
    for key, value in class_map.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"class_map keys must be non-empty strings, got {key!r}")
        if not isinstance(value, str) or (value and not _CLASS_NAME.match(value)):
            raise ValueError(
                f"class name {value!r} for {key!r} is not a safe folder name (letters, digits, _ . -) "
                "or '' to leave the value out"
            )
        norm = key.strip().lower()
        if norm in out:
            raise ValueError(f"class_map has {key!r} twice (keys are compared case-insensitively)")
        if AUG_MARK in value:
            raise ValueError(f"class name {value!r} may not contain {AUG_MARK!r}")
        out[norm] = value
    if len({v for v in out.values() if v}) < 2:
        raise ValueError(f"class_map must name at least two classes, got {sorted(set(out.values()))}")
    return out


def map_labels(values: pd.Series, class_map: Mapping[str, str]) -> pd.Series:
    """Class name per row, ``""`` where the value is missing or not mapped (those rows stay out).

    ``class_map`` must be validated (lower-case keys), e.g. ``SplitConfig.class_map``. Each distinct
    value is mapped once and its rows share the class name (a label column has a handful of values
    and hundreds of thousands of rows).
    """
    codes, distinct = factorize(values)  # missing values: -1, mapped as ""
    keys = clean_keys(distinct).str.lower()
    mapped = keys.map({k: v for k, v in class_map.items() if k != WILDCARD})
    if WILDCARD in class_map:
        mapped = mapped.where(mapped.notna() | (keys == ""), class_map[WILDCARD])
    table = np.append(mapped.fillna("").to_numpy(dtype=object), np.array([""], dtype=object))
    return pd.Series(table[codes], index=values.index, dtype=object)


def augmented_name(isic_id: str, k: int) -> str:
    """Id of the k-th augmented copy (k from 1): never a valid ``ISIC_NNNNNNN``, so never an original."""
    return f"{isic_id}{AUG_MARK}{k}"


def augmentation_seed(seed: int, isic_id: str, k: int) -> int:
    """A stable 32-bit seed per copy, from the config seed, the id and k (not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}:{isic_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class SplitPlan:
    """The outcome of planning: what goes where, what was left out, and why.

    ``manifest`` has one row per file to write (``MANIFEST_COLUMNS``), sorted by split, label and
    isic_id; ``image`` is the path relative to ``neural_network_data/``. ``excluded`` counts images
    left out by reason (``unmapped_label``, ``capped``, ``undersampled``); ``unmapped_values`` splits
    ``unmapped_label`` by original value. ``class_weights`` are computed on train (augmented copies
    included) as n_samples / (n_classes * n_c). ``assigned_counts`` are split x class before capping
    and balancing (the stratification itself).
    """

    manifest: pd.DataFrame
    config: SplitConfig
    classes: tuple[str, ...]
    excluded: dict[str, int]
    unmapped_values: dict[str, int]
    class_weights: dict[str, float]
    assigned_counts: pd.DataFrame
    warnings: tuple[str, ...] = ()

    @property
    def counts(self) -> pd.DataFrame:
        """Files per split x class, augmented copies included (rows SPLITS, columns classes)."""
        return _split_class_counts(self.manifest, self.classes)

    @property
    def augmented_counts(self) -> dict[str, int]:
        """Augmented copies per class (all in train)."""
        aug = self.manifest[self.manifest["is_augmented"]]
        return {c: int((aug["label"] == c).sum()) for c in self.classes}

    @property
    def groups_per_split(self) -> dict[str, int]:
        """Distinct leakage groups per split."""
        return {s: int(self.manifest.loc[self.manifest["split"] == s, "group_id"].nunique()) for s in SPLITS}

    def summary(self) -> dict[str, Any]:
        """Everything a UI or a log needs, as plain JSON-able values."""
        return {
            "config": self.config.as_dict(),
            "classes": list(self.classes),
            "counts": {s: {c: int(v) for c, v in row.items()} for s, row in self.counts.iterrows()},
            "assigned_counts": {
                s: {c: int(v) for c, v in row.items()} for s, row in self.assigned_counts.iterrows()
            },
            "groups_per_split": self.groups_per_split,
            "augmented_counts": self.augmented_counts,
            "excluded": dict(self.excluded),
            "unmapped_values": dict(self.unmapped_values),
            "class_weights": dict(self.class_weights),
            "warnings": list(self.warnings),
        }


def _split_class_counts(frame: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    table = _cross_counts(frame, "split")
    return table.reindex(index=list(SPLITS), columns=list(classes), fill_value=0).astype("int64")


def _cross_counts(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows per (``by`` value, label); a groupby, several times faster than ``pd.crosstab``."""
    if frame.empty:
        return pd.DataFrame(dtype="int64")
    return frame.groupby([by, "label"], sort=True).size().unstack("label", fill_value=0)


def assign_splits(metadata: pd.DataFrame, groups: pd.Series, config: SplitConfig) -> SplitPlan:
    """Plan the splits of ``metadata`` (one row per kept image) with ``groups`` from build_groups."""
    metadata, other_types = select_image_types(metadata, config.image_types)
    frame, unmapped = _labelled_frame(metadata, groups, config)
    classes = config.classes
    present = [c for c in classes if (frame["label"] == c).any()]
    if len(present) < 2:
        raise ValueError(
            f"{config.label_column!r} maps to {present or 'no class'} only; a classifier needs at least two "
            f"of {list(classes)} (unmapped values: {unmapped})"
        )
    frame["split"] = _assign_groups(frame, classes, config)
    assigned = _split_class_counts(frame, classes)
    frame["kept"] = True
    capped = _apply_cap(frame, classes, config) if config.cap_per_class is not None else 0
    undersampled = _undersample(frame, classes, config) if config.strategy == "undersample" else 0
    kept = frame[frame["kept"]].drop(columns=["kept"])
    warnings: list[str] = []
    augmented = (
        _plan_augmentation(kept, classes, config, warnings) if config.strategy == "oversample" else None
    )
    manifest = _manifest(kept, augmented)
    _warn_missing_classes(manifest, classes, config, warnings)
    return SplitPlan(
        manifest=manifest,
        config=config,
        classes=classes,
        excluded={
            "unmapped_label": int(sum(unmapped.values())),
            "capped": capped,
            "undersampled": undersampled,
            "other_image_type": other_types,
        },
        unmapped_values=unmapped,
        class_weights=_class_weights(manifest, classes, warnings),
        assigned_counts=assigned,
        warnings=tuple(warnings),
    )


def select_image_types(metadata: pd.DataFrame, image_types: tuple[str, ...]) -> tuple[pd.DataFrame, int]:
    """Rows whose ``image_type`` is one of ``image_types`` (all rows when empty), and how many were left out.

    Asking for a type no row has is an error naming the types present: an empty dataset is never
    what the user meant.
    """
    if not image_types:
        return metadata, 0
    if "image_type" not in metadata.columns:
        raise ValueError("image_types was given but the metadata has no image_type column; re-run merge_sources")
    values = clean_keys(metadata["image_type"])
    present = sorted(set(values))
    keep = values.isin(image_types).to_numpy()
    if not keep.any():
        raise ValueError(f"no image has image_type {list(image_types)}; the merged data has {present}")
    return metadata.loc[keep].reset_index(drop=True), int((~keep).sum())


def _labelled_frame(
    metadata: pd.DataFrame, groups: pd.Series, config: SplitConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with a mapped class, sorted by isic_id, plus the unmapped counts by original value."""
    for column in ("isic_id", config.label_column):
        if column not in metadata.columns:
            raise ValueError(f"metadata has no {column!r} column")
    ids = clean_keys(metadata["isic_id"])
    if ids.duplicated().any():
        raise ValueError(f"metadata repeats isic_ids, e.g. {sorted(set(ids[ids.duplicated()]))[:5]}")
    group_of = groups.reindex(ids.to_numpy())
    if group_of.isna().any():
        missing = ids[group_of.isna().to_numpy()].tolist()
        raise ValueError(f"groups has no group for {len(missing)} images, e.g. {missing[:5]}")
    raw = clean_keys(metadata[config.label_column])
    frame = pd.DataFrame(
        {
            "isic_id": ids.to_numpy(),
            "label": map_labels(metadata[config.label_column], config.class_map).to_numpy(),
            "group_id": group_of.astype(str).to_numpy(),
            "source": clean_keys(metadata["source"]).to_numpy() if "source" in metadata.columns else "",
        }
    )
    unmapped_raw = raw[(frame["label"] == "").to_numpy()].replace("", "(empty)")
    unmapped = {str(k): int(v) for k, v in sorted(unmapped_raw.value_counts().items())}
    frame = frame[frame["label"] != ""].sort_values("isic_id", kind="stable").reset_index(drop=True)
    return frame, unmapped


def _assign_groups(frame: pd.DataFrame, classes: tuple[str, ...], config: SplitConfig) -> pd.Series:
    """Split per row: whole groups, largest first, each to the split that best keeps the targets.

    The cost of a split is sum over classes of (count - target)^2 / target (a chi-square distance),
    so a class's deviation weighs more where its target is small: the minority class is stratified
    as carefully as the majority. Adding a group goes to the split whose cost rises least; on a tie
    the earlier split (train first) wins. Groups of equal size are visited in a seeded order, which
    is what makes two seeds give two different splits.
    """
    table = _cross_counts(frame, "group_id").reindex(columns=list(classes), fill_value=0).sort_index()
    rng = np.random.default_rng([config.seed, _STAGE_ORDER])
    tie_break = rng.permutation(len(table))
    order = np.lexsort((tie_break, -table.sum(axis=1).to_numpy()))
    counts = table.to_numpy()[order].tolist()
    totals = table.sum(axis=0).to_numpy()
    active = [s for s, r in enumerate(config.ratios) if r > 0]
    targets = [[config.ratios[s] * t for t in totals] for s in range(len(SPLITS))]
    current = [[0.0] * len(classes) for _ in SPLITS]
    chosen = np.empty(len(order), dtype=np.int64)
    for position, n in enumerate(counts):
        best, best_cost = active[0], math.inf
        for s in active:
            cost = sum(
                k * (2.0 * (current[s][c] - targets[s][c]) + k) / targets[s][c] for c, k in enumerate(n) if k
            )
            if cost < best_cost - 1e-12:
                best, best_cost = s, cost
        chosen[position] = best
        for c, k in enumerate(n):
            current[best][c] += k
    split_of_group = pd.Series(np.asarray(SPLITS, dtype=object)[chosen], index=table.index[order])
    return frame["group_id"].map(split_of_group)


def share_by_ratios(total: int, ratios: tuple[float, ...]) -> list[int]:
    """Split an integer by ratios so the parts sum exactly to it (largest remainder, ties to the first)."""
    raw = [total * r for r in ratios]
    parts = [math.floor(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _apply_cap(frame: pd.DataFrame, classes: tuple[str, ...], config: SplitConfig) -> int:
    """Keep at most the split's share of ``cap_per_class`` per class, choosing whole groups."""
    assert config.cap_per_class is not None
    shares = share_by_ratios(config.cap_per_class, config.ratios)
    dropped = 0
    for s, split in enumerate(SPLITS):
        for c, label in enumerate(classes):
            dropped += _reduce_class(frame, split, label, shares[s], [config.seed, _STAGE_CAP, s, c])
    return dropped


def _undersample(frame: pd.DataFrame, classes: tuple[str, ...], config: SplitConfig) -> int:
    """Bring every class of each split down to that split's minority count, choosing whole groups.

    The minority class keeps all its images; a majority class keeps whole groups' worth of its
    images (all of a patient's benign images or none), so the kept set still reflects real patients;
    only where whole groups cannot come within ``WHOLE_GROUP_SLACK`` of the minority (groups larger
    than it) are single images kept or dropped to reach it (``_top_up``).
    """
    dropped = 0
    for s, split in enumerate(SPLITS):
        if config.balance == "train_only" and split != "train":
            continue  # validation and test keep the natural ratio (whole groups, as assigned)
        in_split = frame["kept"] & (frame["split"] == split)
        sizes = [int((in_split & (frame["label"] == label)).sum()) for label in classes]
        if not any(sizes):
            continue
        target = min(sizes)
        for c, label in enumerate(classes):
            before = frame["kept"] & (frame["split"] == split) & (frame["label"] == label)
            seed = [config.seed, _STAGE_UNDERSAMPLE, s, c]
            dropped += _reduce_class(frame, split, label, target, seed)
            dropped -= _top_up(frame, before, target, seed)  # whole groups missed by far: single images
    return dropped


# How far below the minority whole groups may leave a majority class before single images top it
# up: the class_balance check's default tolerance (core/splits/checks.py), so a plan whole groups
# cannot balance is never handed to a check that would block it.
WHOLE_GROUP_SLACK = 0.1


def _top_up(frame: pd.DataFrame, before: pd.Series, target: int, seed: list[int]) -> int:
    """Bring ``before``'s kept rows to ``target`` with single images when whole groups missed it by
    more than ``WHOLE_GROUP_SLACK``; return how many rows were kept again (negative: dropped more).

    When every group of a class is larger than the target (ISIC 2024: about 385 tiles a patient, a
    few dozen malignant tiles per split), whole groups keep none of the class, or one group far
    over. Splits are already assigned by group, so keeping part of a group leaks nothing; the
    sample is seeded.
    """
    now = before & frame["kept"]
    kept = int(now.sum())
    rng = np.random.default_rng([*seed, 1])
    if kept * (1.0 + WHOLE_GROUP_SLACK) < target:
        pool = frame.index[before & ~frame["kept"]].to_numpy()
        take = rng.choice(pool, size=min(target - kept, len(pool)), replace=False)
        frame.loc[np.sort(take), "kept"] = True
        return len(take)
    if kept > target * (1.0 + WHOLE_GROUP_SLACK):
        pool = frame.index[now].to_numpy()
        drop = rng.choice(pool, size=kept - target, replace=False)
        frame.loc[np.sort(drop), "kept"] = False
        return -len(drop)
    return 0


def _reduce_class(frame: pd.DataFrame, split: str, label: str, target: int, seed: list[int]) -> int:
    """Unmark rows of (split, label) so about ``target`` remain, whole groups at a time; return drops."""
    rows = frame["kept"] & (frame["split"] == split) & (frame["label"] == label)
    if int(rows.sum()) <= target:
        return 0
    sizes = frame.loc[rows].groupby("group_id").size().sort_index()
    keep = choose_whole_groups(sizes.to_numpy(), target, np.random.default_rng(seed))
    dropped_groups = set(sizes.index[~keep])
    drop = rows & frame["group_id"].isin(dropped_groups)
    frame.loc[drop, "kept"] = False
    return int(drop.sum())


def choose_whole_groups(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Mask of groups to keep so their sizes sum as close to ``target`` as whole groups allow.

    Groups are visited in a seeded random order and taken while they fit; if the total is then still
    short, the smallest group left is added when overshooting with it is closer to the target than
    stopping short (a class of only large patients would otherwise be cut further than needed).
    """
    keep = np.zeros(len(sizes), dtype=bool)
    total = 0
    for i in rng.permutation(len(sizes)).tolist():
        if total + int(sizes[i]) <= target:
            keep[i] = True
            total += int(sizes[i])
            if total == target:
                return keep
    left = np.flatnonzero(~keep)
    if total < target and len(left):
        smallest = int(left[np.argmin(sizes[left])])
        if abs(total + int(sizes[smallest]) - target) < target - total:
            keep[smallest] = True
    return keep


def _plan_augmentation(
    kept: pd.DataFrame, classes: tuple[str, ...], config: SplitConfig, warnings: list[str]
) -> pd.DataFrame:
    """Rows of augmented train copies topping every class up to the train majority count.

    Copies are spread evenly over a class's train images (each gets ``need // n`` copies, a seeded
    choice of ``need % n`` of them one more). Validation and test are never touched.
    """
    train = kept[kept["split"] == "train"]
    sizes = {label: int((train["label"] == label).sum()) for label in classes}
    majority = max(sizes.values())
    rows: list[dict[str, Any]] = []
    for c, label in enumerate(classes):
        need = majority - sizes[label]
        if need <= 0:
            continue
        originals = train[train["label"] == label].sort_values("isic_id")
        if originals.empty:
            warnings.append(f"train has no {label!r} image to oversample from")
            continue
        base, extra = divmod(need, len(originals))
        rng = np.random.default_rng([config.seed, _STAGE_OVERSAMPLE, c])
        one_more = set(rng.choice(len(originals), size=extra, replace=False).tolist())
        for i, row in enumerate(originals.itertuples(index=False)):
            for k in range(1, base + (1 if i in one_more else 0) + 1):
                rows.append(
                    {
                        "isic_id": augmented_name(row.isic_id, k),
                        "split": "train",
                        "label": label,
                        "group_id": row.group_id,
                        "source": row.source,
                        "is_augmented": True,
                        "augmented_from": row.isic_id,
                        "aug_seed": augmentation_seed(config.seed, row.isic_id, k),
                    }
                )
    return pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c != "image"])


def _manifest(kept: pd.DataFrame, augmented: pd.DataFrame | None) -> pd.DataFrame:
    """Originals plus augmented copies, with image paths, in a stable order and with stable dtypes."""
    originals = kept[["isic_id", "split", "label", "group_id", "source"]].copy()
    originals["is_augmented"] = False
    originals["augmented_from"] = ""
    originals["aug_seed"] = pd.NA
    parts = [originals] if augmented is None or augmented.empty else [originals, augmented]
    manifest = pd.concat(parts, ignore_index=True) if len(parts) > 1 else originals.reset_index(drop=True)
    manifest["image"] = manifest["split"] + "/" + manifest["label"] + "/" + manifest["isic_id"] + IMAGE_EXT
    manifest["split_order"] = manifest["split"].map({s: i for i, s in enumerate(SPLITS)})
    manifest = manifest.sort_values(["split_order", "label", "isic_id"], kind="stable").reset_index(drop=True)
    manifest = manifest[MANIFEST_COLUMNS].copy()
    for column in ("isic_id", "split", "label", "group_id", "source", "image", "augmented_from"):
        manifest[column] = manifest[column].astype(object)
    manifest["is_augmented"] = manifest["is_augmented"].astype(bool)
    manifest["aug_seed"] = pd.array(manifest["aug_seed"], dtype="Int64")
    return manifest


def _class_weights(manifest: pd.DataFrame, classes: tuple[str, ...], warnings: list[str]) -> dict[str, float]:
    """scikit-learn's "balanced" weights on train, n_samples / (n_classes * n_c), for the loss under ``none``.

    A class train lacks gets no weight (and a warning); n_classes then counts the classes train has,
    as scikit-learn defines it, so the weights still average to 1 over the train images.
    """
    labels = manifest.loc[manifest["split"] == "train", "label"].to_numpy(dtype=object)
    present = [label for label in classes if (labels == label).any()]
    for label in classes:
        if label not in present:
            warnings.append(f"no class weight for {label!r}: train has none of it")
    if not present:
        return {}
    # scikit-learn costs 2-4 s of imports: paid by the step that splits, not by every process that
    # loads the code location (the CLI, the daemon, each step of the multiprocess job).
    from sklearn.utils.class_weight import compute_class_weight

    values = compute_class_weight("balanced", classes=np.array(present, dtype=object), y=labels)
    return {label: round(float(value), 6) for label, value in zip(present, values, strict=True)}


def _warn_missing_classes(
    manifest: pd.DataFrame, classes: tuple[str, ...], config: SplitConfig, warnings: list[str]
) -> None:
    """Say so when a split with a positive ratio ends up without some class (too little data)."""
    counts = _split_class_counts(manifest, classes)
    for s, split in enumerate(SPLITS):
        if config.ratios[s] <= 0:
            continue
        missing = [c for c in classes if counts.loc[split, c] == 0]
        if missing:
            warnings.append(f"{split} has no image of {missing}")
