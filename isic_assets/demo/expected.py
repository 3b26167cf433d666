"""The ``expected`` block of MIRROR.json: the facts a correct pipeline must reproduce."""

from __future__ import annotations

from collections import Counter

from ..core.components import connected_sets
from ..core.ids import isic_id_from_member
from .plan import BENIGN, CATALOG_ORDER, INDETERMINATE, MALIGNANT, NO_LABEL, Picture, SourcePlan

# Expected facts
# --------------------------------------------------------------------------------------------------


def _zip_member_counts(plan: SourcePlan) -> tuple[int, int]:
    """(image members, other file members) over the source's zips, as ``isic_id_from_member`` sees them."""
    images = others = 0
    for content in plan.files.values():
        if isinstance(content, bytes):
            continue
        for name, _ in content:
            if isic_id_from_member(name):
                images += 1
            else:
                others += 1
    return images, others


def _source_facts(plan: SourcePlan) -> dict:
    image_members, non_image_members = _zip_member_counts(plan)
    with_row = [entry for entry in plan.listings if entry.has_row]
    facts = {
        "catalog_name": f"demo_{plan.name}",
        "files": sorted(plan.files),
        "image_members": image_members,
        "non_image_members": non_image_members,
        "rows": len(with_row),
        "readable_images": sum(1 for e in plan.listings if e.picture is not None and e.picture.readable),
        "corrupt_ids": sorted(
            e.isic_id for e in plan.listings if e.picture is not None and not e.picture.readable
        ),
        "downsampled_ids": sorted(e.isic_id for e in plan.listings if e.written_as.endswith("_downsampled")),
        "ids_missing_image": [],
        "ids_without_gt_row": [],
        "label_counts": dict(sorted(Counter(e.label for e in with_row).items())),
    }
    facts.update(plan.facts)
    return facts


def _first_labels(plans: list[SourcePlan]) -> tuple[dict[str, str], list[dict]]:
    """Label per id from the first source in catalog order that labels it, and every disagreement."""
    labels: dict[str, dict[str, str]] = {}
    for plan in plans:
        for entry in plan.listings:
            if entry.has_row and entry.label:
                labels.setdefault(entry.isic_id, {})[plan.name] = entry.label
    conflicts = [
        {"isic_id": isic_id, "labels": by_source}
        for isic_id, by_source in sorted(labels.items())
        if len(set(by_source.values())) > 1
    ]
    return {isic_id: next(iter(by_source.values())) for isic_id, by_source in labels.items()}, conflicts


def _byte_identical_pairs(plans: list[SourcePlan], shas: dict[Picture, str]) -> list[dict]:
    """Pairs of different ids whose readable files are byte-identical, found from the actual hashes."""
    owners: dict[str, dict[str, str]] = {}
    for plan in plans:
        for entry in plan.listings:
            if entry.picture is not None and entry.picture.readable:
                owners.setdefault(shas[entry.picture], {}).setdefault(entry.isic_id, plan.name)
    pairs = []
    for sha, by_id in sorted(owners.items()):
        ids = sorted(by_id)
        for other in ids[1:]:
            pairs.append({"ids": [ids[0], other], "sources": [by_id[ids[0]], by_id[other]], "sha256": sha})
    return sorted(pairs, key=lambda pair: pair["ids"])


def _merged_facts(
    plans: list[SourcePlan], shas: dict[Picture, str], duplicate_pairs: list[list[str]]
) -> dict:
    """What the merge must end with: one kept image per id, per byte content, per listed duplicate."""
    labels, _ = _first_labels(plans)
    readable: dict[str, list[str]] = {}
    listed: set[str] = set()
    for plan in plans:
        for entry in plan.listings:
            listed.add(entry.isic_id)
            if entry.picture is not None and entry.picture.readable:
                readable.setdefault(entry.isic_id, []).append(shas[entry.picture])
    ids = sorted(readable)
    links: list[tuple[str, str]] = []
    first_owner: dict[str, str] = {}
    for isic_id in ids:
        for sha in readable[isic_id]:
            links.append((first_owner.setdefault(sha, isic_id), isic_id))
    links += list(duplicate_pairs)
    components = connected_sets(ids, links)
    kept_labels = Counter()
    for members in components:
        member_labels = {labels.get(isic_id, NO_LABEL) for isic_id in members}
        if len(member_labels) != 1:
            raise AssertionError(
                f"duplicates with different labels would make counts rule-dependent: {members}"
            )
        kept_labels[member_labels.pop()] += 1
    kept = len(components)
    counts = {label: kept_labels.get(label, 0) for label in (BENIGN, MALIGNANT, INDETERMINATE, NO_LABEL)}
    return {
        "catalog_order": list(CATALOG_ORDER),
        "listed_ids": len(listed),
        "ids_with_readable_image": len(readable),
        "ids_without_readable_image": sorted(listed - set(readable)),
        "kept_images": kept,
        "dropped_as_duplicates": len(readable) - kept,
        "benign_malignant": counts,
        "benign_per_malignant": round(counts[BENIGN] / max(1, counts[MALIGNANT]), 2),
        "rules": (
            "one image per id (after stripping _downsampled); one per byte-identical content; one per "
            "listed 2020 duplicate pair. Readable images without any ground-truth row are kept with an "
            "empty label. A conflicting id takes the label of the first source in catalog order that "
            "labels it (see label_conflicts). Rows without a readable image are not kept."
        ),
    }


def _cross_source_ids(plans: list[SourcePlan]) -> dict[str, int]:
    ids = {plan.name: {e.isic_id for e in plan.listings if e.picture is not None} for plan in plans}
    overlaps = {}
    for index, first in enumerate(CATALOG_ORDER):
        for second in CATALOG_ORDER[index + 1 :]:
            shared = len(ids[first] & ids[second])
            if shared:
                overlaps[f"{first}&{second}"] = shared
    return overlaps


def _unique_image_ids(plans: list[SourcePlan]) -> int:
    return len({e.isic_id for plan in plans for e in plan.listings if e.picture is not None})


#: The outcome every asset check must reach on the demo with default config, one entry per check
#: (asset, check name, passed, severity). The demo tests compare every check evaluation of a run
#: against this list, so a new or renamed check changes this list and nothing in the tests.
EXPECTED_CHECKS: tuple[dict, ...] = (
    {"asset": "merged_images", "check": "merged_images_readable", "passed": True, "severity": "ERROR"},
    # The demo is small: after undersampling by whole groups, validation and test would get fewer
    # than 10 images of a class, which this (non-blocking) check reports.
    {"asset": "merged_metadata", "check": "balanced_dataset_buildable", "passed": False, "severity": "ERROR"},
    {"asset": "merged_metadata", "check": "missing_data", "passed": True, "severity": "ERROR"},
    {"asset": "transformed_images", "check": "transformed_images_readable", "passed": True, "severity": "ERROR"},
    {"asset": "balanced_splits", "check": "split_class_balance", "passed": True, "severity": "ERROR"},
    {"asset": "balanced_splits", "check": "no_leakage", "passed": True, "severity": "ERROR"},
    {"asset": "balanced_splits", "check": "no_evaluation_leakage", "passed": True, "severity": "ERROR"},
    {"asset": "balanced_splits", "check": "split_proportions", "passed": True, "severity": "WARN"},
)


def expected_facts(plans: list[SourcePlan], shas: dict[Picture, str]) -> dict:
    """The ``expected`` block of MIRROR.json: ground truth the pipeline must reproduce."""
    sources = {plan.name: _source_facts(plan) for plan in plans}
    duplicate_pairs = sources["isic2020"]["duplicate_pairs"]
    _, conflicts = _first_labels(plans)
    return {
        "sources": sources,
        "unique_image_ids": _unique_image_ids(plans),
        "ids_in_several_sources": _cross_source_ids(plans),
        "byte_identical_pairs": _byte_identical_pairs(plans, shas),
        "duplicate_pairs": duplicate_pairs,
        "label_conflicts": conflicts,
        "label_conflict_id": conflicts[0]["isic_id"] if conflicts else None,
        "corrupt_ids": sorted(i for facts in sources.values() for i in facts["corrupt_ids"]),
        "merged": _merged_facts(plans, shas, duplicate_pairs),
        "checks": [dict(check) for check in EXPECTED_CHECKS],
    }


# --------------------------------------------------------------------------------------------------
