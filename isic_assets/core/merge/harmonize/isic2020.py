"""The 2020 release: two header versions of the ground truth and the published duplicates list."""

from __future__ import annotations

import numpy as np

from ...ids import normalize_isic_id
from .. import vocab
from .common import (
    _ID_EXPECTED,
    Harmonized,
    HarmonizeError,
    Source,
    _ages,
    _assemble,
    _base_notes,
    _count,
    _ids,
    _mapped,
    _missing_to_empty,
    _read_table,
    _require_columns,
    _value_error,
)

# ---------------------------------------------------------------------------------------------
# 2020
# ---------------------------------------------------------------------------------------------

_ISIC2020_COLUMNS = (
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
)


def harmonize_isic2020(ground_truth: Source, duplicates: Source | None = None) -> Harmonized:
    """SIIM-ISIC 2020 training ground truth, v1 or v2 (v2 adds ``lesion_id``; detected by header).

    ``target`` and ``benign_malignant`` must agree. ``diagnosis`` ``unknown`` is a label ("subtype not
    given") and is kept, unlike the missing spellings elsewhere (docs/ISIC_SOURCES.md 1.2). The Kaggle
    ``train.csv`` (ages written ``45.0``) reads the same as v1. The optional duplicates CSV
    (``image_name_1,image_name_2``, 425 pairs) becomes ``duplicate_pairs``; its ids must be in the
    ground truth.
    """
    table = _read_table(ground_truth, "ground_truth")
    _require_columns(table, _ISIC2020_COLUMNS, "the ISIC 2020 training ground truth")
    version = "v2" if "lesion_id" in table.frame.columns else "v1"
    ids, written, stripped = _ids(table, "image_name")
    bm = _mapped(
        table,
        "benign_malignant",
        {vocab.BENIGN: vocab.BENIGN, vocab.MALIGNANT: vocab.MALIGNANT},
        "benign or malignant",
        allow_missing=False,
    )
    target = _mapped(table, "target", vocab.ISIC2020_TARGET, "0 or 1", allow_missing=False)
    disagree = (bm != target).to_numpy()
    if disagree.any():
        position = int(np.argmax(disagree))
        line = table.line(position)
        found = f"target={table.frame['target'].iloc[position]}, benign_malignant={bm.iloc[position]}"
        raise HarmonizeError(
            f"{table.label}: line {line}: {ids.iloc[position]}: columns 'target' and 'benign_malignant': "
            "found "
            f"{found}; expected target 1 with malignant and 0 with benign",
            file=table.label,
            line=line,
            column="target,benign_malignant",
            value=found,
            expected="target 1 <-> malignant, 0 <-> benign",
        )
    diagnosis = _mapped(
        table,
        "diagnosis",
        {value: value for value in vocab.ISIC2020_DIAGNOSES},
        f"one of {list(vocab.ISIC2020_DIAGNOSES)} (docs/ISIC_SOURCES.md 1.2)",
        allow_missing=False,
    )
    site = _mapped(
        table,
        "anatom_site_general_challenge",
        {value: value for value in vocab.ISIC2020_SITES},
        f"one of {list(vocab.ISIC2020_SITES)} or empty",
    )
    values = {
        "isic_id": ids,
        "benign_malignant": bm,
        "diagnosis": diagnosis,
        "age_approx": _ages(table, "age_approx"),
        "sex": _mapped(table, "sex", vocab.SEX, "male, female or empty"),
        "anatom_site_general": site,
        "patient_id": _missing_to_empty(table.frame["patient_id"]),
        "lesion_id": _missing_to_empty(table.frame["lesion_id"]) if version == "v2" else vocab.MISSING,
        "copyright_license": vocab.RELEASE_LICENSES["isic2020"],
        "attribution": vocab.RELEASE_ATTRIBUTIONS["isic2020"],
        "original_name": written,
    }
    notes = _base_notes(table, stripped)
    notes.append(
        f"{table.label}: ISIC 2020 ground truth {version} "
        f"({'lesion_id present' if version == 'v2' else 'no lesion_id'})"
    )
    notes.append(f"{_count(int((bm == vocab.MALIGNANT).sum()))} malignant of {_count(len(table))}")
    pairs: list[tuple[str, str]] = []
    if duplicates is not None:
        pairs = _duplicate_pairs(duplicates, set(ids), table.label)
        notes.append(f"{_count(len(pairs))} listed duplicate pairs")
    return Harmonized(frame=_assemble(len(table), values), duplicate_pairs=pairs, notes=notes)


def _duplicate_pairs(duplicates: Source, known: set[str], ground_truth_label: str) -> list[tuple[str, str]]:
    table = _read_table(duplicates, "duplicates")
    _require_columns(table, ["image_name_1", "image_name_2"], "the ISIC 2020 duplicates list")
    columns = []
    for name in ("image_name_1", "image_name_2"):
        canonical = [normalize_isic_id(value) for value in table.frame[name].tolist()]
        _value_error(table, np.array([value is None for value in canonical]), name, _ID_EXPECTED)
        unknown = np.array([value not in known for value in canonical])
        _value_error(table, unknown, name, f"an image listed in {ground_truth_label}")
        columns.append(canonical)
    same = np.array([a == b for a, b in zip(*columns, strict=True)], dtype=bool)
    _value_error(table, same, "image_name_2", "a different image from image_name_1")
    return [(str(a), str(b)) for a, b in zip(*columns, strict=True)]
