"""One ``harmonize_<format>`` function per ISIC metadata format -> the unified metadata frame.

Every year publishes its labels in its own shape (docs/ISIC_SOURCES.md 1.4): headerless 2016 CSVs,
one-hot floats in 2017-2019, HAM10000's own columns, 2020's two header versions, and the archive's
export whose schema changed in 2024-2026 (docs/ISIC_SOURCES.md 2.3). Each function here reads one format
and returns :class:`Harmonized`, whose frame has one row per canonical ``isic_id`` and the columns
of :data:`BASE_COLUMNS` in that order, values mapped through ``vocab.py``.

Reading is strict on purpose: a value we do not understand raises :class:`HarmonizeError` naming the
file, the 1-based line, the column, the value found and what was expected. No row is ever dropped:
a row is either harmonized or the whole file is rejected.

The package holds one module per family of formats (:mod:`.challenge_2016_2017`,
:mod:`.one_hot_2018_2019`, :mod:`.isic2020`, :mod:`.archive`) on top of :mod:`.common`; this module
dispatches on the catalog format name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .archive import harmonize_isic_archive
from .challenge_2016_2017 import harmonize_isic2016, harmonize_isic2017
from .common import BASE_COLUMNS, FORMATS, METADATA_ROLES, Harmonized, HarmonizeError, Source
from .isic2020 import harmonize_isic2020
from .one_hot_2018_2019 import harmonize_isic2018, harmonize_isic2019

__all__ = [
    "BASE_COLUMNS",
    "FORMATS",
    "METADATA_ROLES",
    "HarmonizeError",
    "Harmonized",
    "Source",
    "harmonize",
    "harmonize_isic2016",
    "harmonize_isic2017",
    "harmonize_isic2018",
    "harmonize_isic2019",
    "harmonize_isic2020",
    "harmonize_isic_archive",
]

# ---------------------------------------------------------------------------------------------
# Dispatch on catalog format names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FormatSpec:
    function: Callable[..., Harmonized]
    required: tuple[str, ...]
    optional: tuple[str, ...]


_FORMAT_SPECS: dict[str, _FormatSpec] = {
    "isic2016": _FormatSpec(harmonize_isic2016, ("ground_truth",), ()),
    "isic2017": _FormatSpec(harmonize_isic2017, ("ground_truth",), ("metadata",)),
    "isic2018": _FormatSpec(harmonize_isic2018, ("ground_truth",), ("metadata", "lesion_groupings")),
    "isic2019": _FormatSpec(harmonize_isic2019, ("ground_truth", "metadata"), ()),
    "isic2020": _FormatSpec(harmonize_isic2020, ("ground_truth",), ("duplicates",)),
    "isic_archive_zip": _FormatSpec(lambda metadata: harmonize_isic_archive(metadata), ("metadata",), ()),
}


def harmonize(format: str, files: Mapping[str, Source]) -> Harmonized:
    """Harmonize one catalog source: ``format`` is the catalog format name, ``files`` maps roles to files.

    Roles are ``ground_truth``, ``metadata``, ``lesion_groupings`` and ``duplicates`` (for
    ``isic_archive_zip``, ``metadata`` is the metadata.csv the caller read from inside the zip).
    Roles that carry no metadata (e.g. an images zip) are ignored; a metadata role the format does
    not use, a missing required role or an unknown format raises :class:`HarmonizeError`.
    """
    spec = _FORMAT_SPECS.get(format)
    if spec is None:
        raise HarmonizeError(f"unknown ISIC format {format!r}; expected one of {list(FORMATS)}", value=format)
    accepted = set(spec.required) | set(spec.optional)
    for role in files:
        if role in METADATA_ROLES and role not in accepted:
            raise HarmonizeError(
                f"format {format!r} does not use a {role!r} file; expected roles {sorted(accepted)}",
                value=role,
            )
    for role in spec.required:
        if files.get(role) is None:
            extra = (
                " (HAM10000 metadata alone is not enough: the ground truth is required)"
                if format == "isic2018" and role == "ground_truth"
                else ""
            )
            raise HarmonizeError(
                f"format {format!r}: missing required {role!r} file{extra}; given roles {sorted(files)}",
                value=role,
                expected=f"roles {list(spec.required)}",
            )
    arguments = {
        role: files[role] for role in (*spec.required, *spec.optional) if files.get(role) is not None
    }
    return spec.function(**arguments)
