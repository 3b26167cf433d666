"""ISIC Archive exports (isic-cli / zip download): ``metadata.csv`` in the current or legacy schema."""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import lru_cache

import pandas as pd

from .. import vocab
from .common import (
    BASE_COLUMNS,
    Harmonized,
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
    _Table,
    _value_error,
)

# ---------------------------------------------------------------------------------------------
# ISIC Archive export (metadata.csv inside the zip-download / isic-cli output)
# ---------------------------------------------------------------------------------------------

_DIAGNOSIS_LEVELS = tuple(f"diagnosis_{level}" for level in range(1, 6))
_SITE_LEVELS = tuple(f"anatom_site_{level}" for level in range(1, 6))


def _segments(value: str) -> list[str]:
    """Nodes of a hierarchical value: "Trunk:Posterior trunk:Upper back" or a lone "Upper back"."""
    return [part.strip() for part in value.split(":") if part.strip()]


@lru_cache(maxsize=4096)
def _deepest_site(value: str) -> str:
    for node in reversed(_segments(value)):
        if node in vocab.ARCHIVE_SITE_TERMS:
            return vocab.ARCHIVE_SITE_TERMS[node]
    return vocab.MISSING


@lru_cache(maxsize=4096)
def _deepest_diagnosis(value: str) -> str:
    for node in reversed(_segments(value)):
        if node in vocab.ARCHIVE_DIAGNOSIS_TERMS:
            return vocab.ARCHIVE_DIAGNOSIS_TERMS[node]
    return vocab.MISSING


def _map_unique(values: pd.Series, function: Callable[[str], str]) -> pd.Series:
    """Apply a per-value function once per distinct value (archive columns repeat a few hundred values)."""
    table = {value: function(value) for value in values.unique()}
    return values.map(table).astype(object)


def _first_node_check(table: _Table, column: str, allowed: Collection[str]) -> pd.Series:
    values = _missing_to_empty(table.frame[column])
    first = values.map(lambda value: (_segments(value) or [""])[0])
    _value_error(
        table, ((values != "") & ~first.isin(list(allowed))).to_numpy(), column, f"one of {list(allowed)}"
    )
    return values


def _archive_benign_malignant(table: _Table, columns: list[str]) -> tuple[pd.Series, pd.Series | None]:
    current = pd.Series([vocab.MISSING] * len(table), dtype=object)
    if "diagnosis_1" in columns:
        values = _first_node_check(table, "diagnosis_1", vocab.ARCHIVE_DIAGNOSIS_1)
        current = values.map(lambda v: vocab.ARCHIVE_DIAGNOSIS_1.get((_segments(v) or [""])[0], "")).astype(
            object
        )
    legacy_raw = None
    if "benign_malignant" in columns:
        legacy = _mapped(
            table,
            "benign_malignant",
            vocab.LEGACY_BENIGN_MALIGNANT,
            f"one of {list(vocab.LEGACY_BENIGN_MALIGNANT)} or empty (docs/ISIC_SOURCES.md 2.3)",
        )
        current = current.where(current != "", legacy)
        legacy_raw = _missing_to_empty(table.frame["benign_malignant"])
    return current, legacy_raw


def _archive_diagnosis(table: _Table, columns: list[str]) -> pd.Series:
    """Deepest ``diagnosis_2..5`` node in the unified vocabulary, else the deepest value lower-cased."""
    levels = [name for name in _DIAGNOSIS_LEVELS if name in columns]
    mapped = pd.Series([vocab.MISSING] * len(table), dtype=object)
    deepest = pd.Series([vocab.MISSING] * len(table), dtype=object)
    for name in levels:
        values = _missing_to_empty(table.frame[name])
        last = _map_unique(values, lambda v: (_segments(v) or [""])[-1])
        deepest = last.where(last != "", deepest)
        if name != "diagnosis_1":
            term = _map_unique(values, _deepest_diagnosis)
            mapped = term.where(term != "", mapped)
    current = mapped.where(mapped != "", deepest.str.lower())
    if "diagnosis" in columns:
        legacy = _missing_to_empty(table.frame["diagnosis"])
        current = current.where(current != "", legacy)
    return current.astype(object)


def _archive_site(table: _Table, columns: list[str]) -> pd.Series:
    """Deepest ``anatom_site_1..5`` node we can place; the legacy ``anatom_site_general`` fills gaps."""
    site = pd.Series([vocab.MISSING] * len(table), dtype=object)
    for name in [level for level in _SITE_LEVELS if level in columns]:
        values = (
            _first_node_check(table, name, vocab.ARCHIVE_SITE_LEVEL_1)
            if name == "anatom_site_1"
            else _missing_to_empty(table.frame[name])
        )
        term = _map_unique(values, _deepest_site)
        site = term.where(term != "", site)
    if "anatom_site_general" in columns:
        legacy = _mapped(
            table,
            "anatom_site_general",
            {value: value for value in vocab.UNIFIED_SITES},
            f"one of {list(vocab.UNIFIED_SITES)} or empty",
        )
        site = site.where(site != "", legacy)
    return site


def harmonize_isic_archive(metadata_csv: Source) -> Harmonized:
    """``metadata.csv`` of an ISIC Archive export (zip download or isic-cli), current or legacy schema.

    Current schema (docs/ISIC_SOURCES.md 2.3): ``benign_malignant`` from ``diagnosis_1``
    (Benign/Malignant/Indeterminate); ``diagnosis`` from the deepest ``diagnosis_N`` mapped through
    ``vocab.ARCHIVE_DIAGNOSIS_TERMS``, else the deepest value lower-cased; the site from the deepest
    placeable ``anatom_site_N`` node (so posterior/anterior/lateral torso when given). Legacy schema:
    ``benign_malignant`` (``indeterminate/benign`` and ``indeterminate/malignant`` -> ``indeterminate``,
    the published value kept in ``legacy_benign_malignant``; vocab.py docstring), ``diagnosis`` kept as
    published, ``anatom_site_general``. A file with both uses the current columns and fills gaps from
    the legacy ones. Licence and attribution are per image. Columns the export leaves out (keys with
    no value are absent, docs/ISIC_SOURCES.md 2.2) are empty; all other columns follow as extras.
    """
    table = _read_table(metadata_csv, "metadata")
    _require_columns(table, ["isic_id", "copyright_license", "attribution"], "an ISIC Archive metadata.csv")
    columns = list(table.frame.columns)
    ids, written, stripped = _ids(table, "isic_id")
    license_ = _mapped(
        table,
        "copyright_license",
        {value: value for value in vocab.ARCHIVE_LICENSES},
        f"one of {list(vocab.ARCHIVE_LICENSES)} (docs/ISIC_SOURCES.md 2.4)",
        allow_missing=False,
    )
    benign_malignant, legacy_raw = _archive_benign_malignant(table, columns)

    def optional(name: str) -> pd.Series | str:
        return _missing_to_empty(table.frame[name]) if name in columns else vocab.MISSING

    values = {
        "isic_id": ids,
        "benign_malignant": benign_malignant,
        "diagnosis": _archive_diagnosis(table, columns),
        "age_approx": _ages(table, "age_approx") if "age_approx" in columns else None,
        "sex": _mapped(table, "sex", vocab.SEX, "male, female or empty")
        if "sex" in columns
        else vocab.MISSING,
        "anatom_site_general": _archive_site(table, columns),
        "patient_id": optional("patient_id"),
        "lesion_id": optional("lesion_id"),
        "diagnosis_confirm_type": optional("diagnosis_confirm_type"),
        "copyright_license": license_,
        "attribution": table.frame["attribution"],
        "original_name": written,
    }
    extras = {name: table.frame[name] for name in columns if name not in BASE_COLUMNS}
    if legacy_raw is not None:
        extras["legacy_benign_malignant"] = legacy_raw
    schema = (
        "current+legacy"
        if "diagnosis_1" in columns and "benign_malignant" in columns
        else "current"
        if "diagnosis_1" in columns or "anatom_site_1" in columns
        else "legacy"
        if "benign_malignant" in columns or "diagnosis" in columns
        else "no label columns"
    )
    notes = _base_notes(table, stripped)
    notes.append(f"{table.label}: archive schema {schema}")
    if legacy_raw is not None:
        leaning = int(legacy_raw.isin(["indeterminate/benign", "indeterminate/malignant"]).sum())
        if leaning:
            notes.append(
                f"{_count(leaning)} legacy indeterminate/benign|malignant labels unified to indeterminate"
            )
    return Harmonized(frame=_assemble(len(table), values, extras), notes=notes)
