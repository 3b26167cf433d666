"""Leakage groups: every image that could reveal another image's answer lands in the same group.

A split is only honest if no patient, lesion or picture appears on both sides of it. Two images are
linked when they share a non-empty ``patient_id``, a non-empty ``lesion_id``, identical bytes
(``sha256``), or a row of ``merged_data/duplicates.csv`` (a dropped copy and the id kept instead).
Links are transitive, so the groups are the connected components of that graph (docs/ISIC_SOURCES.md
1.5: HAM has 10015 images of 7470 lesions; 2020 has 33,126 images of 2,056 patients).

Dropped duplicates are not in the metadata, but they still carry links: a dropped copy's bytes may
equal another kept image's, and where the duplicates table carries ``patient_id``/``lesion_id`` for
the dropped copy, those link too. Every dropped id is also linked to the id kept instead, so chains
through dropped ids (A dropped for K1, A also listed against K2) join K1 and K2.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..components import component_labels

# Columns whose shared non-empty value links two images. Each column is its own namespace, so a
# patient id can never collide with a lesion id.
LINK_COLUMNS = ("patient_id", "lesion_id", "sha256")
GROUP_PREFIX = "G"


def clean_keys(values: pd.Series) -> pd.Series:
    """Values as stripped strings with every missing spelling (NaN, None, NA) turned into ``""``.

    The merged CSV writes missing values as empty cells, but frames built in memory may carry NaN;
    both must mean "no link", never a shared key called "nan".
    """
    return values.astype("string").fillna("").str.strip().astype(object)


def build_groups(
    metadata: pd.DataFrame,
    duplicates: pd.DataFrame | None = None,
    near_duplicates: pd.DataFrame | None = None,
) -> pd.Series:
    """Group id per ``isic_id`` of ``metadata`` (index ``isic_id``, name ``group_id``).

    ``near_duplicates`` (``merged_data/near_duplicates.csv``: ``isic_id_a, isic_id_b``) links each
    confirmed pair like a listed duplicate does.

    The group id is ``"G"`` + the smallest ``isic_id`` of the group among the metadata rows, so it
    does not depend on row order and stays stable when unrelated images are added. An image with no
    patient, lesion, content twin or duplicate link is a group of its own.
    """
    if "isic_id" not in metadata.columns:
        raise ValueError("metadata has no isic_id column")
    kept_ids = clean_keys(metadata["isic_id"])
    if (kept_ids == "").any():
        raise ValueError("metadata has rows with an empty isic_id; every image needs an id to be grouped")
    records = _link_records(metadata, kept_ids, _with_pairs(duplicates, near_duplicates))
    nodes = pd.Index(pd.unique(pd.concat([kept_ids, records["isic_id"], records["kept_isic_id"]])))
    nodes = nodes[nodes != ""]
    left, right = _edges(records, nodes)
    roots = component_labels(len(nodes), left, right)
    return _group_ids(kept_ids, roots[nodes.get_indexer(kept_ids)])


def _with_pairs(duplicates: pd.DataFrame | None, pairs: pd.DataFrame | None) -> pd.DataFrame | None:
    """Listed duplicates plus near-duplicate pairs, each pair as one more dropped -> kept link."""
    if pairs is None or len(pairs) == 0:
        return duplicates
    for column in ("isic_id_a", "isic_id_b"):
        if column not in pairs.columns:
            raise ValueError(f"near_duplicates has no {column} column (expected merged_data/near_duplicates.csv)")
    links = pd.DataFrame({"isic_id": pairs["isic_id_b"].to_numpy(), "kept_isic_id": pairs["isic_id_a"].to_numpy()})
    if duplicates is None or len(duplicates) == 0:
        return links
    return pd.concat([duplicates, links], ignore_index=True)


def _link_records(
    metadata: pd.DataFrame, kept_ids: pd.Series, duplicates: pd.DataFrame | None
) -> pd.DataFrame:
    """One row per known image (kept or dropped) with its link keys and, for dropped ones, its keeper."""
    own = link_keys(metadata, kept_ids)
    own["kept_isic_id"] = ""
    if duplicates is None or len(duplicates) == 0:
        return own
    for column in ("isic_id", "kept_isic_id"):
        if column not in duplicates.columns:
            raise ValueError(f"duplicates has no {column} column (expected merged_data/duplicates.csv)")
    dropped = link_keys(duplicates, clean_keys(duplicates["isic_id"]))
    dropped["kept_isic_id"] = clean_keys(duplicates["kept_isic_id"]).to_numpy()
    return pd.concat([own, dropped], ignore_index=True)


def link_keys(frame: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """``isic_id`` (from ``ids``) plus every link column, cleaned; empty where ``frame`` lacks it.

    Grouping and the leakage check read keys through this one function, so they can never
    disagree about what counts as the same patient, lesion or file.
    """
    out = pd.DataFrame({"isic_id": ids.to_numpy()})
    for column in LINK_COLUMNS:
        if column in frame.columns:
            values = clean_keys(frame[column])
            # Hex digests are case-insensitive; ids are compared exactly as published.
            out[column] = (values.str.lower() if column == "sha256" else values).to_numpy()
        else:
            out[column] = ""
    return out


def _edges(records: pd.DataFrame, nodes: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Edges as node-index pairs: each record to the first record sharing a key, and dropped -> kept.

    Linking to the first holder of a key (instead of every pair) keeps the edge count linear while
    producing the same connected components.
    """
    node_of = nodes.get_indexer(records["isic_id"])
    lefts, rights = [], []
    for column in LINK_COLUMNS:
        present = (records[column] != "").to_numpy() & (node_of >= 0)
        if not present.any():
            continue
        members = node_of[present]
        codes, _ = pd.factorize(records.loc[present, column])
        first = pd.Series(members).groupby(codes).transform("first").to_numpy()
        lefts.append(members)
        rights.append(first)
    kept_of = nodes.get_indexer(records["kept_isic_id"])
    listed = (node_of >= 0) & (kept_of >= 0)
    lefts.append(node_of[listed])
    rights.append(kept_of[listed])
    left = np.concatenate(lefts) if lefts else np.empty(0, dtype=np.int64)
    right = np.concatenate(rights) if rights else np.empty(0, dtype=np.int64)
    differ = left != right
    return left[differ], right[differ]


def _group_ids(kept_ids: pd.Series, roots: np.ndarray) -> pd.Series:
    """``G`` + the smallest kept id per component, indexed by isic_id (first row wins on repeats)."""
    frame = pd.DataFrame({"isic_id": kept_ids.to_numpy(), "root": roots})
    smallest = frame.groupby("root")["isic_id"].transform("min")
    groups = pd.Series(
        (GROUP_PREFIX + smallest).to_numpy(),
        index=pd.Index(frame["isic_id"], name="isic_id"),
        name="group_id",
    )
    return groups[~groups.index.duplicated(keep="first")]
