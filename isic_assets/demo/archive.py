"""The ISIC Archive export of the demo mirror (isic-cli layout, current metadata schema)."""

from __future__ import annotations

import csv
import io
from collections import Counter

from .isic2020 import _Row2020
from .plan import (
    _LICENSE_CC_0,
    _LICENSE_CC_BY,
    _LICENSE_CC_BY_NC,
    ARCHIVE_LEADING_COLUMNS,
    BENIGN,
    INDETERMINATE,
    MALIGNANT,
    NO_LABEL,
    PATH_ARCHIVE_ZIP,
    SIZES_ARCHIVE,
    Listing,
    Picture,
    SourcePlan,
    _jpeg,
    _Layout,
)

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
