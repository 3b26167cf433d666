"""The demo mirror: a small, deterministic ISIC mirror in the real file formats.

Why it exists: the real sources are tens of gigabytes behind slow buckets, so tests and first runs
use this mirror instead. It is served over loopback HTTP and downloaded exactly like the real files,
so every byte of the pipeline (download, zip streaming, per-year harmonizing, merge, dedup) runs on
it. To be a fair stand-in it copies the real formats (names, headers, line endings, missing-value
spellings; docs/ISIC_SOURCES.md 1.2-1.5 and 2.2-2.5) and it plants every quirk the real data has, each
recorded in ``MIRROR.json`` under ``expected`` so tests can check the pipeline found it.

Determinism: the layout (ids, labels, quirks) comes from a fixed internal seed and never changes with
``seed``; ``seed`` only changes pixels, hence bytes. Each picture has its own Generator
(``synthetic.picture_rng``), zips have fixed timestamps, attributes and member order, and encoders
have fixed settings, so one seed gives byte-identical files on a given set of library versions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import random
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open, atomic_write_json, remove_stale_temporaries
from ..core.ids import isic_id_from_member
from . import isic2024, synthetic

GENERATOR_VERSION = "2"
MIRROR_FILE = "MIRROR.json"
CATALOG_ORDER = ("isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "archive")
# A fixed date inside the challenge era: zip headers carry no wall-clock time, so bytes repeat.
ZIP_DATE_TIME = (2020, 1, 1, 0, 0, 0)
# The layout is drawn from this fixed seed so ids, labels and counts are the same for every seed.
_LAYOUT_SEED = 20162020

BENIGN, MALIGNANT, INDETERMINATE, NO_LABEL = "benign", "malignant", "indeterminate", ""
CRLF, LF = "\r\n", "\n"

# File names (docs/ISIC_SOURCES.md 1.2) and the built-in catalog's demo paths.
PATH_2016_ZIP = "isic2016/ISBI2016_ISIC_Part3_Training_Data.zip"
PATH_2016_GT = "isic2016/ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
PATH_2017_ZIP = "isic2017/ISIC-2017_Training_Data.zip"
PATH_2017_GT = "isic2017/ISIC-2017_Training_Part3_GroundTruth.csv"
PATH_2018_ZIP = "isic2018/ISIC2018_Task3_Training_Input.zip"
PATH_2018_GT_ZIP = "isic2018/ISIC2018_Task3_Training_GroundTruth.zip"
PATH_2018_HAM = "isic2018/HAM10000_metadata.csv"
PATH_2019_ZIP = "isic2019/ISIC_2019_Training_Input.zip"
PATH_2019_GT = "isic2019/ISIC_2019_Training_GroundTruth.csv"
PATH_2019_META = "isic2019/ISIC_2019_Training_Metadata.csv"
PATH_2020_ZIP = "isic2020/ISIC_2020_Training_JPEG.zip"
PATH_2020_GT = "isic2020/ISIC_2020_Training_GroundTruth_v2.csv"
PATH_2020_DUPLICATES = "isic2020/ISIC_2020_Training_Duplicates.csv"
PATH_ARCHIVE_ZIP = "archive/ISIC-images.zip"

# Headers exactly as in the real files (checked against the real reference CSVs by test_demo_mirror.py).
HEADER_2017_GT = ("image_id", "melanoma", "seborrheic_keratosis")
HEADER_2017_META = ("image_id", "age_approximate", "sex")
HEADER_2018_GT = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
HEADER_HAM = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
HEADER_2019_GT = ("image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
HEADER_2019_META = ("image", "age_approx", "anatom_site_general", "lesion_id", "sex")
HEADER_2020_GT = (
    "image_name", "patient_id", "lesion_id", "sex", "age_approx",
    "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target",
)  # fmt: skip
HEADER_2020_DUPLICATES = ("image_name_1", "image_name_2")
ARCHIVE_LEADING_COLUMNS = ("isic_id", "attribution", "copyright_license")

# Harmonized benign_malignant per class, the rule the brief fixes for every year.
_BM_2019 = {
    "MEL": MALIGNANT, "BCC": MALIGNANT, "SCC": MALIGNANT, "AK": INDETERMINATE,
    "NV": BENIGN, "BKL": BENIGN, "DF": BENIGN, "VASC": BENIGN,
}  # fmt: skip
_BM_2018 = {"MEL": MALIGNANT, "BCC": MALIGNANT, "AKIEC": INDETERMINATE}  # anything else benign
_HAM_TO_2018 = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "akiec": "AKIEC",
    "bkl": "BKL",
    "df": "DF",
    "vasc": "VASC",
}
# HAM akiec became AK or SCC in 2019; the demo uses AK only so the one planted conflict stays the only one.
_HAM_TO_2019 = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "akiec": "AK",
    "bkl": "BKL",
    "df": "DF",
    "vasc": "VASC",
}
# HAM localization -> 2019 anatom_site_general, as the real 2019 metadata maps HAM rows.
_HAM_SITE_TO_2019 = {
    "back": "posterior torso", "trunk": "", "abdomen": "anterior torso", "chest": "anterior torso",
    "face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck",
    "upper extremity": "upper extremity", "hand": "upper extremity",
    "lower extremity": "lower extremity", "foot": "lower extremity",
    "acral": "palms/soles", "genital": "oral/genital", "unknown": "",
}  # fmt: skip
_SITES_2019 = (
    "anterior torso", "posterior torso", "lateral torso", "head/neck", "upper extremity",
    "lower extremity", "palms/soles", "oral/genital",
)  # fmt: skip
_SITE_2019_TO_2020 = {"anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso"}

SIZES_2016 = ((1022, 767), (1022, 767), (1504, 1129))
SIZE_HAM = (600, 450)
SIZE_BCN = (1024, 1024)
SIZES_MSK = ((1504, 1129), (1022, 767), (1936, 1296), (722, 542))
SIZES_2020 = ((1024, 682), (1024, 682), (1024, 682), (1024, 1024), (1872, 1053))
SIZE_2020_LARGE = (4000, 3000)
SIZES_ARCHIVE = ((1024, 768), (1504, 1129), (600, 450), (1024, 1024), (1200, 900))


# --------------------------------------------------------------------------------------------------
# The plan: what each file holds, before any pixel exists
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    """Recipe for one file's bytes; two members sharing a recipe are byte-identical.

    ``kind`` is how the bytes are made: ``jpeg``/``png``/``exif6`` from fresh pixels, ``downsampled``
    and ``near_duplicate`` from ``base``'s pixels, ``truncated`` from ``base``'s bytes, ``garbage``
    and ``superpixels`` from the picture's own Generator.
    """

    name: str
    width: int
    height: int
    kind: str = "jpeg"
    base: Picture | None = None
    quality: int = synthetic.JPEG_QUALITY

    @property
    def readable(self) -> bool:
        return self.kind not in ("truncated", "garbage")


@dataclass
class Listing:
    """What one source says about one image id: its picture (if any) and its harmonized label."""

    isic_id: str
    picture: Picture | None
    label: str
    written_as: str = ""
    has_row: bool = True

    def __post_init__(self) -> None:
        self.written_as = self.written_as or self.isic_id


@dataclass
class SourcePlan:
    """One source's files (zips as ordered member lists, other files as bytes) and its listings."""

    name: str
    files: dict[str, list[tuple[str, Picture | bytes]] | bytes]
    listings: list[Listing]
    facts: dict = field(default_factory=dict)


@dataclass
class _Case:
    """One lesion photo that may travel across years; ``dx`` is in the 2019 class vocabulary."""

    isic_id: str
    picture: Picture
    dx: str
    age: int | None = None
    sex: str = ""
    site: str = ""


class _Layout:
    """Fixed-seed choices shared by all sources, and the id registry that keeps ids unique."""

    def __init__(self) -> None:
        self.rng = random.Random(_LAYOUT_SEED)
        self._used: set[int] = set()

    def new_ids(self, count: int, low: int, high: int) -> list[str]:
        """``count`` unused ``ISIC_NNNNNNN`` ids drawn from ``[low, high)``, sorted."""
        chosen: set[int] = set()
        while len(chosen) < count:
            number = self.rng.randrange(low, high)
            if number not in self._used and number not in chosen:
                chosen.add(number)
        self._used |= chosen
        return [f"ISIC_{n:07d}" for n in sorted(chosen)]

    def public_id(self, prefix: str) -> str:
        """An archive-style remapped id (``IP_``/``IL_`` + 7 digits)."""
        return f"{prefix}_{self.rng.randrange(10**7):07d}"

    def age(self, missing_rate: float = 0.1) -> int | None:
        """An age rounded to 5 years like ``age_approx`` (None = missing)."""
        return None if self.rng.random() < missing_rate else 5 * self.rng.randrange(3, 18)

    def sex(self, missing_rate: float = 0.08) -> str:
        return "" if self.rng.random() < missing_rate else self.rng.choice(("male", "female"))

    def site(self, missing_rate: float = 0.1) -> str:
        return "" if self.rng.random() < missing_rate else self.rng.choice(_SITES_2019)


def _jpeg(name: str, size: tuple[int, int], kind: str = "jpeg") -> Picture:
    return Picture(name=name, width=size[0], height=size[1], kind=kind)


def _csv_bytes(header: Sequence[str] | None, rows: Iterable[Sequence[object]], newline: str) -> bytes:
    """CSV text as the real file writes it: minimal quoting, the given line ending, UTF-8, no BOM."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _flag(value: bool) -> str:
    return "1.0" if value else "0.0"


def _one_hot(header: Sequence[str], name: str, cls: str) -> list[str]:
    return [name] + [_flag(column == cls) for column in header[1:]]


def _text_or(value: object, missing: str) -> str:
    return missing if value in (None, "") else str(value)


# --------------------------------------------------------------------------------------------------
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
# ISIC Archive export (isic-cli layout, current metadata schema)
# --------------------------------------------------------------------------------------------------

# (weight, diagnosis_1, diagnosis_2, diagnosis_3, diagnosis_confirm_type, melanocytic)
_ARCHIVE_DIAGNOSES = (
    (18, "Benign", "Benign melanocytic proliferations", "Nevus", "serial imaging showing no change", True),
    (5, "Benign", "Benign epidermal proliferations", "Seborrheic keratosis", "single image expert consensus", False),
    (3, "Benign", "Flat melanotic pigmentations - not melanocytic nevus", "Solar lentigo", "", False),
    (10, "Benign", "", "", "", None),
    (2, "Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", "histopathology", True),
    (1, "Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma",
     "histopathology", False),
    (1, "Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, NOS", "histopathology", False),
    (2, "Indeterminate", "Indeterminate melanocytic proliferations", "Atypical melanocytic neoplasm",
     "histopathology", True),
    (1, "Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis", "", False),
    (7, "", "", "", "", None),
)  # fmt: skip
_ARCHIVE_SITES = {
    "Head and neck": ("Face", "Scalp", "Neck"),
    "Trunk": ("Anterior trunk", "Posterior trunk"),
    "Upper extremity": ("Upper arm", "Hand"),
    "Lower extremity": ("Thigh", "Foot"),
    "Anogenital region": ("",),
}
# (attribution, licence, images); the republished 2020 photo is re-attributed below.
_ARCHIVE_CONTRIBUTORS = (
    ("Memorial Sloan Kettering Cancer Center", "CC-BY", 19),
    ("Hospital Clínic de Barcelona", "CC-BY-NC", 13),
    ("ViDIR Group, Department of Dermatology, Medical University of Vienna", "CC-BY-NC", 7),
    ("Anonymous", "CC-0", 11),
)
_BM_ARCHIVE = {"Benign": BENIGN, "Malignant": MALIGNANT, "Indeterminate": INDETERMINATE, "": NO_LABEL}


def _archive_record(
    lay: _Layout, isic_id: str, picture: Picture, diagnosis: tuple, contributor: tuple
) -> dict:
    """One metadata.csv row; absent keys stay absent, as the API omits missing values (2.2)."""
    d1, d2, d3, confirm, melanocytic = diagnosis
    site_1 = lay.rng.choice(list(_ARCHIVE_SITES))
    values = {
        "isic_id": isic_id,
        "attribution": contributor[0],
        "copyright_license": contributor[1],
        "pixels_x": picture.width,
        "pixels_y": picture.height,
        "image_type": "dermoscopic",
        "dermoscopic_type": lay.rng.choice(("contact polarized", "contact non-polarized", "")),
        "age_approx": lay.age(0.15),
        "sex": lay.sex(0.15),
        "anatom_site_1": "" if lay.rng.random() < 0.12 else site_1,
        "diagnosis_1": d1,
        "diagnosis_2": d2,
        "diagnosis_3": d3,
        "diagnosis_confirm_type": confirm,
        "melanocytic": melanocytic,
        "patient_id": "" if lay.rng.random() < 0.3 else lay.public_id("IP"),
        "lesion_id": "" if lay.rng.random() < 0.3 else lay.public_id("IL"),
    }
    if values["anatom_site_1"]:
        values["anatom_site_2"] = lay.rng.choice(_ARCHIVE_SITES[site_1])
    return {key: value for key, value in values.items() if value not in (None, "")}


def _archive_pictures(lay: _Layout, ids: list[str], republished: _Row2020) -> list[Picture]:
    """Mixed sizes; one PNG, one JPEG with EXIF Orientation 6, one 2020 photo under a new id."""
    pictures = [_jpeg(isic_id, lay.rng.choice(SIZES_ARCHIVE)) for isic_id in ids]
    pictures[0] = republished.picture
    pictures[1] = Picture(ids[1], 640, 480, "png")
    pictures[2] = Picture(ids[2], 1024, 768, "exif6")
    return pictures


def _archive_records(lay: _Layout, republished: _Row2020) -> list[tuple[dict, Picture]]:
    diagnoses = [entry[1:] for entry in _ARCHIVE_DIAGNOSES for _ in range(entry[0])]
    contributors = [entry[:2] for entry in _ARCHIVE_CONTRIBUTORS for _ in range(entry[2])]
    ids = lay.new_ids(len(diagnoses), 0, 10_000_000)
    lay.rng.shuffle(ids)
    # The first three are the special pictures; all three are plain benign nevi, so dedup is label-neutral.
    lay.rng.shuffle(diagnoses)
    nevus = _ARCHIVE_DIAGNOSES[0][1:]
    for index in range(3):
        diagnoses.remove(nevus)
        diagnoses.insert(index, nevus)
    lay.rng.shuffle(contributors)
    pictures = _archive_pictures(lay, ids, republished)
    records = [
        (_archive_record(lay, i, p, d, c), p)
        for i, p, d, c in zip(ids, pictures, diagnoses, contributors, strict=True)
    ]
    # The republished 2020 photo keeps its patient, age and sex: the archive is where 2020 came from.
    first = records[0][0]
    first.update(
        {"attribution": "Anonymous", "copyright_license": "CC-BY-NC", "patient_id": republished.patient_id}
    )
    first.update({k: v for k, v in (("age_approx", republished.age), ("sex", republished.sex)) if v})
    return records


def _archive_metadata(records: list[dict]) -> bytes:
    """isic-cli's metadata.csv: 3 leading columns + the sorted union of keys, via csv.DictWriter (CRLF)."""
    keys = sorted({key for record in records for key in record} - set(ARCHIVE_LEADING_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, [*ARCHIVE_LEADING_COLUMNS, *keys])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode("utf-8")


def _attribution_text(records: list[dict]) -> bytes:
    """Attributions by image count, then name, with Anonymous last, blank-line separated (isic-cli)."""
    counts = Counter(record["attribution"] for record in records)
    order = sorted(counts, key=lambda name: (name == "Anonymous", -counts[name], name))
    return "\n\n".join(order).encode("utf-8")


def _plan_archive(lay: _Layout, republished: _Row2020) -> SourcePlan:
    """An ISIC Archive export: images at the top level, metadata.csv, attribution.txt, licenses/."""
    pairs = _archive_records(lay, republished)
    records = [record for record, _ in pairs]
    members: list[tuple[str, Picture | bytes]] = [
        (f"{record['isic_id']}.{'png' if picture.kind == 'png' else 'jpg'}", picture)
        for record, picture in pairs
    ]
    members += [
        ("metadata.csv", _archive_metadata(records)),
        ("attribution.txt", _attribution_text(records)),
        ("licenses/CC-0.txt", _LICENSE_CC_0),
        ("licenses/CC-BY.txt", _LICENSE_CC_BY),
        ("licenses/CC-BY-NC.txt", _LICENSE_CC_BY_NC),
    ]
    return SourcePlan(
        name="archive",
        files={PATH_ARCHIVE_ZIP: members},
        listings=[
            Listing(record["isic_id"], picture, _BM_ARCHIVE[record.get("diagnosis_1", "")])
            for record, picture in pairs
        ],
        facts={
            "exif_orientation": {records[2]["isic_id"]: 6},
            "png_ids": [records[1]["isic_id"]],
            "republished_from_isic2020": {records[0]["isic_id"]: republished.isic_id},
        },
    )


# Stand-ins for the licence and attribution files: the pipeline only has to skip them. The real
# licence files hold the full legal text, which is not reproduced here.
_LICENSE_CC_0 = (
    b"CC0 1.0 Universal (CC0 1.0) Public Domain Dedication\n\nDemo mirror stand-in for the licence text.\n"
)
_LICENSE_CC_BY = b"Attribution 4.0 International (CC BY 4.0)\n\nDemo mirror stand-in for the licence text.\n"
_LICENSE_CC_BY_NC = b"Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)\n\nDemo mirror stand-in for the licence text.\n"
_ATTRIBUTION_HAM = (
    b"HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna\n"
)
_ATTRIBUTION_2019 = (
    "BCN_20000 Dataset: (c) Department of Dermatology, Hospital Clínic de Barcelona\n"
    "HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna\n"
    "MSK Dataset: (c) Anonymous\n"
).encode()


def build_demo_plan() -> list[SourcePlan]:
    """Every source of the demo mirror in catalog order; pure layout, no pixels yet."""
    lay = _Layout()
    plan_2016, cases_2016, roles = _plan_isic2016(lay)
    plan_2017, cases_2017 = _plan_isic2017(lay, cases_2016, roles)
    plan_2018, ham = _plan_isic2018(lay)
    plan_2019, roles_2019 = _plan_isic2019(lay, cases_2016, cases_2017, ham, roles)
    plan_2020, roles_2020, republished = _plan_isic2020(lay)
    plan_archive = _plan_archive(lay, republished)
    plan_2016.facts["ids_without_gt_row"] = [roles["no_gt_row"]]
    plan_2019.facts["ids_missing_image"] = [roles_2019["missing_image"]]
    plan_2020.facts["images_4000x3000"] = roles_2020["large"].split(",")
    return [plan_2016, plan_2017, plan_2018, plan_2019, plan_2020, plan_archive]


# --------------------------------------------------------------------------------------------------
# Rendering and writing
# --------------------------------------------------------------------------------------------------


def _pixels(picture: Picture, seed: int) -> np.ndarray:
    return synthetic.synth_dermoscopy(
        synthetic.picture_rng(seed, picture.name), picture.width, picture.height
    )


def render_picture(picture: Picture, seed: int) -> bytes:
    """The bytes of one picture; depends only on the recipe and the seed."""
    rng = synthetic.picture_rng(seed, picture.name)
    kind = picture.kind
    if kind in ("jpeg", "exif6", "png"):
        pixels = synthetic.synth_dermoscopy(rng, picture.width, picture.height)
        if kind == "png":
            return synthetic.encode_png(pixels)
        return synthetic.encode_jpeg(pixels, picture.quality, exif_orientation=6 if kind == "exif6" else None)
    if kind == "downsampled":
        small = synthetic.downsample(_pixels(picture.base, seed), picture.width, picture.height)
        return synthetic.encode_jpeg(small, picture.quality)
    if kind == "near_duplicate":
        similar = synthetic.near_duplicate(rng, _pixels(picture.base, seed), picture.width, picture.height)
        return synthetic.encode_jpeg(similar, picture.quality)
    if kind == "truncated":
        return synthetic.truncate(render_picture(picture.base, seed))
    if kind == "garbage":
        return synthetic.garbage(rng, picture.width)
    if kind == "superpixels":
        return synthetic.synth_superpixels(rng, picture.width, picture.height)
    raise ValueError(f"unknown picture kind {kind!r}")


def _render_all(pictures: Iterable[Picture], seed: int) -> dict[Picture, bytes]:
    """Render each distinct picture once, in threads (cv2, numpy and Pillow release the GIL).

    Thread order cannot change any byte: each picture has its own Generator.
    """
    unique = list(dict.fromkeys(pictures))
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rendered = list(pool.map(lambda picture: render_picture(picture, seed), unique))
    return dict(zip(unique, rendered, strict=True))


def _zip_info(name: str) -> zipfile.ZipInfo:
    """Member header with fixed time, owner system and permissions: no trace of the machine or clock."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.create_system = 3
    info.external_attr = 0o644 << 16
    # Images are stored (they do not deflate, and storing keeps generating and reading cheap); text
    # members are deflated, so readers meet both methods.
    stored = name.lower().endswith((".jpg", ".jpeg", ".png"))
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    return info


def write_zip(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a deterministic zip atomically, members in the given order."""
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        for name, data in members:
            archive.writestr(_zip_info(name), data, compresslevel=6)


def _write_plan_files(dest: Path, plans: list[SourcePlan], rendered: dict[Picture, bytes]) -> None:
    for plan in plans:
        for rel, content in plan.files.items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path.parent)
            if isinstance(content, bytes):
                with atomic_open(path, "wb") as handle:
                    handle.write(content)
            else:
                write_zip(path, ((name, rendered[d] if isinstance(d, Picture) else d) for name, d in content))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_files(dest: Path, rel_paths: Iterable[str]) -> dict[str, dict]:
    return {
        rel: {"size": (dest / rel).stat().st_size, "sha256": sha256_file(dest / rel)}
        for rel in sorted(rel_paths)
    }


# --------------------------------------------------------------------------------------------------
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


class _UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {item: item for item in items}

    def find(self, item: str) -> str:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(b)] = self.find(a)


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
    groups = _UnionFind(readable)
    first_owner: dict[str, str] = {}
    for isic_id, hashes in sorted(readable.items()):
        for sha in hashes:
            groups.union(first_owner.setdefault(sha, isic_id), isic_id)
    for a, b in duplicate_pairs:
        if a in readable and b in readable:
            groups.union(a, b)
    components: dict[str, set[str]] = {}
    for isic_id in readable:
        components.setdefault(groups.find(isic_id), set()).add(isic_id)
    kept_labels = Counter()
    for members in components.values():
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
    }


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _current_description(dest: Path, kind: str, seed: int, params: dict) -> dict | None:
    """MIRROR.json if it describes this very mirror and every file still has its recorded size.

    Sizes only (no hashing): the fast path must cost a few stat calls, and a truncated or replaced
    download almost always changes the size.
    """
    try:
        description = json.loads((dest / MIRROR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted = {"generator_version": GENERATOR_VERSION, "kind": kind, "seed": seed, "params": params}
    if not isinstance(description, dict) or any(description.get(k) != v for k, v in wanted.items()):
        return None
    for rel, info in description.get("files", {}).items():
        try:
            if (dest / rel).stat().st_size != info["size"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return description


def _finish(dest: Path, kind: str, seed: int, params: dict, rel_paths: Iterable[str], expected: dict) -> dict:
    description = {
        "generator": "isic_assets.demo",
        "generator_version": GENERATOR_VERSION,
        "kind": kind,
        "seed": seed,
        "params": params,
        "files": _describe_files(dest, rel_paths),
        "expected": expected,
    }
    atomic_write_json(dest / MIRROR_FILE, description)
    # Return what a later fast path would read back, so both paths give equal dicts.
    return json.loads((dest / MIRROR_FILE).read_text(encoding="utf-8"))


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


def generate_demo_mirror(dest: Path, seed: int = 0) -> dict:
    """Write the demo mirror under ``dest`` (idempotent) and return its MIRROR.json description.

    If ``dest/MIRROR.json`` already describes this generator version and seed and every file has its
    recorded size, nothing is written. Otherwise the description is removed first (so a half-written
    mirror is never taken as complete), every file is rewritten atomically, and a new one is written.
    """
    dest = Path(dest)
    seed = _check_seed(seed)
    params = {"layout_seed": _LAYOUT_SEED}
    current = _current_description(dest, "demo", seed, params)
    if current is not None:
        return current
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MIRROR_FILE).unlink(missing_ok=True)
    remove_stale_temporaries(dest)
    plans = build_demo_plan()
    pictures = [d for plan in plans for c in plan.files.values() if not isinstance(c, bytes) for _, d in c]
    rendered = _render_all((d for d in pictures if isinstance(d, Picture)), seed)
    _write_plan_files(dest, plans, rendered)
    shas = {picture: hashlib.sha256(data).hexdigest() for picture, data in rendered.items()}
    expected = expected_facts(plans, shas)
    rel_paths = [rel for plan in plans for rel in plan.files]
    tiles, expected["isic2024"] = isic2024.write_demo_source(dest, seed)  # demo_isic2024, not in "demo"
    return _finish(dest, "demo", seed, params, rel_paths + tiles, expected)


# --------------------------------------------------------------------------------------------------
# Benchmark mirror
# --------------------------------------------------------------------------------------------------

_BENCH_BASES = 16
_BENCH_CLASSES = ("NV",) * 12 + ("BKL",) * 3 + ("MEL", "BCC", "AK", "DF", "VASC")
_BLOCK = 8
_DIGIT_BASE = 32


def _stamp(base: np.ndarray, number: int, digits: int) -> np.ndarray:
    """Copy of ``base`` with ``number`` written as flat 8x8 blocks, one grey level per base-32 digit.

    A flat block is one JPEG block whose DC level survives quantisation, so different numbers always
    encode to different bytes while the picture barely changes.
    """
    stamped = base.copy()
    for position in range(digits):
        number, digit = divmod(number, _DIGIT_BASE)
        x = position * _BLOCK
        stamped[:_BLOCK, x : x + _BLOCK] = 16 + 7 * digit
    return stamped


def _stamp_digits(n_images: int, size: tuple[int, int]) -> int:
    """How many stamp blocks make ``n_images`` distinct images; fails early if they do not fit."""
    digits = 1
    while _DIGIT_BASE**digits * _BENCH_BASES < n_images:
        digits += 1
    if digits * _BLOCK > size[0] or size[1] < _BLOCK:
        raise ValueError(f"size {size} is too small to stamp {n_images} distinct images")
    return digits


def _bench_images(
    n_images: int, seed: int, size: tuple[int, int], digits: int
) -> Iterable[tuple[str, bytes]]:
    bases = [
        synthetic.synth_dermoscopy(synthetic.picture_rng(seed, f"bench:{k}"), size[0], size[1])
        for k in range(_BENCH_BASES)
    ]
    for index in range(n_images):
        picture = _stamp(bases[index % _BENCH_BASES], index // _BENCH_BASES, digits)
        yield f"ISIC_{index:07d}", synthetic.encode_jpeg(picture)


def _bench_tables(n_images: int, seed: int) -> tuple[bytes, bytes, Counter]:
    """2019-format ground truth and metadata with random classes, lesions and some missing values."""
    rng = random.Random(seed)
    gt_rows, meta_rows, labels = [], [], Counter()
    lesion = ""
    for index in range(n_images):
        isic_id = f"ISIC_{index:07d}"
        cls = rng.choice(_BENCH_CLASSES)
        labels[_BM_2019[cls]] += 1
        if index % 3 == 0:
            lesion = "" if rng.random() < 0.1 else f"BCN_{rng.randrange(10**7):07d}"
        age = "" if rng.random() < 0.02 else 5 * rng.randrange(2, 18)
        sex = "" if rng.random() < 0.02 else rng.choice(("male", "female"))
        site = "" if rng.random() < 0.1 else rng.choice(_SITES_2019)
        gt_rows.append(_one_hot(HEADER_2019_GT, isic_id, cls))
        meta_rows.append((isic_id, age, site, lesion, sex))
    gt = _csv_bytes(HEADER_2019_GT, gt_rows, CRLF)
    return gt, _csv_bytes(HEADER_2019_META, meta_rows, CRLF), labels


def generate_bench_mirror(dest: Path, n_images: int, seed: int = 0, size: tuple[int, int] = (96, 72)) -> dict:
    """Write a one-source (2019 format) mirror of ``n_images`` small distinct JPEGs; return its description.

    For throughput benchmarks: 16 synthetic base pictures are reused, each copy stamped so its bytes
    differ, which makes tens of thousands of images in seconds. Same idempotent fast path as the demo.
    """
    dest = Path(dest)
    seed = _check_seed(seed)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    size = (int(size[0]), int(size[1]))
    digits = _stamp_digits(n_images, size)
    params = {"n_images": n_images, "size": list(size)}
    current = _current_description(dest, "bench", seed, params)
    if current is not None:
        return current
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MIRROR_FILE).unlink(missing_ok=True)
    remove_stale_temporaries(dest)
    folder = "ISIC_2019_Training_Input"
    members = (
        (f"{folder}/{isic_id}.jpg", data) for isic_id, data in _bench_images(n_images, seed, size, digits)
    )
    extras = [(f"{folder}/ATTRIBUTION.txt", _ATTRIBUTION_2019), (f"{folder}/LICENSE.txt", _LICENSE_CC_BY_NC)]
    (dest / "isic2019").mkdir(exist_ok=True)
    write_zip(dest / PATH_2019_ZIP, itertools.chain(extras, members))  # streamed, not held in memory
    gt, metadata, labels = _bench_tables(n_images, seed)
    with atomic_open(dest / PATH_2019_GT, "wb") as handle:
        handle.write(gt)
    with atomic_open(dest / PATH_2019_META, "wb") as handle:
        handle.write(metadata)
    expected = {
        "sources": {
            "isic2019": {
                "image_members": n_images,
                "non_image_members": len(extras),
                "rows": n_images,
                "label_counts": dict(sorted(labels.items())),
            }
        }
    }
    return _finish(dest, "bench", seed, params, [PATH_2019_ZIP, PATH_2019_GT, PATH_2019_META], expected)
