"""The 2016 and 2017 challenge releases: headerless or small labelled CSVs, one row per image."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import vocab
from .common import (
    Harmonized,
    HarmonizeError,
    Source,
    _ages,
    _assemble,
    _base_notes,
    _count,
    _diagnosis_columns,
    _id_mismatch,
    _ids,
    _lookup,
    _mapped,
    _one_hot,
    _read_table,
    _require_columns,
)

# ---------------------------------------------------------------------------------------------
# 2016
# ---------------------------------------------------------------------------------------------


def harmonize_isic2016(ground_truth: Source) -> Harmonized:
    """ISBI 2016 Part 3 ground truth: no header; ``benign``/``malignant`` (train) or ``0.0``/``1.0`` (test).

    Both encodings are accepted because the two official files differ (docs/ISIC_SOURCES.md 1.2); 2016
    publishes no diagnosis, so ``diagnosis`` is empty.
    """
    table = _read_table(
        ground_truth, "ground_truth", headerless_columns=("column 1 (image id)", "column 2 (label)")
    )
    ids, written, stripped = _ids(table, "column 1 (image id)")
    labels = _mapped(
        table,
        "column 2 (label)",
        vocab.ISIC2016_LABELS,
        "benign, malignant, 0.0 or 1.0 (docs/ISIC_SOURCES.md 1.2)",
        allow_missing=False,
    )
    frame = _assemble(
        len(table),
        {
            "isic_id": ids,
            "benign_malignant": labels,
            "copyright_license": vocab.RELEASE_LICENSES["isic2016"],
            "attribution": vocab.RELEASE_ATTRIBUTIONS["isic2016"],
            "original_name": written,
        },
    )
    counts = labels.value_counts()
    notes = _base_notes(table, stripped)
    notes.append(
        f"{_count(int(counts.get('benign', 0)))} benign / {_count(int(counts.get('malignant', 0)))} malignant"
    )
    return Harmonized(frame=frame, notes=notes)


# ---------------------------------------------------------------------------------------------
# 2017
# ---------------------------------------------------------------------------------------------


def harmonize_isic2017(ground_truth: Source, metadata: Source | None = None) -> Harmonized:
    """ISBI 2017 Part 3: floats ``melanoma``/``seborrheic_keratosis``, nevus = both 0 (docs/ISIC_SOURCES.md 1.2).

    Both 1 is an error. The optional training metadata (``image_id,age_approximate,sex``) writes
    missing values as ``unknown``, which become empty; a metadata id absent from the ground truth
    is an error, a ground-truth id without metadata keeps empty age and sex (noted).
    """
    table = _read_table(ground_truth, "ground_truth")
    label_columns = list(vocab.ISIC2017_LABEL_COLUMNS)
    _require_columns(table, ["image_id", *label_columns], "the ISIC 2017 Part 3 ground truth")
    ids, written, stripped = _ids(table, "image_id")
    matrix = _one_hot(table, label_columns)
    both = matrix.sum(axis=1) > 1
    if both.any():
        position = int(np.argmax(both))
        line = table.line(position)
        raise HarmonizeError(
            f"{table.label}: line {line}: {ids.iloc[position]}: columns {label_columns}: found both 1.0; "
            "expected at most one (nevus is both 0.0, docs/ISIC_SOURCES.md 1.2)",
            file=table.label,
            line=line,
            column=",".join(label_columns),
            value="1.0,1.0",
            expected="at most one 1.0",
        )
    diagnosis = np.full(len(table), vocab.ISIC2017_NEITHER, dtype=object)
    for index, name in enumerate(label_columns):
        diagnosis[matrix[:, index] == 1] = vocab.ISIC2017_LABEL_COLUMNS[name]
    diagnoses = pd.Series(diagnosis, dtype=object)
    values: dict[str, object] = _diagnosis_columns("isic2017", ids, written, diagnoses)
    notes = _base_notes(table, stripped)
    counts = diagnoses.value_counts()
    notes.append(
        ", ".join(
            f"{_count(int(counts.get(d, 0)))} {d}"
            for d in (vocab.MELANOMA, vocab.SEBORRHEIC_KERATOSIS, vocab.NEVUS)
        )
    )
    if metadata is not None:
        meta = _read_table(metadata, "metadata")
        _require_columns(meta, ["image_id", "age_approximate", "sex"], "the ISIC 2017 metadata")
        meta_ids, _, _ = _ids(meta, "image_id")
        _id_mismatch(table, ids, meta, meta_ids, both_ways=False)
        by_id = pd.DataFrame(
            {
                "age": _ages(meta, "age_approximate"),
                "sex": _mapped(meta, "sex", vocab.SEX, "male, female or unknown (docs/ISIC_SOURCES.md 1.2)"),
            }
        ).set_axis(meta_ids.to_numpy())
        values["age_approx"] = by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True)
        values["sex"] = _lookup(ids, by_id, "sex", vocab.MISSING)
        unknown_age = int(meta.frame["age_approximate"].isin(vocab.MISSING_SPELLINGS).sum())
        unknown_sex = int(meta.frame["sex"].isin(vocab.MISSING_SPELLINGS).sum())
        notes.append(
            f"{meta.label}: {_count(unknown_age)} ages and {_count(unknown_sex)} sexes missing ('unknown')"
        )
        without = int((~ids.isin(set(meta_ids))).sum())
        if without:
            notes.append(f"{_count(without)} ground-truth ids have no metadata row (age and sex left empty)")
    return Harmonized(frame=_assemble(len(table), values), notes=notes)
