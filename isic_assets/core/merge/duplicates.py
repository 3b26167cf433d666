"""Duplicate resolution and the quarantine list, read from the merge's state file a page at a time.

Three links make duplicates: the same id in several sources (keep the copy with most pixels, then
the earliest source), byte-identical files under different ids, and pairs listed by the publisher
(2020 duplicates CSV). The last two are transitive, so they are resolved as connected components;
each keeps the id that has a label, then the earliest source, then the lowest id.

The copies of every id are read back in id order from the state file, so memory holds one id's
copies at a time; only the ids that share bytes with another or appear in a listed pair (a few
hundred in the ISIC years) are grouped in memory. The result is the run's ``best`` table (one row
per id, ``kept`` = 0 for the ids a component drops) and the duplicates and quarantine rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import pandas as pd

from ..components import connected_sets
from .state_store import MergeState

DUPLICATE_COLUMNS = ["isic_id", "kept_isic_id", "reason", "source", "member", "sha256"]
QUARANTINE_COLUMNS = ["isic_id", "source", "member", "reason", "detail", "id_kept_from_other_source"]
_COPY_FIELDS = ("isic_id", "source", "name", "sha256", "width", "height", "ext", "file_bytes", "exif_orientation",
                "format")
_FAR = 1 << 30  # order of a source not in the catalog: after every listed one


@dataclass
class Resolution:
    """The outcome of deduplication: every dropped copy and every rejected member; the kept file
    facts are the ``best`` rows with ``kept`` = 1 in the state file."""

    duplicates: pd.DataFrame
    rejected: list[dict[str, Any]]


def preference(record: Mapping[str, Any], order: Mapping[str, int]) -> tuple[Any, ...]:
    """Which copy of one id to keep: most pixels (never a ``_downsampled`` one), then catalog order."""
    return (-(int(record["width"]) * int(record["height"])), order.get(record["source"], _FAR), record["name"])


def resolve_duplicates(state: MergeState, records: Iterable[dict[str, Any]], order: Mapping[str, int],
                       listed_pairs: Sequence[tuple[str, str]]) -> Resolution:
    """Reduce every image to one kept copy; record each dropped copy with the id kept instead.

    ``records`` are the member records of every source in catalog order; those with status ok go
    to the state's ``copies`` table, the others are returned as rejected. ``state``'s ``labelled``
    table names the ids that have a label.
    """
    rejected: list[dict[str, Any]] = []
    copies = _copies(records, rejected)
    state.fill("copies", copies)
    dropped: list[dict[str, Any]] = []
    cursor = state.db.execute(f"SELECT {', '.join(_COPY_FIELDS)} FROM copies ORDER BY isic_id, seq")
    best_rows = _best_rows(_pages(cursor), order, dropped)
    state.fill("best", best_rows)

    links: list[tuple[str, str]] = list(listed_pairs)
    by_hash: dict[str, str] = {}
    shared = state.db.execute("SELECT isic_id, sha256 FROM best WHERE sha256 IN (SELECT sha256 FROM best "
                              "GROUP BY sha256 HAVING COUNT(*) > 1) ORDER BY isic_id").fetchall()
    for isic_id, digest in shared:
        if digest in by_hash:
            links.append((isic_id, by_hash[digest]))
        else:
            by_hash[digest] = isic_id
    involved = sorted({i for pair in links for i in pair})
    best = _rows_of(state, involved)
    labelled = labelled_among(state, list(best))
    for members in connected_sets(list(best), links):
        if len(members) < 2:
            continue
        members.sort(key=lambda i: (i not in labelled, order.get(best[i]["source"], _FAR), i))
        keeper = members[0]
        for other in members[1:]:
            same_bytes = best[other]["sha256"] == best[keeper]["sha256"]
            dropped.append(_dup_row(best[other], keeper, "identical_content" if same_bytes else "listed_duplicate"))
            state.db.execute("UPDATE best SET kept = 0 WHERE isic_id = ?", (other,))
    duplicates = pd.DataFrame(dropped, columns=DUPLICATE_COLUMNS).sort_values(
        ["kept_isic_id", "isic_id", "source"], kind="stable").reset_index(drop=True)
    return Resolution(duplicates=duplicates, rejected=rejected)


def _copies(records: Iterable[dict[str, Any]], rejected: list[dict[str, Any]]) -> Iterable[tuple[Any, ...]]:
    for seq, rec in enumerate(records):
        if rec.get("isic_id") is None:
            continue
        if rec["status"] == "ok":
            yield (seq, *(rec[k] for k in _COPY_FIELDS))
        else:
            rejected.append(rec)


def _pages(cursor: Any, size: int = 2000) -> Iterable[dict[str, Any]]:
    while page := cursor.fetchmany(size):
        for row in page:
            yield dict(zip(_COPY_FIELDS, row, strict=True))


def _best_rows(copies: Iterable[dict[str, Any]], order: Mapping[str, int], dropped: list[dict[str, Any]]
               ) -> Iterable[tuple[Any, ...]]:
    """One ``best`` row per id (its preferred copy and every source holding it), in id order."""
    for isic_id, group in groupby(copies, key=lambda rec: rec["isic_id"]):
        same_id = sorted(group, key=lambda rec: preference(rec, order))
        sources = sorted({c["source"] for c in same_id}, key=lambda n: order.get(n, _FAR))
        for other in same_id[1:]:
            reason = "same_id_downsampled" if "_downsampled" in other["name"] else "same_id_other_source"
            dropped.append(_dup_row(other, isic_id, reason))
        first = same_id[0]
        yield (*(first[k] for k in _COPY_FIELDS), ";".join(sources), 1)


def _rows_of(state: MergeState, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``best`` rows of ``ids`` (those that have one), by id, in the order of ``ids``."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = state.db.execute(f"SELECT {', '.join(_COPY_FIELDS)} FROM best WHERE isic_id IN "
                                f"({', '.join('?' for _ in chunk)})", chunk).fetchall()
        by_id = {row[0]: dict(zip(_COPY_FIELDS, row, strict=True)) for row in rows}
        found.update((i, by_id[i]) for i in chunk if i in by_id)
    return found


def labelled_among(state: MergeState, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` have a label in the merged metadata (asked 500 ids at a time)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(row[0] for row in state.db.execute(
            f"SELECT isic_id FROM labelled WHERE isic_id IN ({', '.join('?' for _ in chunk)})", chunk))
    return found


def presumed_listed_drops(listed_pairs: Sequence[tuple[str, str]], labelled: set[str]) -> frozenset[str]:
    """Ids the duplicates list will drop, by the keeper rule of ``resolve_duplicates`` without pixels.

    Each listed component keeps its labelled, lowest id; the others need not be written during the
    scan (the 2020 list names 425 such images, each a full-size JPEG written and deleted otherwise).
    The rule ignores source order and readability, which only the scan knows; a wrong guess costs
    one read from the zip in the final sync, never a wrong output. ``labelled`` need only hold the
    labelled ids among the pairs.
    """
    ids = sorted({i for pair in listed_pairs for i in pair})
    components = connected_sets(ids, listed_pairs)
    drops: set[str] = set()
    for members in components:
        members.sort(key=lambda i: (i not in labelled, i))
        drops.update(members[1:])
    return frozenset(drops)


def _dup_row(rec: Mapping[str, Any], kept_id: str, reason: str) -> dict[str, Any]:
    return {"isic_id": rec["isic_id"], "kept_isic_id": kept_id, "reason": reason, "source": rec["source"],
            "member": rec["name"], "sha256": rec["sha256"]}


def quarantine(state: MergeState, resolution: Resolution) -> pd.DataFrame:
    """Every image member rejected and every metadata row left without an image, with the reason.

    The metadata rows are the state's ``meta_ids`` table; an id counts as present when any copy of
    it was readable (kept or dropped as a duplicate).
    """
    rows = []
    for rec in resolution.rejected:
        present = bool(rec.get("isic_id")) and state.db.execute(
            "SELECT 1 FROM best WHERE isic_id = ?", (rec["isic_id"],)).fetchone() is not None
        rows.append({"isic_id": rec.get("isic_id") or "", "source": rec["source"], "member": rec["name"],
                     "reason": rec.get("reason") or "rejected", "detail": rec.get("detail") or "",
                     "id_kept_from_other_source": present})
    rejected_ids = {rec.get("isic_id") for rec in resolution.rejected}
    missing = state.db.execute("SELECT isic_id, sources FROM meta_ids m WHERE NOT EXISTS "
                               "(SELECT 1 FROM best b WHERE b.isic_id = m.isic_id)")
    while page := missing.fetchmany(2000):
        for isic_id, sources in page:
            if isic_id in rejected_ids:
                continue  # already listed with the reason its image was rejected
            rows.append({"isic_id": isic_id, "source": sources, "member": "", "reason": "missing_image",
                         "detail": "listed in the metadata but no image with this id is in any selected zip",
                         "id_kept_from_other_source": False})
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.sort_values(["isic_id", "source", "member"], kind="stable").reset_index(drop=True)
