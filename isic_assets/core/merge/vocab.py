"""Mapping tables that bring every ISIC release's vocabulary to one vocabulary per column.

Each year spells the same facts differently (docs/ISIC_SOURCES.md 1.4): 2016 writes ``benign`` in training
and ``0.0`` in test, 2017-2019 use one-hot float columns, HAM10000 uses 15 fine-grained body sites,
2020 does not split the torso, and the current archive replaced ``benign_malignant``/``diagnosis``/
``anatom_site_general`` by the hierarchies ``diagnosis_1..5``/``anatom_site_1..5`` (docs/ISIC_SOURCES.md
2.3). Everything here is a plain constant so docs/HARMONIZATION.md can render it (:func:`mapping_rows`,
:func:`granularity_rows`, :func:`render_markdown`) and the harmonizers in the ``harmonize`` package only look
values up.

Decisions taken deliberately
----------------------------
**Actinic keratosis (2019 ``AK``) -> ``indeterminate``.** The ISIC diagnosis hierarchy files
"Solar or actinic keratosis" under ``Indeterminate:Indeterminate epidermal proliferations``
(isic-metadata : ``isic_metadata/diagnosis_hierarchical.py``), i.e. its ``diagnosis_1`` is
Indeterminate, neither Benign nor Malignant. We follow the archive rather than invent a side.

**HAM10000 / 2018 ``AKIEC`` -> ``indeterminate`` with its own diagnosis
``actinic keratosis / intraepithelial carcinoma``.** The class is "Actinic keratosis / Bowen's disease
(intraepithelial carcinoma)" (stade ``landing/2018/47.html``): it mixes AK (Indeterminate in the
hierarchy) with Bowen's disease, which the hierarchy files as
``Malignant:Malignant epidermal proliferations:Squamous cell carcinoma in situ`` . A single label for
the mixed class can therefore not honestly say "malignant" for the AK half nor "benign" for either
half; ``indeterminate`` is the only value true for every member. The 2019 release re-labels the
same 327 HAM images as AK 130 / SCC 197 (docs/ISIC_SOURCES.md 1.2), so when both releases are combined the
finer 2019 label (``squamous cell carcinoma``/``malignant`` or ``actinic keratosis``) is kept
(``combine.py``) and the pair is a refinement, not a conflict (:data:`GRANULARITY_RULES`).

**Legacy archive ``indeterminate/benign`` and ``indeterminate/malignant`` -> ``indeterminate``.**
isic-metadata's ``BenignMalignantEnum`` treats both as indeterminate variants: like plain
``indeterminate`` they require histopathology (``validate_non_histopathology_diagnoses`` in
isic-metadata : ``isic_metadata/metadata.py``); the current archive collapsed all of them into a
three-valued ``diagnosis_1`` (Benign / Indeterminate / Malignant). Mapping the lean to a firm side
would invent certainty the pathologist did not give, so the unified value is ``indeterminate`` and
the published spelling is kept in the extra column ``legacy_benign_malignant`` for anyone who wants
the lean.

**``indeterminate`` is refined by ``benign``/``malignant``** when two sources label one image:
an undecided label next to a decided one is a difference of granularity (the challenge organisers
committed where the archive did not), not a contradiction. Only benign vs malignant is a conflict.

**2019 ``UNK`` -> diagnosis ``other``** ("None of the others", stade ``landing/2019/index.html``;
``other`` is also a legacy archive diagnosis). Training has no UNK row (docs/ISIC_SOURCES.md 1.2).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import NamedTuple

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Missing values
# ---------------------------------------------------------------------------------------------

#: The unified spelling of a missing value in every string column (ARCHITECTURE.md schema).
MISSING = ""

#: Spellings that mean "no value" in the saved files: 2017 metadata writes ``unknown``
#: (docs/ISIC_SOURCES.md 1.2), HAM10000 writes ``unknown`` for sex and localization, 2019/2020 leave the
#: field empty, pandas round-trips write ``nan``/``NaN``. NOT applied to 2020 ``diagnosis``, where
#: ``unknown`` is a real label (docs/ISIC_SOURCES.md 1.2, "unknown is a label value").
MISSING_SPELLINGS: frozenset[str] = frozenset({"", "unknown", "nan", "NaN"})

# ---------------------------------------------------------------------------------------------
# benign_malignant
# ---------------------------------------------------------------------------------------------

BENIGN = "benign"
MALIGNANT = "malignant"
INDETERMINATE = "indeterminate"

#: 2016 Part 3: training writes the strings, test writes floats (docs/ISIC_SOURCES.md 1.2, 1.4).
ISIC2016_LABELS: dict[str, str] = {
    "benign": BENIGN,
    "malignant": MALIGNANT,
    "0.0": BENIGN,
    "1.0": MALIGNANT,
    "0": BENIGN,
    "1": MALIGNANT,
}

#: 2020 ``target`` column; it must agree with ``benign_malignant`` (docs/ISIC_SOURCES.md 1.2).
ISIC2020_TARGET: dict[str, str] = {"0": BENIGN, "1": MALIGNANT, "0.0": BENIGN, "1.0": MALIGNANT}

#: Current archive ``diagnosis_1`` is the replacement of ``benign_malignant`` (docs/ISIC_SOURCES.md 2.3).
ARCHIVE_DIAGNOSIS_1: dict[str, str] = {
    "Benign": BENIGN,
    "Malignant": MALIGNANT,
    "Indeterminate": INDETERMINATE,
}

#: Legacy archive ``benign_malignant`` (docs/ISIC_SOURCES.md 2.3); see this module's docstring for why the
#: two ``indeterminate/...`` leans become ``indeterminate``.
LEGACY_BENIGN_MALIGNANT: dict[str, str] = {
    "benign": BENIGN,
    "malignant": MALIGNANT,
    "indeterminate": INDETERMINATE,
    "indeterminate/benign": INDETERMINATE,
    "indeterminate/malignant": INDETERMINATE,
}

# ---------------------------------------------------------------------------------------------
# diagnosis
# ---------------------------------------------------------------------------------------------

MELANOMA = "melanoma"
NEVUS = "nevus"
BASAL_CELL_CARCINOMA = "basal cell carcinoma"
SQUAMOUS_CELL_CARCINOMA = "squamous cell carcinoma"
ACTINIC_KERATOSIS = "actinic keratosis"
AKIEC = "actinic keratosis / intraepithelial carcinoma"
BENIGN_KERATOSIS = "benign keratosis"
SEBORRHEIC_KERATOSIS = "seborrheic keratosis"
DERMATOFIBROMA = "dermatofibroma"
VASCULAR_LESION = "vascular lesion"
OTHER = "other"
UNKNOWN_LABEL = "unknown"

#: The 2020 ``diagnosis`` values, kept as published (docs/ISIC_SOURCES.md 1.2 "2020 values").
ISIC2020_DIAGNOSES: tuple[str, ...] = (
    UNKNOWN_LABEL,
    NEVUS,
    MELANOMA,
    SEBORRHEIC_KERATOSIS,
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
)

#: benign/malignant/indeterminate of each one-hot class diagnosis, from where the ISIC diagnosis
#: hierarchy files it (isic-metadata : ``isic_metadata/diagnosis_hierarchical.py``): Melanoma, BCC
#: (Malignant adnexal epithelial proliferations - Follicular) and SCC (Malignant epidermal
#: proliferations) are Malignant; AK is Indeterminate; nevus, seborrheic keratosis, solar lentigo,
#: lichen planus like keratosis, dermatofibroma, vascular proliferations, cafe au lait macule and
#: lentigo NOS are Benign. AKIEC: this module's docstring.
DIAGNOSIS_BENIGN_MALIGNANT: dict[str, str] = {
    MELANOMA: MALIGNANT,
    BASAL_CELL_CARCINOMA: MALIGNANT,
    SQUAMOUS_CELL_CARCINOMA: MALIGNANT,
    ACTINIC_KERATOSIS: INDETERMINATE,
    AKIEC: INDETERMINATE,
    NEVUS: BENIGN,
    BENIGN_KERATOSIS: BENIGN,
    SEBORRHEIC_KERATOSIS: BENIGN,
    "solar lentigo": BENIGN,
    "lichenoid keratosis": BENIGN,
    "pigmented benign keratosis": BENIGN,
    "lentigo NOS": BENIGN,
    "cafe-au-lait macule": BENIGN,
    DERMATOFIBROMA: BENIGN,
    VASCULAR_LESION: BENIGN,
}

#: 2017 Part 3 one-hot columns; a row with both 0 is a nevus, both 1 is invalid (docs/ISIC_SOURCES.md 1.2).
ISIC2017_LABEL_COLUMNS: dict[str, str] = {
    "melanoma": MELANOMA,
    "seborrheic_keratosis": SEBORRHEIC_KERATOSIS,
}
ISIC2017_NEITHER = NEVUS

#: 2018 Task 3 one-hot header order (docs/ISIC_SOURCES.md 1.2; stade ``landing/2018/47.html``).
ISIC2018_CLASSES: dict[str, str] = {
    "MEL": MELANOMA,
    "NV": NEVUS,
    "BCC": BASAL_CELL_CARCINOMA,
    "AKIEC": AKIEC,
    "BKL": BENIGN_KERATOSIS,
    "DF": DERMATOFIBROMA,
    "VASC": VASCULAR_LESION,
}

#: HAM10000 ``dx`` -> the same classes (docs/ISIC_SOURCES.md 4.3: akiec->AKIEC ... vasc->VASC).
HAM10000_DX: dict[str, str] = {
    "mel": MELANOMA,
    "nv": NEVUS,
    "bcc": BASAL_CELL_CARCINOMA,
    "akiec": AKIEC,
    "bkl": BENIGN_KERATOSIS,
    "df": DERMATOFIBROMA,
    "vasc": VASCULAR_LESION,
}

#: 2019 one-hot header order (docs/ISIC_SOURCES.md 1.2; stade ``landing/2019/index.html``).
ISIC2019_CLASSES: dict[str, str] = {
    "MEL": MELANOMA,
    "NV": NEVUS,
    "BCC": BASAL_CELL_CARCINOMA,
    "AK": ACTINIC_KERATOSIS,
    "BKL": BENIGN_KERATOSIS,
    "DF": DERMATOFIBROMA,
    "VASC": VASCULAR_LESION,
    "SCC": SQUAMOUS_CELL_CARCINOMA,
    "UNK": OTHER,
}

#: Current archive ``diagnosis_2..5`` node names that map onto the unified vocabulary
#: (isic-metadata : ``isic_metadata/diagnosis_hierarchical.py``). The harmonizer walks from the
#: deepest level up and takes the first node listed here, so "Melanoma Invasive, Nodular" reaches
#: "Malignant melanocytic proliferations (Melanoma)" -> melanoma; when no level maps, the deepest
#: value lower-cased is kept ("Lentigo simplex" -> "lentigo simplex").
ARCHIVE_DIAGNOSIS_TERMS: dict[str, str] = {
    "Malignant melanocytic proliferations (Melanoma)": MELANOMA,
    "Nevus": NEVUS,
    "Basal cell carcinoma": BASAL_CELL_CARCINOMA,
    "Squamous cell carcinoma in situ": SQUAMOUS_CELL_CARCINOMA,
    "Squamous cell carcinoma, Invasive": SQUAMOUS_CELL_CARCINOMA,
    "Squamous cell carcinoma, NOS": SQUAMOUS_CELL_CARCINOMA,
    "Solar or actinic keratosis": ACTINIC_KERATOSIS,
    "Seborrheic keratosis": SEBORRHEIC_KERATOSIS,
    "Solar lentigo": "solar lentigo",
    "Lichen planus like keratosis": "lichenoid keratosis",
    "Lentigo NOS": "lentigo NOS",
    "Cafe au lait macule or patch": "cafe-au-lait macule",
    "Dermatofibroma": DERMATOFIBROMA,
    "Benign soft tissue proliferations - Vascular": VASCULAR_LESION,
}

#: ISIC 2024 (SLICE-3D) ``target`` / challenge ``malignant`` (docs/ISIC_SOURCES.md 1.6): 0/1, written
#: as integers in the Kaggle CSV and as floats in the challenge ground truth.
ISIC2024_TARGET: dict[str, str] = {"0": BENIGN, "1": MALIGNANT, "0.0": BENIGN, "1.0": MALIGNANT}

#: ISIC 2024 ``iddx_1``, the first level of the same diagnosis hierarchy as the archive's diagnosis_1.
ISIC2024_IDDX_1: dict[str, str] = {"Benign": BENIGN, "Malignant": MALIGNANT, "Indeterminate": INDETERMINATE}

#: ISIC 2024 ``iddx_2..5`` nodes the archive table does not spell the same way (docs/ISIC_SOURCES.md
#: 1.6: the malignant breakdown of the 2024 training set); everything else goes through
#: :data:`ARCHIVE_DIAGNOSIS_TERMS`, deepest mapped node first.
ISIC2024_DIAGNOSIS_TERMS: dict[str, str] = {
    "Melanoma Invasive": MELANOMA,
    "Melanoma in situ": MELANOMA,
    "Melanoma, NOS": MELANOMA,
    "Melanoma metastasis": MELANOMA,
    "Basal cell carcinoma, Nodular": BASAL_CELL_CARCINOMA,
    "Squamous cell carcinoma, Invasive": SQUAMOUS_CELL_CARCINOMA,
}

#: The unified ``image_type``: what kind of picture a row is. Challenge years 2016-2020 are all
#: dermoscopy; ISIC 2024 tiles are cropped from 3D total-body photographs (docs/ISIC_SOURCES.md 1.6);
#: archive and API rows carry their own ``image_type`` (docs/ISIC_SOURCES.md 2.3).
DERMOSCOPIC = "dermoscopic"
TBP_TILE_CLOSE_UP = "TBP tile: close-up"
RELEASE_IMAGE_TYPES: dict[str, str] = {
    "isic2016": DERMOSCOPIC,
    "isic2017": DERMOSCOPIC,
    "isic2018": DERMOSCOPIC,
    "isic2019": DERMOSCOPIC,
    "isic2020": DERMOSCOPIC,
    "isic2024": TBP_TILE_CLOSE_UP,
}

# ---------------------------------------------------------------------------------------------
# sex
# ---------------------------------------------------------------------------------------------

#: Every release and the archive write lower-case male/female (isic-metadata lower-cases on input,
#: docs/ISIC_SOURCES.md 2.3); missing spellings are handled by MISSING_SPELLINGS.
SEX: dict[str, str] = {"male": "male", "female": "female"}

# ---------------------------------------------------------------------------------------------
# anatom_site_general
# ---------------------------------------------------------------------------------------------

#: 2019 vocabulary (docs/ISIC_SOURCES.md 1.2 "2019 metadata vocabulary"), equal to the legacy archive
#: ``anatom_site_general`` (docs/ISIC_SOURCES.md 2.3).
SITES_2019: tuple[str, ...] = (
    "anterior torso",
    "posterior torso",
    "lateral torso",
    "head/neck",
    "upper extremity",
    "lower extremity",
    "palms/soles",
    "oral/genital",
)
TORSO = "torso"
#: The unified vocabulary: 2019 plus ``torso`` because 2020 does not split it (docs/ISIC_SOURCES.md 1.4).
UNIFIED_SITES: tuple[str, ...] = (*SITES_2019, TORSO)

#: 2020 ``anatom_site_general_challenge`` (docs/ISIC_SOURCES.md 1.2), already unified spellings.
ISIC2020_SITES: tuple[str, ...] = (
    TORSO,
    "lower extremity",
    "upper extremity",
    "head/neck",
    "palms/soles",
    "oral/genital",
)

#: HAM10000 ``localization`` (15 values, docs/ISIC_SOURCES.md 1.2). The 2019 release maps the same 10,015
#: images this way wherever it gives a site (computed from the saved CSVs: back->posterior torso,
#: abdomen/chest->anterior torso, ear/face/neck/scalp->head/neck, foot->lower extremity,
#: hand->upper extremity, acral->palms/soles); 2019 leaves ``trunk`` and ``genital`` empty, where we
#: keep the information as ``torso`` and ``oral/genital``.
HAM10000_LOCALIZATION: dict[str, str] = {
    "abdomen": "anterior torso",
    "chest": "anterior torso",
    "back": "posterior torso",
    "trunk": TORSO,
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "neck": "head/neck",
    "upper extremity": "upper extremity",
    "hand": "upper extremity",
    "lower extremity": "lower extremity",
    "foot": "lower extremity",
    "acral": "palms/soles",
    "genital": "oral/genital",
    "unknown": MISSING,
}

#: Current archive ``anatom_site_1..5`` node names (isic-metadata :
#: ``isic_metadata/anatom_site_hierarchical.py``). The harmonizer takes the deepest listed node of
#: any level, so "Trunk:Posterior trunk:Upper back" -> posterior torso and
#: "Upper extremity:Hand:Palm of hand" -> palms/soles, while "Trunk" alone -> torso.
ARCHIVE_SITE_TERMS: dict[str, str] = {
    "Head and neck": "head/neck",
    "Trunk": TORSO,
    "Upper extremity": "upper extremity",
    "Lower extremity": "lower extremity",
    "Anogenital region": "oral/genital",
    "Anterior trunk": "anterior torso",
    "Posterior trunk": "posterior torso",
    "Lateral trunk": "lateral torso",
    "Palm of hand": "palms/soles",
    "Sole of foot": "palms/soles",
}
#: The allowed ``anatom_site_1`` values (docs/ISIC_SOURCES.md 2.3).
ARCHIVE_SITE_LEVEL_1: tuple[str, ...] = (
    "Head and neck",
    "Trunk",
    "Upper extremity",
    "Lower extremity",
    "Anogenital region",
)

# ---------------------------------------------------------------------------------------------
# diagnosis_confirm_type
# ---------------------------------------------------------------------------------------------

#: HAM10000 ``dx_type`` -> the archive's ``diagnosis_confirm_type`` spellings (docs/ISIC_SOURCES.md 2.3
#: lists the archive values; the HAM method descriptions are in stade ``landing/2018/47.html``:
#: histopathology, confocal microscopy, unchanged follow-up, expert consensus).
HAM10000_DX_TYPE: dict[str, str] = {
    "histo": "histopathology",
    "follow_up": "serial imaging showing no change",
    "consensus": "single image expert consensus",
    "confocal": "confocal microscopy with consensus dermoscopy",
}
#: ``diagnosis_confirm_type`` values of the archive (docs/ISIC_SOURCES.md 2.3).
ARCHIVE_CONFIRM_TYPES: tuple[str, ...] = (
    "histopathology",
    "serial imaging showing no change",
    "single image expert consensus",
    "confocal microscopy with consensus dermoscopy",
    "single contributor clinical assessment",
)

# ---------------------------------------------------------------------------------------------
# Licences and attribution
# ---------------------------------------------------------------------------------------------

#: Per-image licences of the archive (isic : ``isic/core/models/base.py``, docs/ISIC_SOURCES.md 2.4).
ARCHIVE_LICENSES: tuple[str, ...] = ("CC-0", "CC-BY", "CC-BY-NC")

#: Release licences: 2016/2017 CC-0, 2018/2019/2020 CC-BY-NC (docs/ISIC_SOURCES.md 1.2; stade
#: ``data/<year>.html``), spelled like the archive's ``copyright_license``.
RELEASE_LICENSES: dict[str, str] = {
    "isic2016": "CC-0",
    "isic2017": "CC-0",
    "isic2018": "CC-BY-NC",
    "isic2019": "CC-BY-NC",
    "isic2020": "CC-BY-NC",
}

#: Release-level attribution, condensed from the "Citing <year> datasets" section of stade
#: ``data/<year>.html`` (2018/2019/2020 quote the wording their CC-BY-NC licence requires).
RELEASE_ATTRIBUTIONS: dict[str, str] = {
    "isic2016": (
        "ISIC 2016 Challenge (ISBI 2016, Part 3): Gutman D, Codella NCF, Celebi E, Helba B, "
        "Marchetti M, Mishra N, Halpern A. arXiv:1605.01397"
    ),
    "isic2017": (
        "ISIC 2017 Challenge (ISBI 2017, Part 3): Codella N, Gutman D, Celebi ME, Helba B, "
        "Marchetti MA, Dusza S, Kalloo A, Liopyris K, Mishra N, Kittler H, Halpern A. arXiv:1710.05006"
    ),
    "isic2018": (
        "HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of "
        "Vienna; https://doi.org/10.1038/sdata.2018.161"
    ),
    "isic2019": (
        "BCN_20000 Dataset: (c) Department of Dermatology, Hospital Clinic de Barcelona; "
        "HAM10000 Dataset: (c) by ViDIR Group, Department of Dermatology, Medical University of "
        "Vienna; https://doi.org/10.1038/sdata.2018.161; MSK Dataset: (c) Anonymous; "
        "https://arxiv.org/abs/1710.05006; https://arxiv.org/abs/1902.03368"
    ),
    "isic2020": (
        "International Skin Imaging Collaboration. SIIM-ISIC 2020 Challenge Dataset. "
        "https://doi.org/10.34970/2020-ds01 (2020). CC-BY-NC 4.0"
    ),
}

# ---------------------------------------------------------------------------------------------
# Granularity: pairs of values that are not conflicts
# ---------------------------------------------------------------------------------------------


class GranularityRule(NamedTuple):
    """``fine`` is a more specific value of ``coarse`` in ``column``; ``*`` as fine means any value."""

    column: str
    coarse: str
    fine: str
    reference: str


ANY_VALUE = "*"

_BKL_REF = (
    "BKL = solar lentigo / seborrheic keratosis / lichen planus-like keratosis "
    "(stade landing/2018/47.html, landing/2019/index.html)"
)
_AKIEC_REF = (
    "AKIEC = actinic keratosis / Bowen's disease (stade landing/2018/47.html); 2019 splits HAM akiec "
    "into AK 130 + SCC 197 (docs/ISIC_SOURCES.md 1.2)"
)
_TRUNK_REF = "Trunk:Anterior/Lateral/Posterior trunk (isic-metadata anatom_site_hierarchical.py)"

#: Every pair that differs only in granularity, so ``combine.py`` does not report it as a conflict
#: and keeps the finer value.
GRANULARITY_RULES: tuple[GranularityRule, ...] = (
    GranularityRule("diagnosis", BENIGN_KERATOSIS, SEBORRHEIC_KERATOSIS, _BKL_REF),
    GranularityRule("diagnosis", BENIGN_KERATOSIS, "solar lentigo", _BKL_REF),
    GranularityRule("diagnosis", BENIGN_KERATOSIS, "lichenoid keratosis", _BKL_REF),
    GranularityRule(
        "diagnosis",
        BENIGN_KERATOSIS,
        "pigmented benign keratosis",
        "Benign epidermal proliferations:Pigmented benign keratosis (isic-metadata "
        "diagnosis_hierarchical.py), a sibling of the three BKL members",
    ),
    GranularityRule("diagnosis", AKIEC, ACTINIC_KERATOSIS, _AKIEC_REF),
    GranularityRule("diagnosis", AKIEC, SQUAMOUS_CELL_CARCINOMA, _AKIEC_REF),
    GranularityRule(
        "diagnosis",
        UNKNOWN_LABEL,
        ANY_VALUE,
        "2020 'unknown' = subtype not labelled (docs/ISIC_SOURCES.md 1.4)",
    ),
    *(
        GranularityRule(
            "diagnosis",
            klass,
            diagnosis,
            "archive diagnosis_1 only (no deeper level); the class of the finer diagnosis "
            "(isic-metadata diagnosis_hierarchical.py)",
        )
        for diagnosis, klass in DIAGNOSIS_BENIGN_MALIGNANT.items()
    ),
    GranularityRule(
        "benign_malignant",
        INDETERMINATE,
        BENIGN,
        "an undecided label next to a decided one (vocab.py docstring)",
    ),
    GranularityRule(
        "benign_malignant",
        INDETERMINATE,
        MALIGNANT,
        "an undecided label next to a decided one; HAM akiec vs 2019 SCC (vocab.py docstring)",
    ),
    GranularityRule("anatom_site_general", TORSO, "anterior torso", _TRUNK_REF),
    GranularityRule("anatom_site_general", TORSO, "posterior torso", _TRUNK_REF),
    GranularityRule("anatom_site_general", TORSO, "lateral torso", _TRUNK_REF),
    GranularityRule(
        "anatom_site_general",
        "upper extremity",
        "palms/soles",
        "Upper extremity:Hand:Palm of hand (isic-metadata anatom_site_hierarchical.py)",
    ),
    GranularityRule(
        "anatom_site_general",
        "lower extremity",
        "palms/soles",
        "Lower extremity:Foot:Sole of foot (isic-metadata anatom_site_hierarchical.py)",
    ),
)

_REFINEMENTS: dict[tuple[str, str], frozenset[str]] = {}
for _rule in GRANULARITY_RULES:
    _key = (_rule.column, _rule.coarse)
    _REFINEMENTS[_key] = _REFINEMENTS.get(_key, frozenset()) | {_rule.fine}


#: Columns that have granularity rules; in every other column two different values always conflict.
GRANULARITY_COLUMNS: frozenset[str] = frozenset(rule.column for rule in GRANULARITY_RULES)


@lru_cache(maxsize=65536)
def refines(column: str, coarse: str, fine: str) -> bool:
    """True when ``fine`` is ``coarse`` said more precisely (one step or through a chain of rules).

    Used by ``combine.py``: such a pair is not a label conflict, and the finer value is the one kept.
    """
    if coarse == fine:
        return False
    seen: set[str] = set()
    frontier = [coarse]
    while frontier:
        current = frontier.pop()
        finer = _REFINEMENTS.get((column, current), frozenset())
        if ANY_VALUE in finer or fine in finer:
            return True
        for value in finer - seen:
            seen.add(value)
            frontier.append(value)
    return False


def compatible(column: str, left: str, right: str) -> bool:
    """True when two non-empty values of ``column`` agree, exactly or up to granularity."""
    return left == right or refines(column, left, right) or refines(column, right, left)


# ---------------------------------------------------------------------------------------------
# docs/HARMONIZATION.md rendering
# ---------------------------------------------------------------------------------------------


class MappingRow(NamedTuple):
    """One line of a mapping table: in ``source_format``, ``source_value`` of ``column`` -> ``unified``."""

    column: str
    source_format: str
    source_value: str
    unified: str
    reference: str


def _rows(column: str, fmt: str, table: Mapping[str, str], reference: str) -> Iterator[MappingRow]:
    for source_value, unified in table.items():
        yield MappingRow(column, fmt, source_value, unified, reference)


def mapping_rows() -> list[MappingRow]:
    """Every value mapping, as rows docs/HARMONIZATION.md renders (column, format, value, unified, source)."""
    rows: list[MappingRow] = []
    src_14 = "docs/ISIC_SOURCES.md 1.4"
    rows += _rows("benign_malignant", "isic2016", ISIC2016_LABELS, "docs/ISIC_SOURCES.md 1.2")
    rows += _rows("benign_malignant", "isic2020", ISIC2020_TARGET, "target; docs/ISIC_SOURCES.md 1.2")
    rows += _rows(
        "benign_malignant", "isic_archive_zip", ARCHIVE_DIAGNOSIS_1, "diagnosis_1; docs/ISIC_SOURCES.md 2.3"
    )
    rows += _rows(
        "benign_malignant", "isic_archive_zip (legacy)", LEGACY_BENIGN_MALIGNANT, "vocab.py docstring"
    )
    rows += _rows(
        "benign_malignant",
        "isic2017/2018/2019 (from diagnosis)",
        DIAGNOSIS_BENIGN_MALIGNANT,
        "isic-metadata diagnosis_hierarchical.py; AKIEC: vocab.py docstring",
    )
    rows += _rows("diagnosis", "isic2017", {**ISIC2017_LABEL_COLUMNS, "(both 0)": NEVUS}, src_14)
    rows += _rows("diagnosis", "isic2018", ISIC2018_CLASSES, "stade landing/2018/47.html")
    rows += _rows("diagnosis", "isic2018 (HAM10000 dx)", HAM10000_DX, "docs/ISIC_SOURCES.md 4.3")
    rows += _rows("diagnosis", "isic2019", ISIC2019_CLASSES, "stade landing/2019/index.html")
    rows += _rows(
        "diagnosis", "isic2020", {value: value for value in ISIC2020_DIAGNOSES}, "kept as published"
    )
    rows += _rows(
        "diagnosis",
        "isic_archive_zip (diagnosis_2..5)",
        ARCHIVE_DIAGNOSIS_TERMS,
        "isic-metadata diagnosis_hierarchical.py; deepest mapped level, else deepest value lower-cased",
    )
    rows += _rows("benign_malignant", "isic2024", ISIC2024_TARGET, "target / malignant; docs/ISIC_SOURCES.md 1.6")
    rows += _rows("benign_malignant", "isic2024 (iddx_1)", ISIC2024_IDDX_1,
                  "must agree with target; docs/ISIC_SOURCES.md 1.6")
    rows += _rows(
        "diagnosis",
        "isic2024 (iddx_2..5)",
        ISIC2024_DIAGNOSIS_TERMS,
        "docs/ISIC_SOURCES.md 1.6; other nodes as isic_archive_zip, deepest mapped level",
    )
    rows += _rows("image_type", "release", RELEASE_IMAGE_TYPES, "docs/ISIC_SOURCES.md 1.6; archive rows keep their own")
    rows += _rows(
        "sex", "all", {**SEX, **dict.fromkeys(sorted(MISSING_SPELLINGS), MISSING)}, src_14
    )
    rows += _rows(
        "anatom_site_general", "isic2019 / legacy archive", {s: s for s in SITES_2019}, "docs/ISIC_SOURCES.md 1.2"
    )
    rows += _rows("anatom_site_general", "isic2020", {s: s for s in ISIC2020_SITES}, "docs/ISIC_SOURCES.md 1.2")
    rows += _rows(
        "anatom_site_general",
        "isic2018 (HAM10000 localization)",
        HAM10000_LOCALIZATION,
        "as the 2019 release maps the same images (computed)",
    )
    rows += _rows(
        "anatom_site_general",
        "isic_archive_zip (anatom_site_1..5)",
        ARCHIVE_SITE_TERMS,
        "isic-metadata anatom_site_hierarchical.py; deepest mapped node",
    )
    rows += _rows(
        "diagnosis_confirm_type", "isic2018 (HAM10000 dx_type)", HAM10000_DX_TYPE, "docs/ISIC_SOURCES.md 2.3"
    )
    rows += _rows("copyright_license", "release", RELEASE_LICENSES, "docs/ISIC_SOURCES.md 1.2")
    rows += _rows("attribution", "release", RELEASE_ATTRIBUTIONS, "stade data/<year>.html")
    return rows


def granularity_rows() -> list[GranularityRule]:
    """The compatibility rules, for the docs/HARMONIZATION.md table next to :func:`mapping_rows`."""
    return list(GRANULARITY_RULES)


def render_markdown() -> str:
    """The mapping and granularity tables as Markdown, as docs/HARMONIZATION.md embeds them (make docs)."""
    mappings = pd.DataFrame(
        [
            (row.column, row.source_format, f"`{row.source_value}`",
             f"`{row.unified}`" if row.unified else "*(missing)*", row.reference)
            for row in mapping_rows()
        ],
        columns=["column", "format", "source value", "unified value", "source of fact"],
    )
    rules = pd.DataFrame(
        [
            (rule.column, f"`{rule.coarse}`", "any value" if rule.fine == ANY_VALUE else f"`{rule.fine}`",
             rule.reference)
            for rule in GRANULARITY_RULES
        ],
        columns=["column", "coarse", "finer (not a conflict; kept)", "why"],
    )
    # disable_numparse: values such as `0.0` are labels, never numbers to re-format or right-align.
    tables = [frame.to_markdown(index=False, disable_numparse=True) for frame in (mappings, rules)]
    return "\n\n".join(tables) + "\n"
