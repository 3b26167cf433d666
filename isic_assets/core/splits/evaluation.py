"""Official evaluation sets held out of training: which images they are, and who must leave the pool.

An image is an evaluation image when a selected source with ``purpose: evaluation`` listed it (the
merged ``sources`` column), or when the merge dropped an evaluation copy as a duplicate of it. The
merge orders evaluation sources first, so for a shared id or identical bytes the evaluation copy and
its label are the ones kept (core/sources/catalog.py).

Every other image in the leakage group of an evaluation image (patient, lesion, content, listed
duplicate, near-duplicate: core/splits/grouping.py) leaves the training pool. Each one is listed in
``evaluation_overlap.csv`` with an evaluation image it is linked to and the most direct reason:
``identical_content``, ``listed_duplicate``, ``near_duplicate``, ``same_lesion``, ``same_patient``, or
``same_group`` when only a chain of links joins them. Images that are in an evaluation source and a
training source under the same id are listed with ``same_id``; training copies the merge already
dropped as duplicates of an evaluation image are listed with the merge's reason, so the overlap table
counts every kind (the cross-set table of docs/ISIC_SOURCES.md 5.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .assign import IMAGE_EXT, MANIFEST_COLUMNS, map_labels
from .checks import original_ids
from .grouping import LINK_COLUMNS, build_groups, clean_keys, link_keys, stripped_text

EVALUATION_SPLIT = "evaluation"
OVERLAP_COLUMNS = ["isic_id", "source", "evaluation_isic_id", "evaluation_source", "reason", "group_id"]


def evaluation_columns(label_column: str) -> tuple[str, ...]:
    """The metadata columns the hold-out and the evaluation leakage check read (ids, sources, label,
    link keys); the evaluation folders' per-image metadata is read for their rows only."""
    return ("isic_id", label_column, "source", "sources", *LINK_COLUMNS)
# Most direct first: the reason reported for a training image linked to an evaluation image in several ways.
# ``unlabelled_evaluation``: an evaluation image whose label maps to no class; not written, still held out.
REASONS = ("same_id", "identical_content", "listed_duplicate", "near_duplicate", "same_lesion", "same_patient",
           "same_group", "unlabelled_evaluation")
_KEY_REASON = {"sha256": "identical_content", "lesion_id": "same_lesion", "patient_id": "same_patient"}


@dataclass(frozen=True)
class Holdout:
    """The evaluation images to write, the training images that leave the pool, and why."""

    manifest: pd.DataFrame  # MANIFEST_COLUMNS, split = evaluation, image = <source>/<class>/<id>.jpg
    overlap: pd.DataFrame  # OVERLAP_COLUMNS
    held_out_ids: frozenset[str]  # every id the training pool must not contain
    unlabelled: list[str] = field(default_factory=list)  # evaluation ids whose label maps to no class

    def reason_counts(self) -> dict[str, int]:
        counts = self.overlap["reason"].value_counts()
        return {reason: int(counts.get(reason, 0)) for reason in REASONS}

    def summary(self) -> dict[str, Any]:
        per_source = self.manifest.groupby("source").size() if len(self.manifest) else pd.Series(dtype=int)
        return {
            "evaluation_images": len(self.manifest),
            "per_source": {str(k): int(v) for k, v in per_source.items()},
            "held_out_of_training": len(self.held_out_ids),
            "overlap_by_reason": self.reason_counts(),
            "unlabelled_left_out": len(self.unlabelled),
        }


def source_cells(metadata: pd.DataFrame) -> pd.Series:
    """The ``;``-joined ``sources`` cell of each row (the row's ``source`` when absent), as text.

    Kept as text and split only for the rows that need it: a list per row is about 100 bytes an
    image, twice over, at 400,000 images (docs/PERFORMANCE.md "ISIC 2024 at archive scale")."""
    column = "sources" if "sources" in metadata.columns else "source"
    if column not in metadata.columns:
        return pd.Series("", index=metadata.index, dtype=object)
    return clean_keys(metadata[column])


def _names_in(cell: str, keep: Callable[[str], bool]) -> list[str]:
    return [s for s in cell.split(";") if s and keep(s)]


def evaluation_members(
    metadata: pd.DataFrame, duplicates: pd.DataFrame | None, evaluation_sources: Iterable[str]
) -> tuple[pd.Series, set[str]]:
    """(evaluation sources per kept id, kept ids standing in for a dropped evaluation copy).

    Read from raw keys only (the merged ``sources`` column and ``duplicates.csv``'s ``source``), so
    the leakage check can use it without trusting anything the holdout wrote.
    """
    names = set(evaluation_sources)
    if not names:  # nothing is an evaluation image; no row of the table needs to be looked at
        return pd.Series([], dtype=object), set()
    column = "sources" if "sources" in metadata.columns else "source"
    raw = stripped_text(metadata[column]) if column in metadata.columns else pd.Series("", index=metadata.index)
    # Only a cell naming an evaluation source somewhere can list one; clean and split just those rows.
    maybe = raw.str.contains("|".join(re.escape(n) for n in sorted(names)), regex=True).to_numpy(dtype=bool)
    ids = clean_keys(metadata["isic_id"][maybe])
    listed = pd.Series([_names_in(cell, names.__contains__) for cell in clean_keys(raw[maybe])],
                       index=ids.to_numpy(), dtype=object)
    stand_ins: set[str] = set()
    if duplicates is not None and len(duplicates) and "source" in duplicates.columns:
        dropped_eval = clean_keys(duplicates["source"]).isin(names)
        kept = set(clean_keys(duplicates.loc[dropped_eval, "kept_isic_id"]))
        if kept:
            present = stripped_text(metadata["isic_id"]).isin(sorted(kept)).to_numpy(dtype=bool)
            stand_ins = set(clean_keys(metadata["isic_id"][present]))
    return listed[listed.map(len) > 0], stand_ins


def hold_out(
    metadata: pd.DataFrame,
    duplicates: pd.DataFrame | None,
    near_duplicates: pd.DataFrame | None,
    evaluation_sources: Iterable[str],
    *,
    label_column: str = "benign_malignant",
    class_map: Mapping[str, str] | None = None,
) -> Holdout:
    """Decide the evaluation sets and the training images that share a leakage group with them.

    ``class_map`` must be validated (``SplitConfig.class_map``): the evaluation folders use the same
    class names as the splits, so one model's label indices mean the same thing on both.
    """
    names = list(dict.fromkeys(evaluation_sources))
    class_map = dict(class_map or {"benign": "benign", "malignant": "malignant"})
    ids = clean_keys(metadata["isic_id"])
    listed, stand_ins = evaluation_members(metadata, duplicates, names)
    eval_ids = set(listed.index) | stand_ins
    if not eval_ids:
        return Holdout(_empty_manifest(), pd.DataFrame(columns=OVERLAP_COLUMNS), frozenset())
    groups = build_groups(metadata, duplicates, near_duplicates)
    eval_groups = set(groups.reindex(sorted(eval_ids)))
    leaving = sorted(i for i, g in groups.items() if g in eval_groups and i not in eval_ids)
    # The training sources of the only rows the overlap names: evaluation images and those leaving.
    needed = ids.isin(set(listed.index) | set(leaving)).to_numpy()
    training_sources = {i: _names_in(cell, lambda n: n not in names)
                        for i, cell in zip(ids[needed], source_cells(metadata)[needed], strict=True)}
    overlap = _overlap_rows(metadata, ids, duplicates, near_duplicates, groups, eval_ids, leaving,
                            training_sources, listed, names)
    manifest, unlabelled = _evaluation_manifest(metadata, ids, listed, stand_ins, groups, names,
                                                label_column, class_map)
    if unlabelled:
        extra = pd.DataFrame([_row(i, "", i, listed[i][0] if i in listed.index else names[0], "unlabelled_evaluation",
                                   groups) for i in unlabelled], columns=OVERLAP_COLUMNS)
        overlap = pd.concat([overlap, extra], ignore_index=True)
    return Holdout(manifest, overlap, frozenset(eval_ids | set(leaving)), unlabelled)


def _empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in MANIFEST_COLUMNS})


def _evaluation_manifest(metadata, ids, listed, stand_ins, groups, names, label_column, class_map):
    """One row per (evaluation source, image); an image in two evaluation sets is written to both."""
    if label_column not in metadata.columns:
        raise ValueError(f"metadata has no label column {label_column!r}; evaluation images need a label")
    labels = pd.Series(map_labels(metadata[label_column], class_map).to_numpy(), index=ids)
    labels = labels[~labels.index.duplicated(keep="first")]
    rows, unlabelled = [], []
    # A stand-in (kept training id whose evaluation copy the merge dropped) is written under the
    # evaluation set of the dropped copy: same bytes or a listed duplicate of it.
    members = {i: list(v) for i, v in listed.items()}
    for isic_id in sorted(stand_ins - set(members)):
        members[isic_id] = [names[0]]
    for isic_id, sources in sorted(members.items()):
        label = labels.get(isic_id, "")
        if not label:
            unlabelled.append(isic_id)
            continue
        for source in sources:
            rows.append({"isic_id": isic_id, "split": EVALUATION_SPLIT, "label": label,
                         "group_id": groups[isic_id], "source": source,
                         "image": f"{source}/{label}/{isic_id}{IMAGE_EXT}", "is_augmented": False,
                         "augmented_from": "", "aug_seed": pd.NA})
    if not rows:
        return _empty_manifest(), unlabelled
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    order = {n: k for k, n in enumerate(names)}
    manifest["_order"] = manifest["source"].map(order)
    manifest = manifest.sort_values(["_order", "label", "isic_id"], kind="stable").drop(columns="_order")
    manifest["aug_seed"] = pd.array(manifest["aug_seed"], dtype="Int64")
    return manifest.reset_index(drop=True), unlabelled


def _overlap_rows(metadata, ids, duplicates, near_duplicates, groups, eval_ids, leaving, training_sources,
                  listed, names) -> pd.DataFrame:
    eval_source = {i: (listed[i][0] if i in listed.index else names[0]) for i in eval_ids}
    rows: list[dict[str, Any]] = []
    # Same id in an evaluation and a training source: the evaluation copy won in the merge.
    for isic_id in sorted(listed.index):
        trained_in = training_sources.get(isic_id, [])
        if trained_in:
            rows.append(_row(isic_id, ";".join(trained_in), isic_id, eval_source[isic_id], "same_id", groups))
    # Training copies the merge dropped in favour of an evaluation image.
    if duplicates is not None and len(duplicates):
        blank = pd.Series("", index=duplicates.index)
        dup_source = clean_keys(duplicates["source"]) if "source" in duplicates.columns else blank
        reason = clean_keys(duplicates["reason"]) if "reason" in duplicates.columns else blank
        for dropped, kept, src, why in zip(clean_keys(duplicates["isic_id"]), clean_keys(duplicates["kept_isic_id"]),
                                           dup_source, reason, strict=True):
            if kept in eval_ids and src not in names and dropped != kept:
                why = why if why in ("identical_content", "listed_duplicate") else "listed_duplicate"
                rows.append(_row(dropped, src, kept, eval_source[kept], why, groups))
    direct = _direct_links(metadata, ids, duplicates, near_duplicates, eval_ids)
    members_of: dict[str, list[str]] = {}
    for isic_id in sorted(eval_ids):
        members_of.setdefault(groups[isic_id], []).append(isic_id)
    for isic_id in leaving:
        found = direct.get(isic_id)
        partner, why = found if found else (members_of[groups[isic_id]][0], "same_group")
        rows.append(_row(isic_id, ";".join(training_sources.get(isic_id, [])), partner, eval_source[partner], why,
                         groups))
    frame = pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
    return frame.sort_values(["evaluation_isic_id", "isic_id", "reason"], kind="stable").reset_index(drop=True)


def _row(isic_id, source, evaluation_id, evaluation_source, reason, groups) -> dict[str, Any]:
    return {"isic_id": isic_id, "source": source, "evaluation_isic_id": evaluation_id,
            "evaluation_source": evaluation_source, "reason": reason, "group_id": groups.get(evaluation_id, "")}


def _direct_links(metadata, ids, duplicates, near_duplicates, eval_ids) -> dict[str, tuple[str, str]]:
    """For each id directly linked to an evaluation image: (that image, the most direct reason).

    Linear in the rows: each key value held by an evaluation image maps to its smallest such id, and
    only rows sharing one of those values are paired (a patient with 400 tiles costs 400 rows, not
    400 squared).
    """
    keys = link_keys(metadata, clean_keys(metadata["isic_id"]))
    is_eval = keys["isic_id"].isin(eval_ids)
    parts = []
    for column, reason in _KEY_REASON.items():
        held = keys[is_eval & (keys[column] != "")].sort_values("isic_id")
        first_eval = held.drop_duplicates(column).set_index(column)["isic_id"]
        others = keys[~is_eval & keys[column].isin(first_eval.index)]
        parts.append(pd.DataFrame({"a": others["isic_id"].to_numpy(),
                                   "b": first_eval.reindex(others[column]).to_numpy(), "reason": reason}))
    for table, left_col, right_col, reason in ((duplicates, "isic_id", "kept_isic_id", "listed_duplicate"),
                                               (near_duplicates, "isic_id_a", "isic_id_b", "near_duplicate")):
        if table is None or not len(table):
            continue
        left, right = clean_keys(table[left_col]).to_numpy(), clean_keys(table[right_col]).to_numpy()
        parts.append(pd.DataFrame({"a": left, "b": right, "reason": reason}))
        parts.append(pd.DataFrame({"a": right, "b": left, "reason": reason}))
    pairs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["a", "b", "reason"])
    pairs = pairs[pairs["b"].isin(eval_ids) & ~pairs["a"].isin(eval_ids)].copy()
    pairs["rank"] = pairs["reason"].map({r: k for k, r in enumerate(REASONS)})
    pairs = pairs.sort_values(["a", "rank", "b"], kind="stable").drop_duplicates("a")
    return {a: (b, reason) for a, b, reason in zip(pairs["a"], pairs["b"], pairs["reason"], strict=True)}


def evaluation_leakage(
    split_manifest: pd.DataFrame,
    metadata: pd.DataFrame,
    duplicates: pd.DataFrame | None,
    near_duplicates: pd.DataFrame | None,
    evaluation_sources: Iterable[str],
) -> tuple[list[dict[str, Any]], int]:
    """Training-side images (train/validation/test) linked to an evaluation image: (offences, checked).

    Re-derived from raw keys: evaluation membership from the merged ``sources`` column and
    ``duplicates.csv``; direct links from the ids, patient, lesion and content keys and the pair
    tables; chains of links through the connected components of those same keys. Each offence names
    the split image, the evaluation image and the link.
    """
    placed = pd.DataFrame({"isic_id": original_ids(split_manifest).to_numpy(),
                           "split": clean_keys(split_manifest["split"]).to_numpy()}).drop_duplicates("isic_id")
    listed, stand_ins = evaluation_members(metadata, duplicates, evaluation_sources)
    eval_ids = set(listed.index) | stand_ins
    offences: list[dict[str, Any]] = []
    if not eval_ids:
        return offences, len(placed)
    direct = _direct_links(metadata, clean_keys(metadata["isic_id"]), duplicates, near_duplicates, eval_ids)
    groups = build_groups(metadata, duplicates, near_duplicates)
    eval_group = {groups[i]: i for i in sorted(eval_ids, reverse=True)}
    for isic_id, split in zip(placed["isic_id"], placed["split"], strict=True):
        if isic_id in eval_ids:
            offences.append({"isic_id": isic_id, "split": split, "evaluation_isic_id": isic_id, "link": "same_id"})
        elif isic_id in direct:
            partner, why = direct[isic_id]
            offences.append({"isic_id": isic_id, "split": split, "evaluation_isic_id": partner, "link": why})
        elif groups.get(isic_id) in eval_group:
            offences.append({"isic_id": isic_id, "split": split,
                             "evaluation_isic_id": eval_group[groups[isic_id]], "link": "same_group"})
    return offences, len(placed)
