"""The plan of the demo mirror: file names, headers, sizes and the dataclasses that say what each
file holds before any pixel exists; shared by the per-format modules."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import synthetic

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

# Stand-ins for the licence and attribution files: the pipeline only has to skip them. The real
# licence files hold the full legal text, which is not reproduced here.
_LICENSE_CC_0 = (
    b"CC0 1.0 Universal (CC0 1.0) Public Domain Dedication\n\nDemo mirror stand-in for the licence text.\n"
)
_LICENSE_CC_BY = b"Attribution 4.0 International (CC BY 4.0)\n\nDemo mirror stand-in for the licence text.\n"
_LICENSE_CC_BY_NC = (
    b"Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)\n\nDemo mirror stand-in for the licence text.\n"
)
_ATTRIBUTION_HAM = (
    b"HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna\n"
)
_ATTRIBUTION_2019 = (
    "BCN_20000 Dataset: (c) Department of Dermatology, Hospital Clínic de Barcelona\n"
    "HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of Vienna\n"
    "MSK Dataset: (c) Anonymous\n"
).encode()
