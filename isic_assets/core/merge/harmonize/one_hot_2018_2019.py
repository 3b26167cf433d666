"""The 2018 (HAM10000) and 2019 releases: one-hot ground truth plus their metadata CSVs."""

from __future__ import annotations

from collections.abc import Mapping

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
    _missing_to_empty,
    _one_hot,
    _read_table,
    _require_columns,
    _require_exactly_one,
    _Table,
)

# ---------------------------------------------------------------------------------------------
# 2018 (HAM10000)
# ---------------------------------------------------------------------------------------------

_HAM_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
_GROUPING_IMAGE_COLUMNS = ("image", "image_id", "isic_id", "image_name")


def _ham_metadata(meta: _Table) -> tuple[pd.Series, pd.DataFrame]:
    """HAM10000_metadata.csv (7 columns, or 8 with ``dataset``, docs/ISIC_SOURCES.md 1.2) by canonical id."""
    _require_columns(meta, _HAM_COLUMNS, "HAM10000_metadata.csv")
    meta_ids, _, _ = _ids(meta, "image_id")
    dx = _mapped(meta, "dx", vocab.HAM10000_DX, f"one of {list(vocab.HAM10000_DX)}", allow_missing=False)
    by_id = pd.DataFrame(
        {
            "dx": dx,
            "confirm": _mapped(
                meta, "dx_type", vocab.HAM10000_DX_TYPE, f"one of {list(vocab.HAM10000_DX_TYPE)} or empty"
            ),
            "age": _ages(meta, "age"),
            "sex": _mapped(meta, "sex", vocab.SEX, "male, female or unknown"),
            "site": _mapped(
                meta, "localization", vocab.HAM10000_LOCALIZATION, "one of the 15 HAM10000 localizations"
            ),
            "lesion_id": _missing_to_empty(meta.frame["lesion_id"]),
            "dataset": meta.frame["dataset"].reset_index(drop=True)
            if "dataset" in meta.frame.columns
            else "",
        }
    ).set_axis(meta_ids.to_numpy())
    return meta_ids, by_id


def _lesion_groupings(groupings: _Table) -> tuple[pd.Series, pd.DataFrame]:
    """The 2018 lesion groupings CSV; its header is UNVERIFIED (docs/ISIC_SOURCES.md 1.2), so we accept an
    image column under any usual name plus ``lesion_id``, and an optional confirm-type column."""
    header = list(groupings.frame.columns)
    image_column = next((name for name in _GROUPING_IMAGE_COLUMNS if name in header), None)
    if image_column is None or "lesion_id" not in header:
        raise HarmonizeError(
            f"{groupings.label}: line 1: found header {header}; expected an image column (one of "
            f"{list(_GROUPING_IMAGE_COLUMNS)}) and a 'lesion_id' column (the official header is unverified, "
            "docs/ISIC_SOURCES.md 1.2)",
            file=groupings.label,
            line=1,
            value=",".join(header),
            expected="an image column and lesion_id",
        )
    ids, _, _ = _ids(groupings, image_column)
    by_id = pd.DataFrame({"lesion_id": _missing_to_empty(groupings.frame["lesion_id"])})
    confirm_column = next((n for n in ("diagnosis_confirm_type", "dx_type") if n in header), None)
    if confirm_column is not None:
        allowed = {**vocab.HAM10000_DX_TYPE, **{v: v for v in vocab.ARCHIVE_CONFIRM_TYPES}}
        by_id["confirm"] = _mapped(groupings, confirm_column, allowed, f"one of {sorted(allowed)} or empty")
    return ids, by_id.set_axis(ids.to_numpy())



def _one_hot_ground_truth(table: _Table, class_map: Mapping[str, str], what: str
                          ) -> tuple[pd.Series, pd.Series, int, pd.Series]:
    """Ids and unified diagnoses of a one-hot ``image,<CLASS>...`` table (2018 and 2019 formats).

    Exactly one ``1.0`` per row is required; anything else is an error naming the line.
    """
    classes = list(class_map)
    _require_columns(table, ["image", *classes], what)
    ids, written, stripped = _ids(table, "image")
    matrix = _one_hot(table, classes)
    _require_exactly_one(table, matrix, classes, "image")
    class_names = np.array([class_map[name] for name in classes], dtype=object)
    return ids, written, stripped, pd.Series(class_names[matrix.argmax(axis=1)], dtype=object)


def harmonize_isic2018(
    ground_truth: Source,
    metadata: Source | None = None,
    lesion_groupings: Source | None = None,
) -> Harmonized:
    """ISIC 2018 Task 3: one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, exactly one 1 per row.

    The ground truth may be the CSV or the official ``..._GroundTruth.zip`` holding it. HAM10000
    metadata, when given, supplies age, sex, site, lesion_id and the confirm type, and its ``dx`` must
    agree with the ground truth; lesion groupings, when given, supply lesion_id (and confirm type) and
    must agree with HAM where both speak. Licence CC-BY-NC (docs/ISIC_SOURCES.md 1.2).
    """
    table = _read_table(ground_truth, "ground_truth")
    ids, written, stripped, diagnoses = _one_hot_ground_truth(table, vocab.ISIC2018_CLASSES,
                                                              "the ISIC 2018 Task 3 ground truth")
    values: dict[str, object] = _diagnosis_columns("isic2018", ids, written, diagnoses)
    extras: dict[str, pd.Series] = {}
    notes = _base_notes(table, stripped)
    lesion = pd.Series([vocab.MISSING] * len(table), dtype=object)
    confirm = pd.Series([vocab.MISSING] * len(table), dtype=object)
    if metadata is not None:
        meta = _read_table(metadata, "metadata")
        meta_ids, by_id = _ham_metadata(meta)
        _id_mismatch(table, ids, meta, meta_ids, both_ways=False)
        _check_ham_dx(table, ids, diagnoses, meta, meta_ids, by_id)
        values["age_approx"] = by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True)
        values["sex"] = _lookup(ids, by_id, "sex", vocab.MISSING)
        values["anatom_site_general"] = _lookup(ids, by_id, "site", vocab.MISSING)
        lesion = _lookup(ids, by_id, "lesion_id", vocab.MISSING)
        confirm = _lookup(ids, by_id, "confirm", vocab.MISSING)
        if "dataset" in meta.frame.columns:
            extras["dataset"] = _lookup(ids, by_id, "dataset", vocab.MISSING)
        notes.append(
            f"{meta.label}: {_count(len(meta))} images, "
            f"{_count(by_id['lesion_id'].replace('', np.nan).nunique())} "
            "lesions"
        )
        without = int((~ids.isin(set(meta_ids))).sum())
        if without:
            notes.append(f"{_count(without)} ground-truth ids have no HAM10000 row (metadata left empty)")
    if lesion_groupings is not None:
        groups = _read_table(lesion_groupings, "lesion_groupings")
        group_ids, by_group = _lesion_groupings(groups)
        _id_mismatch(table, ids, groups, group_ids, both_ways=False)
        lesion = _merge_agreeing(table, ids, lesion, by_group, "lesion_id", groups, group_ids)
        if "confirm" in by_group.columns:
            confirm = _merge_agreeing(table, ids, confirm, by_group, "confirm", groups, group_ids)
        notes.append(f"{groups.label}: {_count(len(groups))} lesion groupings")
    values["lesion_id"] = lesion
    values["diagnosis_confirm_type"] = confirm
    return Harmonized(frame=_assemble(len(table), values, extras), notes=notes)


def _check_ham_dx(
    table: _Table,
    ids: pd.Series,
    diagnoses: pd.Series,
    meta: _Table,
    meta_ids: pd.Series,
    by_id: pd.DataFrame,
) -> None:
    """HAM ``dx`` and the 2018 one-hot are the same labels (docs/ISIC_SOURCES.md 4.3); a disagreement is an error."""
    ham = by_id["dx"].reindex(ids.to_numpy()).reset_index(drop=True)
    bad = (ham.notna() & (ham != diagnoses)).to_numpy()
    if not bad.any():
        return
    position = int(np.argmax(bad))
    meta_position = int(np.argmax((meta_ids == ids.iloc[position]).to_numpy()))
    line = meta.line(meta_position)
    found = str(meta.frame["dx"].iloc[meta_position])
    raise HarmonizeError(
        f"{meta.label}: line {line}: column 'dx': found {found!r} for {ids.iloc[position]}, expected the "
        f"class of {table.label} line {table.line(position)} ({diagnoses.iloc[position]})",
        file=meta.label,
        line=line,
        column="dx",
        value=found,
        expected=str(diagnoses.iloc[position]),
    )


def _merge_agreeing(
    table: _Table,
    ids: pd.Series,
    current: pd.Series,
    by_id: pd.DataFrame,
    column: str,
    other: _Table,
    other_ids: pd.Series,
) -> pd.Series:
    """Fill ``current`` from a second file; where both give a value they must be equal."""
    incoming = by_id[column].reindex(ids.to_numpy()).fillna(vocab.MISSING).reset_index(drop=True)
    clash = ((current != "") & (incoming != "") & (current != incoming)).to_numpy()
    if clash.any():
        position = int(np.argmax(clash))
        other_position = int(np.argmax((other_ids == ids.iloc[position]).to_numpy()))
        line = other.line(other_position)
        raise HarmonizeError(
            f"{other.label}: line {line}: {ids.iloc[position]}: {column} {incoming.iloc[position]!r} "
            "disagrees "
            f"with the HAM10000 metadata ({current.iloc[position]!r}); expected the same value",
            file=other.label,
            line=line,
            column=column,
            value=str(incoming.iloc[position]),
            expected=str(current.iloc[position]),
        )
    return current.where(current != "", incoming).astype(object)


# ---------------------------------------------------------------------------------------------
# 2019
# ---------------------------------------------------------------------------------------------


def harmonize_isic2019(ground_truth: Source, metadata: Source) -> Harmonized:
    """ISIC 2019: one-hot ground truth ``image,MEL,...,SCC,UNK`` plus its metadata CSV.

    2,074 names carry ``_downsampled`` (docs/ISIC_SOURCES.md 1.3): the suffix is stripped from
    ``isic_id`` and kept in ``original_name``. Ground truth and metadata must list the same images;
    the ids that differ are reported. Missing values are empty strings (docs/ISIC_SOURCES.md 1.2).
    """
    table = _read_table(ground_truth, "ground_truth")
    ids, written, stripped, diagnoses = _one_hot_ground_truth(table, vocab.ISIC2019_CLASSES,
                                                              "the ISIC 2019 ground truth")

    meta = _read_table(metadata, "metadata")
    _require_columns(meta, ["image", "age_approx", "anatom_site_general", "sex"], "the ISIC 2019 metadata")
    meta_ids, _, _ = _ids(meta, "image")
    _id_mismatch(table, ids, meta, meta_ids, both_ways=True)
    by_id = pd.DataFrame(
        {
            "age": _ages(meta, "age_approx"),
            "sex": _mapped(meta, "sex", vocab.SEX, "male, female or empty"),
            "site": _mapped(
                meta,
                "anatom_site_general",
                {site: site for site in vocab.SITES_2019},
                f"one of {list(vocab.SITES_2019)} or empty (docs/ISIC_SOURCES.md 1.2)",
            ),
            "lesion_id": _missing_to_empty(meta.frame["lesion_id"])
            if "lesion_id" in meta.frame.columns
            else vocab.MISSING,
        }
    ).set_axis(meta_ids.to_numpy())
    values = {
        **_diagnosis_columns("isic2019", ids, written, diagnoses),
        "age_approx": by_id["age"].reindex(ids.to_numpy()).reset_index(drop=True),
        "sex": _lookup(ids, by_id, "sex", vocab.MISSING),
        "anatom_site_general": _lookup(ids, by_id, "site", vocab.MISSING),
        "lesion_id": _lookup(ids, by_id, "lesion_id", vocab.MISSING),
    }
    frame = _assemble(len(table), values)
    notes = _base_notes(table, stripped)
    notes.append(
        f"{meta.label}: missing {_count(int(frame['age_approx'].isna().sum()))} ages, "
        f"{_count(int((frame['anatom_site_general'] == '').sum()))} sites, "
        f"{_count(int((frame['sex'] == '').sum()))} sexes, "
        f"{_count(int((frame['lesion_id'] == '').sum()))} lesion_ids"
    )
    return Harmonized(frame=frame, notes=notes)
