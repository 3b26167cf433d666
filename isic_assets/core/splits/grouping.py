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
import pyarrow as pa
import pyarrow.compute as pc

from ..components import component_labels

# Columns whose shared non-empty value links two images. Each column is its own namespace, so a
# patient id can never collide with a lesion id.
LINK_COLUMNS = ("patient_id", "lesion_id", "sha256")
GROUP_PREFIX = "G"


def clean_keys(values: pd.Series) -> pd.Series:
    """Values as stripped strings with every missing spelling (NaN, None, NA) turned into ``""``.

    The merged CSV writes missing values as empty cells, but frames built in memory may carry NaN;
    both must mean "no link", never a shared key called "nan".

    Text is cleaned once per distinct value and every row holding it shares the one string, so a
    column of a few distinct values (a label, a source, a patient) costs a pointer per row, and a
    column that is already clean text is returned without new strings (docs/PERFORMANCE.md "The
    stages after the merge").
    """
    if isinstance(values.array, pd.arrays.ArrowStringArray) or (
            pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty")):
        # Arrow-backed text (a string per row either way, and no hash table of distinct values: for
        # 401,059 ids that is about 100 MiB), or numbers, booleans, mixed: each value cleaned.
        return _clean_each(values)
    raw = values.to_numpy(dtype=object) if values.dtype == object else None
    if raw is not None and all(type(v) is str and v.strip() is v for v in raw):
        return pd.Series(raw.copy(), index=values.index, dtype=object)
    codes, distinct = factorize(values)  # missing values get -1
    cleaned = distinct.to_numpy(dtype=object).copy()
    stripped = distinct.str.strip()
    changed = (stripped != distinct).to_numpy(dtype=bool)
    if changed.any():
        cleaned[changed] = _clean_each(distinct[changed]).to_numpy()
    table = np.append(cleaned, np.array([""], dtype=object))
    return pd.Series(table[codes], index=values.index, dtype=object)


def factorize(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """``pd.factorize(values)``: a code per row (-1 for missing) and the distinct values in order of
    first appearance. Arrow-backed text is encoded by Arrow itself: ``pd.factorize`` makes a Python
    string per row of it first (+93 MiB for 401,059 digests, docs/PERFORMANCE.md "The stages after
    the merge")."""
    if isinstance(values.array, pd.arrays.ArrowStringArray):
        array = pa.array(values.array)
        if isinstance(array, pa.ChunkedArray):  # one dictionary for every row
            array = array.combine_chunks()
        encoded = pc.dictionary_encode(array)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return codes, pd.Series(encoded.dictionary.to_pandas(types_mapper=_same_text(values.dtype)),
                                dtype=values.dtype)
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64, copy=False), pd.Series(uniques, dtype=values.dtype)


def _same_text(dtype):
    return lambda _: dtype


def stripped_text(values: pd.Series) -> pd.Series:
    """``clean_keys``' values as pandas text (Arrow-backed, no Python string per row): for filtering
    a large table with ``isin`` before cleaning only the rows kept."""
    return values.astype("string").fillna("").str.strip()


def _clean_each(values: pd.Series) -> pd.Series:
    """Each value made text, missing as ``""``, stripped: the rule ``clean_keys`` applies."""
    return stripped_text(values).astype(object)


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

    Memory is a few integer arrays per row beside the keys themselves: nodes and keys are numbered
    with ``pd.factorize`` (no per-row objects, no group-by over hundreds of thousands of keys), and
    the images of one group share one group id string (docs/PERFORMANCE.md "The stages after the
    merge").
    """
    if "isic_id" not in metadata.columns:
        raise ValueError("metadata has no isic_id column")
    kept_ids = clean_keys(metadata["isic_id"])
    if (kept_ids == "").any():
        raise ValueError("metadata has rows with an empty isic_id; every image needs an id to be grouped")
    links = _links(duplicates, near_duplicates)
    n_own = len(kept_ids)
    # Every id named (the metadata's own first, then each dropped copy's, then the ids kept instead)
    # as a node number; -1 for an empty id.
    names = [kept_ids.to_numpy(dtype=object)]
    if links is not None:
        names += [clean_keys(links["isic_id"]).to_numpy(dtype=object),
                  clean_keys(links["kept_isic_id"]).to_numpy(dtype=object)]
    node_of, uniques = pd.factorize(np.concatenate(names))
    empty = np.flatnonzero(uniques == "")
    if len(empty):
        node_of[node_of == empty[0]] = -1
    n_records = n_own + (len(links) if links is not None else 0)
    own, kept_of = node_of[:n_records], node_of[n_records:]
    left, right = _edges(metadata, links, own, kept_of)
    roots = component_labels(len(uniques), left, right)
    return _group_ids(kept_ids, roots[own[:n_own]])


def _links(duplicates: pd.DataFrame | None, near_duplicates: pd.DataFrame | None) -> pd.DataFrame | None:
    """The duplicate and near-duplicate links as one table (None when there are none), checked for the
    two columns every link needs."""
    links = _with_pairs(duplicates, near_duplicates)
    if links is None or len(links) == 0:
        return None
    for column in ("isic_id", "kept_isic_id"):
        if column not in links.columns:
            raise ValueError(f"duplicates has no {column} column (expected merged_data/duplicates.csv)")
    return links


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


def link_keys(frame: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """``isic_id`` (from ``ids``) plus every link column, cleaned; empty where ``frame`` lacks it.

    Grouping and the leakage check read keys through this one function, so they can never
    disagree about what counts as the same patient, lesion or file. The columns hold Python strings
    (``dtype=object`` said explicitly: pandas would otherwise copy them into Arrow-backed text, and
    every later look at them as objects would make a new string per row).
    """
    n = len(ids)
    columns = {"isic_id": ids.to_numpy(dtype=object)}
    for column in LINK_COLUMNS:
        if column in frame.columns:
            values = clean_keys(frame[column])
            # Hex digests are case-insensitive; ids are compared exactly as published.
            columns[column] = _lowered(values) if column == "sha256" else values.to_numpy(dtype=object)
        else:
            columns[column] = np.full(n, "", dtype=object)
    return pd.DataFrame(columns, dtype=object)


def _lowered(values: pd.Series) -> np.ndarray:
    """``values.str.lower()`` as an object array, making new strings only for the values that change:
    a digest column is almost always lower-case already, and a new string per row is about 110
    bytes at 400,000 rows (docs/PERFORMANCE.md "The stages after the merge")."""
    out = values.to_numpy(dtype=object)
    changed = np.fromiter((v != v.lower() for v in out), dtype=bool, count=len(out))
    if changed.any():
        out = out.copy()
        out[changed] = [v.lower() for v in out[changed]]
    return out


def _edges(metadata: pd.DataFrame, links: pd.DataFrame | None, own: np.ndarray,
           kept_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges as node-number pairs: each record (a metadata row, then a dropped copy of ``links``) to
    the first record sharing a key, and each dropped copy to the id kept instead.

    Linking to the first holder of a key (instead of every pair) keeps the edge count linear while
    producing the same connected components. Keys are compared as numbers (``key_codes``).
    """
    lefts, rights = [], []
    for column in LINK_COLUMNS:
        if column not in metadata.columns and (links is None or column not in links.columns):
            continue
        codes = key_codes(_records_column(metadata, links, column), lower=column == "sha256")
        present = (codes >= 0) & (own >= 0)
        if not present.any():
            continue
        members, codes = own[present], codes[present]
        # Writing positions backwards leaves each key's first position.
        first = np.empty(int(codes.max()) + 1, dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1, dtype=np.int64)
        lefts.append(members)
        rights.append(members[first[codes]])
    dropped = own[len(own) - len(kept_of):]
    listed = (dropped >= 0) & (kept_of >= 0)
    lefts.append(dropped[listed])
    rights.append(kept_of[listed])
    left = np.concatenate(lefts)
    right = np.concatenate(rights)
    differ = left != right
    return left[differ], right[differ]


def _records_column(metadata: pd.DataFrame, links: pd.DataFrame | None, column: str) -> pd.Series:
    """``column`` of the metadata rows then of the dropped copies, ``""`` where a table lacks it."""
    parts = [frame[column].reset_index(drop=True) if column in frame.columns
             else pd.Series(np.full(len(frame), "", dtype=object), dtype=object)
             for frame in (metadata, links) if frame is not None]
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def key_codes(values: pd.Series, lower: bool = False) -> np.ndarray:
    """A number per row, equal exactly where the cleaned keys (``clean_keys``, lower-cased when
    ``lower``) are equal; -1 where the key is empty or missing.

    Arrow-backed text is numbered as it is (no Python string per row) when no distinct value
    changes on cleaning, the usual case; otherwise the distinct values are cleaned as Python strings
    and numbered again.
    """
    if isinstance(values.array, pd.arrays.ArrowStringArray):
        codes = _sorted_codes(values, lower)
        if codes is not None:
            return codes
    codes, distinct = factorize(values)  # missing values: -1
    if pd.api.types.infer_dtype(distinct, skipna=True) in ("string", "empty"):
        dirty = (distinct.str.strip() != distinct).to_numpy(dtype=bool)
        if lower:  # anything str.lower could change: an ASCII capital or any non-ASCII character
            dirty = dirty | distinct.str.contains(r"[A-Z]|[^\x00-\x7f]", regex=True).to_numpy(dtype=bool)
        if not dirty.any():
            empty = np.append((distinct == "").to_numpy(dtype=bool), True)  # codes of -1 read the last
            return np.where(empty[codes], -1, codes)
    keys = clean_keys(distinct)
    numbers, names = pd.factorize(_lowered(keys) if lower else keys.to_numpy(dtype=object))
    numbers = np.append(np.where(names[numbers] == "", -1, numbers), -1)  # codes of -1 read the last
    return numbers[codes].astype(np.int64)


def _sorted_codes(values: pd.Series, lower: bool) -> np.ndarray | None:
    """``key_codes`` of Arrow-backed text by one sort instead of a hash table (Arrow's and pandas'
    hash tables of 401,059 distinct digests cost about 100 MiB); None when some value would change
    on cleaning (the caller then cleans the distinct values as Python strings)."""
    array = pa.array(values.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    dirty = pc.not_equal(pc.utf8_trim_whitespace(array), array)
    if lower:  # anything str.lower could change: an ASCII capital or any non-ASCII character
        dirty = pc.or_(dirty, pc.match_substring_regex(array, r"[A-Z]|[^\x00-\x7f]"))
    if pc.any(dirty).as_py():
        return None
    n = len(array)
    order = pc.sort_indices(array).to_numpy().astype(np.int64)  # missing values last
    ordered = array.take(order)
    starts = np.ones(n, dtype=bool)
    if n > 1:
        starts[1:] = pc.not_equal(ordered.slice(1), ordered.slice(0, n - 1)).fill_null(True).to_numpy(
            zero_copy_only=False)
    codes = np.empty(n, dtype=np.int64)
    codes[order] = np.cumsum(starts) - 1
    codes[pc.or_(pc.is_null(array), pc.equal(array, "")).fill_null(True).to_numpy(zero_copy_only=False)] = -1
    return codes


def _group_ids(kept_ids: pd.Series, roots: np.ndarray) -> pd.Series:
    """``G`` + the smallest kept id per component, indexed by isic_id (first row wins on repeats).

    The smallest id of a component is found by rank (one sort of the ids), and each component's
    group id is made once and shared by its rows.
    """
    ids = kept_ids.to_numpy(dtype=object)
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    components, component_of = np.unique(roots, return_inverse=True)
    smallest = np.full(len(components), n, dtype=np.int64)
    np.minimum.at(smallest, component_of, rank)
    names = np.array([GROUP_PREFIX + i for i in ids[order[smallest]]], dtype=object)
    groups = pd.Series(names[component_of] if n else np.empty(0, dtype=object),
                       index=pd.Index(ids, name="isic_id", dtype=object), name="group_id")
    repeated = groups.index.duplicated(keep="first")
    return groups[~repeated] if repeated.any() else groups


def group_codes(ids: np.ndarray, keys: dict[str, np.ndarray], duplicates: pd.DataFrame | None = None,
                near_duplicates: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``build_groups`` of images held as fixed-width bytes (``pool.PlanPool``): a group number per
    row and the group ids, numbered in ascending order of the id (so ordering by number is ordering
    by group id).

    ``ids`` are the cleaned ``isic_id``; ``keys`` the cleaned link columns the metadata has (the
    digest lower-cased). The same links, components and group ids as ``build_groups``, without a
    Python string or hash table per image: ids and keys are numbered by sorting the bytes, which
    orders them as Python orders the strings (UTF-8 keeps code point order).
    """
    if len(ids) and (ids == b"").any():
        raise ValueError("metadata has rows with an empty isic_id; every image needs an id to be grouped")
    links = _links(duplicates, near_duplicates)
    n_own = len(ids)
    names = [ids]
    if links is not None:
        names += [_key_bytes(clean_keys(links["isic_id"])), _key_bytes(clean_keys(links["kept_isic_id"]))]
    every_id = np.concatenate(names) if len(names) > 1 else ids
    node_of, firsts = sorted_numbers(every_id)
    uniques = every_id[firsts]
    n_records = n_own + (len(links) if links is not None else 0)
    own, kept_of = node_of[:n_records], node_of[n_records:]
    lefts, rights = [], []
    for column in LINK_COLUMNS:
        if column not in keys and (links is None or column not in links.columns):
            continue
        parts = [keys[column] if column in keys else np.zeros(n_own, dtype="S1")]
        if links is not None:
            parts.append(_key_bytes(clean_keys(links[column]), lower=column == "sha256") if column in links.columns
                         else np.zeros(len(links), dtype="S1"))
        codes, _ = sorted_numbers(np.concatenate(parts) if len(parts) > 1 else parts[0])
        left, right = _first_holder_edges(own, codes)
        differ = left != right  # a key only one image holds links nothing (every digest, usually)
        lefts.append(left[differ])
        rights.append(right[differ])
        del codes, left, right, differ
    dropped = own[n_own:]
    listed = (dropped >= 0) & (kept_of >= 0)
    lefts.append(dropped[listed])
    rights.append(kept_of[listed])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    differ = left != right
    roots = component_labels(len(uniques), left[differ], right[differ])[own[:n_own]]
    components, component_of = np.unique(roots, return_inverse=True)
    smallest = np.full(len(components), len(uniques), dtype=np.int64)
    np.minimum.at(smallest, component_of.reshape(-1), own[:n_own])  # nodes are numbered in id order
    by_name = np.argsort(smallest)
    number = np.empty(len(components), dtype=np.int64)
    number[by_name] = np.arange(len(components), dtype=np.int64)
    group_names = np.array([GROUP_PREFIX + v.decode("utf-8") for v in uniques[smallest[by_name]].tolist()],
                           dtype=object)
    return number[component_of.reshape(-1)], group_names


# Rows compared at a time when numbering sorted bytes: two gathered blocks, not two copies of a column.
_BLOCK = 1 << 16


def sorted_numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A number per value of a bytes (``S``) array, equal exactly where the values are equal and
    increasing with the value; -1 for ``b""``. Also the position of one row per number, in number
    order. ``np.unique`` would hold a sorted copy of the column (64 bytes a row for a digest); this
    holds the sort order and compares neighbours a block at a time."""
    n = len(values)
    order = np.argsort(values, kind="stable")
    starts = np.ones(n, dtype=bool)
    for begin in range(1, n, _BLOCK):
        end = min(begin + _BLOCK, n)
        starts[begin:end] = values[order[begin:end]] != values[order[begin - 1:end - 1]]
    numbers = np.empty(n, dtype=np.int64)
    numbers[order] = np.cumsum(starts) - 1
    firsts = order[starts]
    if n and values[firsts[0]] == b"":  # sorted: the empty value first
        numbers -= 1
        firsts = firsts[1:]
    return numbers, firsts


def _key_bytes(values: pd.Series, lower: bool = False) -> np.ndarray:
    """Cleaned keys (``clean_keys``) as fixed-width UTF-8 bytes, lower-cased when ``lower``."""
    text = _lowered(values) if lower else values.to_numpy(dtype=object)
    if len(text) == 0:
        return np.zeros(0, dtype="S1")
    return np.array([v.encode("utf-8") for v in text], dtype="S")


def _first_holder_edges(members: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each record with a key to the first record holding the same key (``_edges``' rule): as few edges
    as records, the same components as linking every pair."""
    present = (codes >= 0) & (members >= 0)
    if not present.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    members, codes = members[present], codes[present]
    first = np.empty(int(codes.max()) + 1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1, dtype=np.int64)
    return members, members[first[codes]]
