"""Two small evaluation sources of the demo mirror, shaped like the ISBI 2016 test set and the ISIC 2017
validation set, overlapping the demo training sources in every way the real sets do.

``demo_isic2016_test`` (format isic2016: ground truth without header, ``0.0``/``1.0``, CRLF):
fresh images, one image under the id of a 2016 training image (same bytes), one new id with the bytes
of another 2016 training image, and one new id that is a re-exported copy (near-duplicate) of a third.
``demo_isic2017_validation`` (format isic2017: metadata CSV inside the zip): fresh images, the id of a
HAM (demo 2018) image whose lesion has other images, and the id of a 2020 image whose patient has
other images, so their lesion- and patient-mates must leave the training pool.

They are not in the ``demo`` group (``demo_evaluation`` selects them), so the default demo stays
as fast as before; their facts are in MIRROR.json under ``expected.evaluation``.
"""

from __future__ import annotations

import io

import pandas as pd

from .plan import (
    BENIGN,
    CRLF,
    HEADER_2017_GT,
    HEADER_2017_META,
    LF,
    MALIGNANT,
    PATH_2016_GT,
    PATH_2018_HAM,
    PATH_2020_GT,
    SIZES_2016,
    Picture,
    SourcePlan,
    _csv_bytes,
    _flag,
    _jpeg,
)
from .writing import render_picture

PATH_2016_TEST_ZIP = "isic2016_test/ISBI2016_ISIC_Part3_Test_Data.zip"
PATH_2016_TEST_GT = "isic2016_test/ISBI2016_ISIC_Part3_Test_GroundTruth.csv"
PATH_2017_VAL_ZIP = "isic2017_validation/ISIC-2017_Validation_Data.zip"
PATH_2017_VAL_GT = "isic2017_validation/ISIC-2017_Validation_Part3_GroundTruth.csv"
# Fresh evaluation ids come from a range the demo training sources never draw from (checked below).
_FRESH_BASE = 9_100_000


def _listing_by_id(plan: SourcePlan) -> dict[str, tuple[Picture, str]]:
    return {e.isic_id: (e.picture, e.label) for e in plan.listings
            if e.picture is not None and e.picture.readable and e.has_row and e.label in (BENIGN, MALIGNANT)}


def _table(plan: SourcePlan, rel: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(plan.files[rel]), dtype=str, keep_default_na=False)  # type: ignore[arg-type]


def plan_evaluation_sources(plans: list[SourcePlan], conflicts: set[str]) -> tuple[list[SourcePlan], dict]:
    """The two evaluation sources (files and pictures) and the overlaps planted in them."""
    by_name = {p.name: p for p in plans}
    used = {e.isic_id for p in plans for e in p.listings}
    shared_elsewhere = {e.isic_id for p in plans if p.name != "isic2016" for e in p.listings}
    # 2016 training images that are nowhere else, so each planted overlap has exactly one reason.
    only_2016 = sorted(i for i in _listing_by_id(by_name["isic2016"]) if i not in shared_elsewhere | conflicts)
    gt_2016 = pd.read_csv(io.BytesIO(by_name["isic2016"].files[PATH_2016_GT]), header=None, dtype=str)  # type: ignore[arg-type]
    only_2016 = [i for i in only_2016 if i in set(gt_2016[0])]
    train_2016 = _listing_by_id(by_name["isic2016"])
    fresh = iter(f"ISIC_{_FRESH_BASE + n:07d}" for n in range(100))
    same_id, twin_of, near_of = only_2016[0], only_2016[1], only_2016[2]
    twin_id, near_id = next(fresh), next(fresh)
    test_cases: list[tuple[str, Picture, str]] = [
        (same_id, *train_2016[same_id]),
        (twin_id, *train_2016[twin_of]),
    ]
    base, label = train_2016[near_of]
    test_cases.append((near_id, Picture(f"near:{near_id}", base.width, base.height, "near_duplicate", base, 87),
                       label))
    for n, cls in enumerate((MALIGNANT, BENIGN, BENIGN, MALIGNANT, BENIGN)):
        isic_id = next(fresh)
        test_cases.append((isic_id, _jpeg(isic_id, SIZES_2016[n % len(SIZES_2016)]), cls))

    lesion_id, lesion_mates = _lesion_with_mates(by_name["isic2018"], conflicts)
    patient_id, patient_mates = _patient_with_mates(by_name["isic2020"], conflicts)
    ham, y2020 = _listing_by_id(by_name["isic2018"]), _listing_by_id(by_name["isic2020"])
    val_cases = [(lesion_mates[0], *ham[lesion_mates[0]]), (patient_mates[0], *y2020[patient_mates[0]])]
    for n, cls in enumerate((BENIGN, MALIGNANT, BENIGN)):
        isic_id = next(fresh)
        val_cases.append((isic_id, _jpeg(isic_id, SIZES_2016[n % len(SIZES_2016)]), cls))
    clash = sorted({c[0] for c in test_cases + val_cases if c[0].startswith("ISIC_91")} & used)
    if clash:
        raise AssertionError(f"fresh evaluation ids collide with training ids: {clash}")

    test_plan = SourcePlan(
        name="isic2016_test",
        files={
            PATH_2016_TEST_ZIP: [(f"ISBI2016_ISIC_Part3_Test_Data/{i}.jpg", p) for i, p, _ in sorted(test_cases)],
            # Like the training ground truth: no header; the test file spells labels 0.0/1.0.
            PATH_2016_TEST_GT: _csv_bytes(None, [(i, _flag(c == MALIGNANT)) for i, _, c in sorted(test_cases)], CRLF),
        },
        listings=[],
    )
    folder = "ISIC-2017_Validation_Data"
    members: list[tuple[str, Picture | bytes]] = [(f"{folder}/{i}.jpg", p) for i, p, _ in sorted(val_cases)]
    members.append((f"{folder}/ISIC-2017_Validation_Data_metadata.csv",
                    _csv_bytes(HEADER_2017_META, [(i, "unknown", "unknown") for i, _, _ in sorted(val_cases)], LF)))
    val_plan = SourcePlan(
        name="isic2017_validation",
        files={
            PATH_2017_VAL_ZIP: sorted(members, key=lambda m: m[0]),
            PATH_2017_VAL_GT: _csv_bytes(HEADER_2017_GT, [(i, _flag(c == MALIGNANT), _flag(False))
                                                          for i, _, c in sorted(val_cases)], LF),
        },
        listings=[],
    )
    facts = {
        "sources": {"demo_isic2016_test": sorted(i for i, _, _ in test_cases),
                    "demo_isic2017_validation": sorted(i for i, _, _ in val_cases)},
        "labels": {i: c for i, _, c in test_cases + val_cases},
        "same_id": sorted([same_id, lesion_mates[0], patient_mates[0]]),
        "identical_content": {"evaluation": twin_id, "training": twin_of},
        "near_duplicate": {"evaluation": near_id, "training": near_of},
        "same_lesion": {"lesion_id": lesion_id, "evaluation": lesion_mates[0], "training": lesion_mates[1:]},
        "same_patient": {"patient_id": patient_id, "evaluation": patient_mates[0], "training": patient_mates[1:]},
    }
    return [test_plan, val_plan], facts


def _lesion_with_mates(ham_plan: SourcePlan, conflicts: set[str]) -> tuple[str, list[str]]:
    """A HAM lesion with 2+ labelled images and nothing else linking them; its ids, first one evaluated."""
    table = _table(ham_plan, PATH_2018_HAM)
    usable = _listing_by_id(ham_plan)
    table = table[table["image_id"].isin(usable) & ~table["image_id"].isin(conflicts)]
    for lesion_id, rows in sorted(table.groupby("lesion_id"), key=lambda kv: kv[0]):
        ids = sorted(rows["image_id"])
        if len(ids) >= 2 and len({usable[i][1] for i in ids}) == 1:
            return str(lesion_id), ids
    raise AssertionError("the demo HAM source has no lesion with two labelled images")


def _patient_with_mates(plan_2020: SourcePlan, conflicts: set[str]) -> tuple[str, list[str]]:
    """A 2020 patient with 2-6 labelled images; its ids, the first one evaluated."""
    table = _table(plan_2020, PATH_2020_GT)
    usable = _listing_by_id(plan_2020)
    table = table[table["image_name"].isin(usable) & ~table["image_name"].isin(conflicts)]
    for patient_id, rows in sorted(table.groupby("patient_id"), key=lambda kv: kv[0]):
        ids = sorted(rows["image_name"])
        if 2 <= len(ids) <= 6 and usable[ids[0]][0].width <= 2000:
            return str(patient_id), ids
    raise AssertionError("the demo 2020 source has no patient with 2-6 labelled images")


def render_evaluation_pictures(plans: list[SourcePlan], rendered: dict[Picture, bytes], seed: int) -> None:
    """Add the evaluation sources' pictures not already rendered (fresh ones and near-duplicates)."""
    for plan in plans:
        for content in plan.files.values():
            if isinstance(content, bytes):
                continue
            for _, picture in content:
                if isinstance(picture, Picture) and picture not in rendered:
                    rendered[picture] = render_picture(picture, seed)
