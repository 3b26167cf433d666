"""The 2016 and 2017 challenge sources of the demo mirror."""

from __future__ import annotations

from .plan import (
    _BM_2019,
    CRLF,
    HEADER_2017_GT,
    HEADER_2017_META,
    LF,
    NO_LABEL,
    PATH_2016_GT,
    PATH_2016_ZIP,
    PATH_2017_GT,
    PATH_2017_ZIP,
    SIZES_2016,
    Listing,
    Picture,
    SourcePlan,
    _Case,
    _csv_bytes,
    _flag,
    _jpeg,
    _Layout,
    _text_or,
)

# 2016 and 2017
# --------------------------------------------------------------------------------------------------


def _plan_isic2016(lay: _Layout) -> tuple[SourcePlan, list[_Case], dict[str, str]]:
    """50 photos, 5 melanomas; one image has no ground-truth row, a gap the merge must report."""
    ids = lay.new_ids(50, 0, 11_403)
    malignant = set(lay.rng.sample(ids, 5))
    cases = [
        _Case(
            isic_id=isic_id,
            picture=_jpeg(isic_id, lay.rng.choice(SIZES_2016)),
            dx="MEL" if isic_id in malignant else lay.rng.choice(("NV", "NV", "NV", "BKL")),
            age=lay.age(),
            sex=lay.sex(),
            site=lay.site(),
        )
        for isic_id in ids
    ]
    benign = [c for c in cases if c.dx != "MEL"]
    roles = {"no_gt_row": benign[7].isic_id, "label_conflict": benign[11].isic_id}
    benign[11].dx = "NV"  # benign here, MEL in 2019: the one planted label conflict
    rows = [
        (c.isic_id, "malignant" if c.dx == "MEL" else "benign")
        for c in cases
        if c.isic_id != roles["no_gt_row"]
    ]
    folder = "ISBI2016_ISIC_Part3_Training_Data"
    plan = SourcePlan(
        name="isic2016",
        files={
            PATH_2016_ZIP: [(f"{folder}/{c.isic_id}.jpg", c.picture) for c in cases],
            # The real training ground truth has no header and CRLF line endings.
            PATH_2016_GT: _csv_bytes(None, rows, CRLF),
        },
        listings=[
            Listing(
                c.isic_id,
                c.picture,
                NO_LABEL if c.isic_id == roles["no_gt_row"] else _BM_2019[c.dx],
                has_row=c.isic_id != roles["no_gt_row"],
            )
            for c in cases
        ],
    )
    return plan, cases, roles


def _plan_isic2017(
    lay: _Layout, cases_2016: list[_Case], roles: dict[str, str]
) -> tuple[SourcePlan, list[_Case]]:
    """15 photos shared with 2016 (same bytes) plus 25 new; a superpixel PNG beside every photo."""
    eligible = [c for c in cases_2016 if c.isic_id not in roles.values()]
    shared = [c for c in eligible if c.dx == "MEL"][:2]
    shared += lay.rng.sample([c for c in eligible if c.dx != "MEL"], 13)
    new_dx = ["MEL"] * 4 + ["BKL"] * 5 + ["NV"] * 16
    lay.rng.shuffle(new_dx)
    new_cases = [
        _Case(
            isic_id, _jpeg(isic_id, lay.rng.choice(SIZES_2016)), dx, lay.age(0.15), lay.sex(0.12), lay.site()
        )
        for isic_id, dx in zip(lay.new_ids(25, 12_000, 16_000), new_dx, strict=True)
    ]
    cases = sorted(shared + new_cases, key=lambda c: c.isic_id)
    folder = "ISIC-2017_Training_Data"
    members: list[tuple[str, Picture | bytes]] = []
    for c in cases:
        members.append((f"{folder}/{c.isic_id}.jpg", c.picture))
        superpixels = Picture(f"superpixels:{c.isic_id}", c.picture.width, c.picture.height, "superpixels")
        members.append((f"{folder}/{c.isic_id}_superpixels.png", superpixels))
    # 2017 spells a missing value "unknown" (docs/ISIC_SOURCES.md 1.2); both 2017 CSVs use LF.
    metadata = _csv_bytes(
        HEADER_2017_META, ((c.isic_id, _text_or(c.age, "unknown"), c.sex or "unknown") for c in cases), LF
    )
    members.append((f"{folder}/ISIC-2017_Training_Data_metadata.csv", metadata))
    members.sort(key=lambda member: member[0])
    ground_truth = _csv_bytes(
        HEADER_2017_GT, ((c.isic_id, _flag(c.dx == "MEL"), _flag(c.dx == "BKL")) for c in cases), LF
    )
    plan = SourcePlan(
        name="isic2017",
        files={PATH_2017_ZIP: members, PATH_2017_GT: ground_truth},
        listings=[Listing(c.isic_id, c.picture, _BM_2019[c.dx]) for c in cases],
    )
    return plan, cases


# --------------------------------------------------------------------------------------------------
