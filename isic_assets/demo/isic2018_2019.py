"""The 2018 (HAM10000) and 2019 challenge sources of the demo mirror."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import (
    _ATTRIBUTION_2019,
    _ATTRIBUTION_HAM,
    _BM_2018,
    _BM_2019,
    _HAM_SITE_TO_2019,
    _HAM_TO_2018,
    _HAM_TO_2019,
    _LICENSE_CC_BY_NC,
    BENIGN,
    CRLF,
    HEADER_2018_GT,
    HEADER_2019_GT,
    HEADER_2019_META,
    HEADER_HAM,
    LF,
    PATH_2018_GT_ZIP,
    PATH_2018_HAM,
    PATH_2018_ZIP,
    PATH_2019_GT,
    PATH_2019_META,
    PATH_2019_ZIP,
    SIZE_BCN,
    SIZE_HAM,
    SIZES_MSK,
    Listing,
    Picture,
    SourcePlan,
    _Case,
    _csv_bytes,
    _jpeg,
    _Layout,
    _one_hot,
    _text_or,
)

# 2018 (HAM10000)
# --------------------------------------------------------------------------------------------------


@dataclass
class _HamRow:
    lesion_id: str
    isic_id: str
    dx: str
    dx_type: str
    age: int | None
    sex: str
    localization: str
    picture: Picture


_HAM_LESION_DX = ["nv"] * 27 + ["bkl"] * 5 + ["mel"] * 4 + ["bcc"] * 2 + ["akiec"] * 2 + ["df", "vasc"]
_HAM_LOCALIZATIONS = (
    "back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot",
    "neck", "scalp", "hand", "ear", "genital", "acral",
)  # fmt: skip


def _ham_dx_type(lay: _Layout, dx: str) -> str:
    if dx in ("mel", "bcc", "akiec"):
        return "histo"
    return lay.rng.choice(("histo", "follow_up", "follow_up", "consensus", "confocal"))


def _ham_rows(lay: _Layout) -> list[_HamRow]:
    """60 images of 42 lesions: HAM photographs a lesion up to several times (7,470 lesions, 10,015 images)."""
    group_sizes = [1] * 28 + [2] * 10 + [3] * 4
    lesion_dx = list(_HAM_LESION_DX)
    lay.rng.shuffle(group_sizes)
    lay.rng.shuffle(lesion_dx)
    ids = iter(lay.new_ids(sum(group_sizes), 24_306, 34_321))
    rows = []
    for index, (size, dx) in enumerate(zip(group_sizes, lesion_dx, strict=True)):
        age = None if index in (3, 17) else 5 * lay.rng.randrange(2, 18)
        sex = "unknown" if index in (5, 17) else lay.rng.choice(("male", "female"))
        place = "unknown" if index in (8, 17, 30) else lay.rng.choice(_HAM_LOCALIZATIONS)
        lesion = f"HAM_{lay.rng.randrange(10**7):07d}"
        dx_type = _ham_dx_type(lay, dx)
        for _ in range(size):
            isic_id = next(ids)
            rows.append(_HamRow(lesion, isic_id, dx, dx_type, age, sex, place, _jpeg(isic_id, SIZE_HAM)))
    return rows


def _ham_csv(rows: list[_HamRow]) -> bytes:
    """HAM10000_metadata.csv: age as a float ("80.0") or empty, "unknown" sex and site, LF endings."""
    ordered = sorted(rows, key=lambda r: (r.dx, r.lesion_id, r.isic_id))
    return _csv_bytes(
        HEADER_HAM,
        (
            (r.lesion_id, r.isic_id, r.dx, r.dx_type, "" if r.age is None else f"{float(r.age):.1f}", r.sex,
             r.localization)
            for r in ordered
        ),
        LF,
    )  # fmt: skip


def _plan_isic2018(lay: _Layout) -> tuple[SourcePlan, list[_HamRow]]:
    """Task 3 = HAM10000: 600x450 photos, a one-hot ground truth zipped on its own, HAM metadata."""
    rows = _ham_rows(lay)
    ordered = sorted(rows, key=lambda r: r.isic_id)
    folder = "ISIC2018_Task3_Training_Input"
    images: list[tuple[str, Picture | bytes]] = [(f"{folder}/{r.isic_id}.jpg", r.picture) for r in ordered]
    images += [(f"{folder}/ATTRIBUTION.txt", _ATTRIBUTION_HAM), (f"{folder}/LICENSE.txt", _LICENSE_CC_BY_NC)]
    images.sort(key=lambda member: member[0])
    gt_folder = "ISIC2018_Task3_Training_GroundTruth"
    # The official GT CSV was not seen (docs/ISIC_SOURCES.md 1.2); CRLF like the other 2018/2019 CSVs.
    gt_csv = _csv_bytes(
        HEADER_2018_GT, (_one_hot(HEADER_2018_GT, r.isic_id, _HAM_TO_2018[r.dx]) for r in ordered), CRLF
    )
    ground_truth: list[tuple[str, Picture | bytes]] = [
        (f"{gt_folder}/ISIC2018_Task3_Training_GroundTruth.csv", gt_csv),
        (f"{gt_folder}/LICENSE.txt", _LICENSE_CC_BY_NC),
    ]
    plan = SourcePlan(
        name="isic2018",
        files={PATH_2018_ZIP: images, PATH_2018_GT_ZIP: ground_truth, PATH_2018_HAM: _ham_csv(rows)},
        listings=[Listing(r.isic_id, r.picture, _BM_2018.get(_HAM_TO_2018[r.dx], BENIGN)) for r in ordered],
    )
    return plan, rows


# --------------------------------------------------------------------------------------------------
# 2019
# --------------------------------------------------------------------------------------------------


@dataclass
class _Row2019:
    name: str
    isic_id: str
    cls: str
    age: int | None
    site: str
    lesion_id: str
    sex: str
    picture: Picture | None


def _downsampled_picture(original: Picture) -> Picture:
    """A smaller re-encoded copy, long side at most 1024 px, like 2019's ``_downsampled`` MSK images."""
    scale = min(0.75, 1024 / max(original.width, original.height))
    return Picture(
        name=f"downsampled:{original.name}",
        width=round(original.width * scale),
        height=round(original.height * scale),
        kind="downsampled",
        base=original,
        quality=85,
    )


def _rows_2019_from_older(
    lay: _Layout, cases_2016: list[_Case], cases_2017: list[_Case], roles: dict[str, str]
) -> list[_Row2019]:
    """Every 2017 id, 25 more 2016 ids (8 renamed ``_downsampled``) and the planted label conflict."""
    in_2017 = {c.isic_id for c in cases_2017}
    others = [c for c in cases_2016 if c.isic_id not in in_2017 and c.isic_id not in roles.values()]
    picked = sorted(lay.rng.sample(others, 24), key=lambda c: c.isic_id)
    downsampled = {c.isic_id for c in picked[::3]}
    conflict = next(c for c in cases_2016 if c.isic_id == roles["label_conflict"])
    rows = []
    for c in [*cases_2017, *picked, conflict]:
        cls = "MEL" if c.isic_id == roles["label_conflict"] else c.dx
        if c.isic_id in downsampled:
            empty = len(rows) % 2 == 0  # the real file has rows such as "ISIC_0000080_downsampled,,,,"
            rows.append(_Row2019(
                f"{c.isic_id}_downsampled", c.isic_id, cls, None if empty else c.age, "" if empty else c.site,
                "", "" if empty else c.sex, _downsampled_picture(c.picture),
            ))  # fmt: skip
        else:
            rows.append(_Row2019(c.isic_id, c.isic_id, cls, c.age, c.site, "", c.sex, c.picture))
    return rows


def _rows_2019_from_ham(ham: list[_HamRow]) -> list[_Row2019]:
    """Every HAM image, same bytes; sex "unknown" and site become empty, as in the real 2019 file."""
    return [
        _Row2019(
            r.isic_id, r.isic_id, _HAM_TO_2019[r.dx], r.age, _HAM_SITE_TO_2019[r.localization], r.lesion_id,
            "" if r.sex == "unknown" else r.sex, r.picture,
        )
        for r in ham
    ]  # fmt: skip


def _lesion_groups(lay: _Layout, classes: list[str], pairs: int) -> list[tuple[str, int]]:
    """(class, images) per lesion: ``pairs`` lesions photographed twice, the rest once."""
    twice = set(lay.rng.sample(range(len(classes)), pairs))
    return [(cls, 2 if index in twice else 1) for index, cls in enumerate(classes)]


def _rows_2019_bcn(lay: _Layout) -> tuple[list[_Row2019], dict[str, str]]:
    """70 BCN_20000 photos (1024x1024) of 60 lesions, plus the garbage member and the missing image."""
    classes = (
        ["NV"] * 36
        + ["BKL"] * 8
        + ["DF"] * 2
        + ["VASC"] * 2
        + ["MEL"] * 5
        + ["BCC"] * 3
        + ["SCC"]
        + ["AK"] * 3
    )
    lay.rng.shuffle(classes)
    groups = _lesion_groups(lay, classes, 10)
    ids = iter(lay.new_ids(sum(n for _, n in groups) + 2, 53_000, 73_300))
    rows = []
    for cls, count in groups:
        lesion = f"BCN_{lay.rng.randrange(10**7):07d}"
        age, sex, site = lay.age(0.03), lay.sex(0.03), lay.site(0.08)
        for _ in range(count):
            isic_id = next(ids)
            rows.append(_Row2019(isic_id, isic_id, cls, age, site, lesion, sex, _jpeg(isic_id, SIZE_BCN)))
    garbage_id, missing_id = next(ids), next(ids)
    garbage = Picture(f"garbage:{garbage_id}", 24_000, 0, "garbage")  # width = number of bytes
    rows.append(_Row2019(garbage_id, garbage_id, "NV", 45, "anterior torso", "BCN_0000001", "male", garbage))
    rows.append(_Row2019(missing_id, missing_id, "NV", 60, "lower extremity", "BCN_0000002", "female", None))
    return rows, {"garbage_member": garbage_id, "missing_image": missing_id}


def _rows_2019_msk(lay: _Layout) -> list[_Row2019]:
    """20 MSK photos of varied sizes: 8 named ``_downsampled`` (smaller), half with no lesion_id."""
    classes = ["NV"] * 13 + ["BKL"] * 2 + ["MEL"] * 3 + ["BCC"] + ["AK"]
    lay.rng.shuffle(classes)
    ids = lay.new_ids(len(classes), 9_000, 16_500)
    rows = []
    lesion = ""
    for index, (isic_id, cls) in enumerate(zip(ids, classes, strict=True)):
        # Lesions of two photos, then two photos with no lesion_id, repeated.
        if index % 4 == 0:
            lesion = f"MSK4_{lay.rng.randrange(10**7):07d}"
        elif index % 4 == 2:
            lesion = ""
        size = lay.rng.choice(SIZES_MSK)
        if index % 5 in (1, 3):
            name, picture = f"{isic_id}_downsampled", _jpeg(isic_id, (1024, round(1024 * size[1] / size[0])))
        else:
            name, picture = isic_id, _jpeg(isic_id, size)
        rows.append(_Row2019(name, isic_id, cls, lay.age(0.2), lay.site(0.2), lesion, lay.sex(0.15), picture))
    return rows


def _plan_isic2019(
    lay: _Layout, cases_2016: list[_Case], cases_2017: list[_Case], ham: list[_HamRow], roles: dict[str, str]
) -> tuple[SourcePlan, dict[str, str]]:
    """2019 = older challenge photos + all of HAM + BCN_20000 + MSK, with 2019's own quirks."""
    rows = _rows_2019_from_older(lay, cases_2016, cases_2017, roles) + _rows_2019_from_ham(ham)
    bcn, roles_2019 = _rows_2019_bcn(lay)
    rows += bcn + _rows_2019_msk(lay)
    rows.sort(key=lambda r: r.name)
    folder = "ISIC_2019_Training_Input"
    members: list[tuple[str, Picture | bytes]] = [
        (f"{folder}/{r.name}.jpg", r.picture) for r in rows if r.picture is not None
    ]
    members += [
        (f"{folder}/ATTRIBUTION.txt", _ATTRIBUTION_2019),
        (f"{folder}/LICENSE.txt", _LICENSE_CC_BY_NC),
    ]
    members.sort(key=lambda member: member[0])
    ground_truth = _csv_bytes(HEADER_2019_GT, (_one_hot(HEADER_2019_GT, r.name, r.cls) for r in rows), CRLF)
    metadata = _csv_bytes(
        HEADER_2019_META, ((r.name, _text_or(r.age, ""), r.site, r.lesion_id, r.sex) for r in rows), CRLF
    )
    plan = SourcePlan(
        name="isic2019",
        files={PATH_2019_ZIP: members, PATH_2019_GT: ground_truth, PATH_2019_META: metadata},
        listings=[Listing(r.isic_id, r.picture, _BM_2019[r.cls], written_as=r.name) for r in rows],
    )
    return plan, roles_2019


# --------------------------------------------------------------------------------------------------
