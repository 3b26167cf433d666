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
from .pool import ID, PlanPool, pool_from_frame

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
    pool = pool_from_frame(metadata, config.label_column)
    if ID not in pool:
        return assign_pool(pool, np.zeros(len(pool), dtype=np.int64), np.empty(0, dtype=object), config)
    group_of = groups.reindex(clean_keys(metadata["isic_id"]).to_numpy())
    codes, names = pd.factorize(group_of.astype(object), sort=True)  # missing: -1, no group
    names = np.asarray([str(name) for name in names], dtype=object)
    return assign_pool(pool, codes.astype(np.int64), names, config)


def assign_pool(pool: PlanPool, group_of: np.ndarray, group_names: np.ndarray, config: SplitConfig) -> SplitPlan:
    """Plan the splits of ``pool`` (one row per kept image): ``group_of`` numbers each row's leakage
    group (-1: none), ``group_names`` are the group ids in ascending order (``grouping.group_codes``).

    The rows are held as integer codes (``_Rows``) and text is made only for the rows the manifest
    names: at archive scale that is a few hundred of 401,059 images (docs/PERFORMANCE.md "The stages
    after the merge").
    """
    keep, other_types = _image_type_rows(pool, config.image_types)
    if keep is not None:
        pool, group_of = pool.take(keep), group_of[keep]
    rows, unmapped = _labelled_rows(pool, group_of, config)
    classes = config.classes
    present = [c for i, c in enumerate(classes) if (rows.label == i).any()]
    if len(present) < 2:
        raise ValueError(
            f"{config.label_column!r} maps to {present or 'no class'} only; a classifier needs at least two "
            f"of {list(classes)} (unmapped values: {unmapped})"
        )
    rows.split = _assign_groups(rows, classes, config)
    assigned = _split_class_table(rows, classes)
    capped = _apply_cap(rows, classes, config) if config.cap_per_class is not None else 0
    undersampled = _undersample(rows, classes, config) if config.strategy == "undersample" else 0
    kept = _kept_text(rows, pool, group_names, classes)
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
    keep, left_out = _image_type_rows(pool_from_frame(metadata, ""), image_types)
    return (metadata, 0) if keep is None else (metadata.loc[keep].reset_index(drop=True), left_out)


def _image_type_rows(pool: PlanPool, image_types: tuple[str, ...]) -> tuple[np.ndarray | None, int]:
    """``select_image_types`` on a pool: the mask of rows kept (None: every row) and how many were left out."""
    if not image_types:
        return None, 0
    if "image_type" not in pool:
        raise ValueError("image_types was given but the metadata has no image_type column; re-run merge_sources")
    codes, distinct = pool.codes("image_type")
    values = clean_keys(distinct)
    present = sorted(set(values.to_numpy()[np.unique(codes)]))
    keep = values.isin(image_types).to_numpy()[codes]
    if not keep.any():
        raise ValueError(f"no image has image_type {list(image_types)}; the merged data has {present}")
    return keep, int((~keep).sum())


@dataclass
class _Rows:
    """The labelled images as integer columns, sorted by isic_id: ``position`` in the pool, class
    index ``label``, ``group`` (its number orders the groups as their ids), ``split`` index into
    SPLITS (-1 before assignment) and ``kept`` (False once capped or undersampled away)."""

    position: np.ndarray
    label: np.ndarray
    group: np.ndarray
    split: np.ndarray
    kept: np.ndarray


def _labelled_rows(pool: PlanPool, group_of: np.ndarray, config: SplitConfig) -> tuple[_Rows, dict[str, int]]:
    """Rows with a mapped class, sorted by isic_id, plus the unmapped counts by original value."""
    for column in (ID, config.label_column):
        if column not in pool:
            raise ValueError(f"metadata has no {column!r} column")
    ids = pool.ids
    order = np.argsort(ids, kind="stable")
    repeated = ids[order][1:] == ids[order][:-1]
    if repeated.any():
        examples = sorted({v.decode("utf-8") for v in ids[order][1:][repeated].tolist()})[:5]
        raise ValueError(f"metadata repeats isic_ids, e.g. {examples}")
    if (group_of < 0).any():
        missing = [v.decode("utf-8") for v in ids[group_of < 0].tolist()]
        raise ValueError(f"groups has no group for {len(missing)} images, e.g. {missing[:5]}")
    codes, distinct = pool.codes(config.label_column)
    index_of = {c: i for i, c in enumerate(config.classes)}
    class_of_value = np.array([index_of.get(c, -1) for c in map_labels(distinct, config.class_map)], dtype=np.int16)
    label = class_of_value[codes] if len(codes) else np.empty(0, dtype=np.int16)
    unmapped = unmapped_counts(codes, distinct, class_of_value < 0)
    order = order[label[order] >= 0]
    n = len(order)
    rows = _Rows(position=order, label=label[order], group=group_of[order],
                 split=np.full(n, -1, dtype=np.int8), kept=np.ones(n, dtype=bool))
    return rows, unmapped


def unmapped_counts(codes: np.ndarray, distinct: pd.Series, unmapped: np.ndarray) -> dict[str, int]:
    """Rows per cleaned original value (``(empty)`` for none) among the values ``unmapped`` marks,
    sorted by value: what the split metadata reports as ``unmapped_values``."""
    per_value = np.bincount(codes, minlength=len(distinct)) if len(codes) else np.zeros(len(distinct), np.int64)
    counts: dict[str, int] = {}
    for value, n, left_out in zip(clean_keys(distinct), per_value.tolist(), unmapped.tolist(), strict=True):
        if left_out and n:
            key = value or "(empty)"
            counts[key] = counts.get(key, 0) + n
    return {str(k): int(v) for k, v in sorted(counts.items())}


def _split_class_table(rows: _Rows, classes: tuple[str, ...]) -> pd.DataFrame:
    """Rows per split x class (``_split_class_counts`` of the rows as they are now)."""
    cells = np.bincount(rows.split.astype(np.int64) * len(classes) + rows.label,
                        minlength=len(SPLITS) * len(classes)).reshape(len(SPLITS), len(classes))
    return pd.DataFrame(cells.astype("int64"), index=pd.Index(list(SPLITS), name="split"),
                        columns=pd.Index(list(classes), name="label"))


def _assign_groups(rows: _Rows, classes: tuple[str, ...], config: SplitConfig) -> np.ndarray:
    """Split per row: whole groups, largest first, each to the split that best keeps the targets.

    The cost of a split is sum over classes of (count - target)^2 / target (a chi-square distance),
    so a class's deviation weighs more where its target is small: the minority class is stratified
    as carefully as the majority. Adding a group goes to the split whose cost rises least; on a tie
    the earlier split (train first) wins. Groups of equal size are visited in a seeded order, which
    is what makes two seeds give two different splits.
    """
    groups, group_index = np.unique(rows.group, return_inverse=True)  # in the order of their ids
    table = np.zeros((len(groups), len(classes)), dtype=np.int64)
    np.add.at(table, (group_index, rows.label), 1)
    rng = np.random.default_rng([config.seed, _STAGE_ORDER])
    tie_break = rng.permutation(len(table))
    order = np.lexsort((tie_break, -table.sum(axis=1)))
    counts = table[order].tolist()
    totals = table.sum(axis=0)
    active = [s for s, r in enumerate(config.ratios) if r > 0]
    targets = [[config.ratios[s] * t for t in totals] for s in range(len(SPLITS))]
    current = [[0.0] * len(classes) for _ in SPLITS]
    chosen = np.empty(len(order), dtype=np.int8)
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
    split_of_group = np.empty(len(groups), dtype=np.int8)
    split_of_group[order] = chosen
    return split_of_group[group_index]


def share_by_ratios(total: int, ratios: tuple[float, ...]) -> list[int]:
    """Split an integer by ratios so the parts sum exactly to it (largest remainder, ties to the first)."""
    raw = [total * r for r in ratios]
    parts = [math.floor(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _apply_cap(rows: _Rows, classes: tuple[str, ...], config: SplitConfig) -> int:
    """Keep at most the split's share of ``cap_per_class`` per class, choosing whole groups."""
    assert config.cap_per_class is not None
    shares = share_by_ratios(config.cap_per_class, config.ratios)
    dropped = 0
    for s in range(len(SPLITS)):
        for c in range(len(classes)):
            dropped += _reduce_class(rows, s, c, shares[s], [config.seed, _STAGE_CAP, s, c])
    return dropped


def _undersample(rows: _Rows, classes: tuple[str, ...], config: SplitConfig) -> int:
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
        in_split = rows.kept & (rows.split == s)
        sizes = [int((in_split & (rows.label == c)).sum()) for c in range(len(classes))]
        if not any(sizes):
            continue
        target = min(sizes)
        for c in range(len(classes)):
            before = rows.kept & (rows.split == s) & (rows.label == c)
            seed = [config.seed, _STAGE_UNDERSAMPLE, s, c]
            dropped += _reduce_class(rows, s, c, target, seed)
            dropped -= _top_up(rows, before, target, seed)  # whole groups missed by far: single images
    return dropped


# How far below the minority whole groups may leave a majority class before single images top it
# up: the class_balance check's default tolerance (core/splits/checks.py), so a plan whole groups
# cannot balance is never handed to a check that would block it.
WHOLE_GROUP_SLACK = 0.1


def _top_up(rows: _Rows, before: np.ndarray, target: int, seed: list[int]) -> int:
    """Bring ``before``'s kept rows to ``target`` with single images when whole groups missed it by
    more than ``WHOLE_GROUP_SLACK``; return how many rows were kept again (negative: dropped more).

    When every group of a class is larger than the target (ISIC 2024: about 385 tiles a patient, a
    few dozen malignant tiles per split), whole groups keep none of the class, or one group far
    over. Splits are already assigned by group, so keeping part of a group leaks nothing; the
    sample is seeded.
    """
    now = before & rows.kept
    kept = int(now.sum())
    rng = np.random.default_rng([*seed, 1])
    if kept * (1.0 + WHOLE_GROUP_SLACK) < target:
        pool = np.flatnonzero(before & ~rows.kept)
        take = rng.choice(pool, size=min(target - kept, len(pool)), replace=False)
        rows.kept[np.sort(take)] = True
        return len(take)
    if kept > target * (1.0 + WHOLE_GROUP_SLACK):
        pool = np.flatnonzero(now)
        drop = rng.choice(pool, size=kept - target, replace=False)
        rows.kept[np.sort(drop)] = False
        return -len(drop)
    return 0


def _reduce_class(rows: _Rows, split: int, label: int, target: int, seed: list[int]) -> int:
    """Unmark rows of (split, label) so about ``target`` remain, whole groups at a time; return drops."""
    chosen = rows.kept & (rows.split == split) & (rows.label == label)
    if int(chosen.sum()) <= target:
        return 0
    groups, sizes = np.unique(rows.group[chosen], return_counts=True)  # in the order of their ids
    keep = choose_whole_groups(sizes, target, np.random.default_rng(seed))
    drop = chosen & np.isin(rows.group, groups[~keep])
    rows.kept[drop] = False
    return int(drop.sum())


def _kept_text(rows: _Rows, pool: PlanPool, group_names: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """The kept rows as text (isic_id, label, group_id, source, split), sorted by isic_id: the
    manifest's originals."""
    position = rows.position[rows.kept]
    if "source" in pool:
        codes, distinct = pool.codes("source")
        source = clean_keys(distinct).to_numpy(dtype=object)[codes[position]]
    else:
        source = np.full(len(position), "", dtype=object)
    return pd.DataFrame(
        {
            "isic_id": [v.decode("utf-8") for v in pool.ids[position].tolist()],
            "label": np.asarray(classes, dtype=object)[rows.label[rows.kept]],
            "group_id": group_names[rows.group[rows.kept]],
            "source": source,
            "split": np.asarray(SPLITS, dtype=object)[rows.split[rows.kept]],
        }
    )


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
