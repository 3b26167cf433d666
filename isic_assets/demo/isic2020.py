"""The 2020 challenge source of the demo mirror, with its duplicates list."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import (
    _SITE_2019_TO_2020,
    BENIGN,
    CRLF,
    HEADER_2020_DUPLICATES,
    HEADER_2020_GT,
    MALIGNANT,
    PATH_2020_DUPLICATES,
    PATH_2020_GT,
    PATH_2020_ZIP,
    SIZE_2020_LARGE,
    SIZES_2020,
    Listing,
    Picture,
    SourcePlan,
    _csv_bytes,
    _jpeg,
    _Layout,
    _text_or,
)

# 2020
# --------------------------------------------------------------------------------------------------


@dataclass
class _Row2020:
    isic_id: str
    patient_id: str
    lesion_id: str
    sex: str
    age: int | None
    site: str
    diagnosis: str
    picture: Picture

    @property
    def target(self) -> int:
        return 1 if self.diagnosis == "melanoma" else 0


_BENIGN_2020_DIAGNOSES = (
    ["unknown"] * 250 + ["nevus"] * 42 + ["seborrheic keratosis"] * 7 + ["lentigo NOS"] * 5
    + ["lichenoid keratosis"] * 4 + ["solar lentigo"] * 2 + ["cafe-au-lait macule"]
)  # fmt: skip
_N_2020_MELANOMA = 9
_N_2020 = len(_BENIGN_2020_DIAGNOSES) + _N_2020_MELANOMA


def _patient_sizes(lay: _Layout, total: int) -> list[int]:
    """Images per patient, 1 to 8 (2020 has 2,056 patients for 33,126 images)."""
    sizes = [8, 1]
    while sum(sizes) < total:
        sizes.append(min(lay.rng.randint(1, 8), total - sum(sizes)))
    return sizes


def _rows_2020(lay: _Layout) -> list[_Row2020]:
    """320 images of patients with 1-8 images each; patient-level sex and age, some missing."""
    sizes = _patient_sizes(lay, _N_2020)
    ids = lay.new_ids(_N_2020, 2_000_000, 10_000_000)
    lay.rng.shuffle(ids)
    rows, position = [], 0
    for index, count in enumerate(sizes):
        patient = lay.public_id("IP")
        sex = "" if index == 4 else lay.rng.choice(("male", "female"))
        age = None if index == 6 else 5 * lay.rng.randrange(4, 18)
        for isic_id in ids[position : position + count]:
            size = lay.rng.choice(SIZES_2020)
            site = lay.site(0.02)
            rows.append(_Row2020(
                isic_id, patient, lay.public_id("IL"), sex, age, _SITE_2019_TO_2020.get(site, site), "",
                _jpeg(isic_id, size),
            ))  # fmt: skip
        position += count
    return rows


def _pick_duplicate_pairs(lay: _Layout, rows: list[_Row2020]) -> list[tuple[_Row2020, _Row2020]]:
    """8 pairs, each within one patient: the second photo re-encodes the first (one is a byte copy)."""
    by_patient: dict[str, list[_Row2020]] = {}
    for row in rows:
        by_patient.setdefault(row.patient_id, []).append(row)
    candidates = [images for images in by_patient.values() if len(images) >= 2]
    chosen = lay.rng.sample(candidates, 8)
    pairs = []
    for number, images in enumerate(chosen):
        first, second = images[0], images[1]
        if number == 0:
            second.picture = first.picture  # byte-identical, and listed
        else:
            size = (first.picture.width, first.picture.height)
            if number == 1:  # re-exported smaller as well
                size = (round(size[0] * 0.75), round(size[1] * 0.75))
            second.picture = Picture(f"near:{second.isic_id}", *size, "near_duplicate", first.picture, 87)
        second.site = first.site
        if number != 2:  # the real list: 417 of 425 pairs share a lesion_id
            second.lesion_id = first.lesion_id
        pairs.append((first, second))
    return pairs


def _label_2020(lay: _Layout, rows: list[_Row2020], pairs: list[tuple[_Row2020, _Row2020]]) -> dict[str, str]:
    """Diagnoses (one duplicate pair is a melanoma pair), and the special images' ids."""
    in_pairs = {r.isic_id for pair in pairs for r in pair}
    free = [r for r in rows if r.isic_id not in in_pairs]
    lay.rng.shuffle(free)
    roles = {"truncated": free[0].isic_id, "republished_in_archive": free[1].isic_id}
    large, melanoma = free[2:5], [*pairs[3]] + free[5 : 5 + _N_2020_MELANOMA - 2]
    for row in large:
        row.picture = _jpeg(row.isic_id, SIZE_2020_LARGE)
    free[1].picture = _jpeg(free[1].isic_id, (1024, 682))
    free[0].picture = Picture(f"truncated:{free[0].isic_id}", 0, 0, "truncated", free[0].picture)
    for row in melanoma:
        row.diagnosis = "melanoma"
    benign = [r for r in rows if not r.diagnosis and r.isic_id not in {p[1].isic_id for p in pairs}]
    diagnoses = list(_BENIGN_2020_DIAGNOSES)
    # The republished photo is a nevus: its archive copy carries a precise diagnosis.
    diagnoses.remove("nevus")
    lay.rng.shuffle(diagnoses)
    free[1].diagnosis = "nevus"
    # The list has one entry per benign image, but second photos of pairs copy their partner's
    # diagnosis below, so a few entries stay unused.
    for row, diagnosis in zip([r for r in benign if r is not free[1]], diagnoses, strict=False):
        row.diagnosis = diagnosis
    for first, second in pairs:
        second.diagnosis = first.diagnosis
    roles["large"] = ",".join(sorted(r.isic_id for r in large))
    return roles


def _plan_isic2020(lay: _Layout) -> tuple[SourcePlan, dict[str, str], _Row2020]:
    """SIIM-ISIC 2020: ~30:1 benign:malignant, patients, "unknown" diagnoses, a duplicates list."""
    rows = _rows_2020(lay)
    pairs = _pick_duplicate_pairs(lay, rows)
    roles = _label_2020(lay, rows, pairs)
    missing = [r for r in rows if r.diagnosis == ""]
    if missing:
        raise AssertionError(f"2020 rows left without a diagnosis: {missing[:3]}")
    members: list[tuple[str, Picture | bytes]] = sorted((f"train/{r.isic_id}.jpg", r.picture) for r in rows)
    ground_truth = _csv_bytes(
        HEADER_2020_GT,
        (
            (r.isic_id, r.patient_id, r.lesion_id, r.sex, _text_or(r.age, ""), r.site, r.diagnosis,
             "malignant" if r.target else "benign", r.target)
            for r in rows
        ),
        CRLF,
    )  # fmt: skip
    duplicates = _csv_bytes(HEADER_2020_DUPLICATES, ((a.isic_id, b.isic_id) for a, b in pairs), CRLF)
    plan = SourcePlan(
        name="isic2020",
        files={PATH_2020_ZIP: members, PATH_2020_GT: ground_truth, PATH_2020_DUPLICATES: duplicates},
        listings=[Listing(r.isic_id, r.picture, MALIGNANT if r.target else BENIGN) for r in rows],
        facts={"duplicate_pairs": [[a.isic_id, b.isic_id] for a, b in pairs]},
    )
    republished = next(r for r in rows if r.isic_id == roles["republished_in_archive"])
    return plan, roles, republished


# --------------------------------------------------------------------------------------------------
