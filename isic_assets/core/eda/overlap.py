"""How many images each pair of selected sources shares: by id, by content, by near-duplicate.

The cross-set table of docs/ISIC_SOURCES.md 5.2 for whatever is selected, computed from the merge's
own records, so nothing is decoded or hashed again:

- ``same_id``: one id listed by both sources (the merged ``sources`` column);
- ``same_content``: different ids with identical bytes, one kept and one dropped as
  ``identical_content`` (``duplicates.csv``: the dropped copy's ``source`` against every source of the
  kept id);
- ``near_duplicate``: a confirmed pair of ``near_duplicates.csv``, the sources of one id against the
  sources of the other.

A pair of sources appears once (catalog order: the first source listed first); pairs sharing nothing
are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd

from ..splits.grouping import clean_keys

OVERLAP_KINDS = ("same_id", "same_content", "near_duplicate")
COLUMNS = ["source_a", "source_b", *OVERLAP_KINDS]


def _clean(values: pd.Series) -> pd.Series:
    """Stripped text, missing as ``""``: the splits' rule, one string per distinct value."""
    return clean_keys(values)


def source_overlap(metadata: pd.DataFrame, duplicates: pd.DataFrame | None,
                   near_duplicates: pd.DataFrame | None, source_order: Iterable[str] = ()) -> pd.DataFrame:
    """One row per pair of sources sharing at least one image, with the count of each kind.

    ``source_order`` (the selection's merge order) orders the pairs; sources it does not name follow
    in order of first appearance.
    """
    sources_of: dict[str, list[str]] = {}
    order: dict[str, int] = {name: k for k, name in enumerate(dict.fromkeys(source_order))}
    counts: dict[str, Counter] = {kind: Counter() for kind in OVERLAP_KINDS}
    if "sources" in metadata.columns:
        # Per distinct ``sources`` cell, not per image: an archive of 400,000 images has a handful of
        # cells, and a list per image was about 250 bytes (docs/PERFORMANCE.md "The stages after the merge").
        cells = _clean(metadata["sources"])
        per_cell = cells.value_counts(sort=False)
        for cell in pd.unique(cells.to_numpy(dtype=object)):  # order of first appearance, as row by row
            names = [n for n in cell.split(";") if n]
            for n in names:
                order.setdefault(n, len(order))
            _add_pairs(counts["same_id"], names, names, order, int(per_cell[cell]))
        # The sources of the ids the duplicates and pairs name, and of no other image.
        wanted = _named_ids(duplicates, near_duplicates)
        if wanted:
            ids = _clean(metadata["isic_id"])
            named = ids.isin(wanted).to_numpy()
            for isic_id, cell in zip(ids[named], cells[named], strict=True):
                sources_of[isic_id] = [n for n in cell.split(";") if n]
    if duplicates is not None and len(duplicates) and {"reason", "source", "kept_isic_id"} <= set(duplicates.columns):
        content = duplicates[_clean(duplicates["reason"]) == "identical_content"]
        for source, kept in zip(_clean(content["source"]), _clean(content["kept_isic_id"]), strict=True):
            order.setdefault(source, len(order))
            _add_pairs(counts["same_content"], [source], sources_of.get(kept, []), order)
    if near_duplicates is not None and len(near_duplicates):
        for a, b in zip(_clean(near_duplicates["isic_id_a"]), _clean(near_duplicates["isic_id_b"]), strict=True):
            _add_pairs(counts["near_duplicate"], sources_of.get(a, []), sources_of.get(b, []), order)
    pairs = sorted(set().union(*counts.values()), key=lambda p: (order[p[0]], order[p[1]]))
    rows = [[a, b, *(counts[kind][(a, b)] for kind in OVERLAP_KINDS)] for a, b in pairs]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for kind in OVERLAP_KINDS:
        frame[kind] = frame[kind].astype("int64")
    return frame


def _named_ids(duplicates: pd.DataFrame | None, near_duplicates: pd.DataFrame | None) -> set[str]:
    """The kept ids of identical-content duplicates and both ids of every near-duplicate pair."""
    wanted: set[str] = set()
    if duplicates is not None and len(duplicates) and {"reason", "source", "kept_isic_id"} <= set(duplicates.columns):
        wanted.update(_clean(duplicates.loc[_clean(duplicates["reason"]) == "identical_content", "kept_isic_id"]))
    if near_duplicates is not None and len(near_duplicates):
        wanted.update(_clean(near_duplicates["isic_id_a"]))
        wanted.update(_clean(near_duplicates["isic_id_b"]))
    return wanted


def _add_pairs(counter: Counter, left: Iterable[str], right: Iterable[str], order: dict[str, int],
               times: int = 1) -> None:
    """Count each unordered pair of different sources once per image (or image pair), ``times``
    images at once; a list against itself (the same-id case) would otherwise give each pair twice."""
    seen = set()
    for a in left:
        for b in right:
            if a == b:
                continue
            pair = (a, b) if order[a] <= order[b] else (b, a)
            if pair not in seen:
                seen.add(pair)
                counter[pair] += times
