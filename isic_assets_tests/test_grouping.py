"""Leakage groups: every link between images (patient, lesion, bytes, listed duplicate) joins groups."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from isic_assets.core.splits.grouping import build_groups, group_codes
from isic_assets.core.splits.pool import pool_from_frame


def _meta(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["isic_id", "patient_id", "lesion_id", "sha256"])


def _dups(rows: list[tuple[str, str]], **extra: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["isic_id", "kept_isic_id"])
    frame["reason"] = "listed_duplicate"
    for column, values in extra.items():
        frame[column] = values
    return frame


def _same(groups: pd.Series, *ids: str) -> bool:
    return groups.loc[list(ids)].nunique() == 1


def test_patient_with_many_images_is_one_group():
    """2020 has up to 115 images per patient; all of them must land in one split."""
    meta = _meta(
        [(f"ISIC_{i:07d}", "IP_1", f"IL_{i}", f"h{i}") for i in range(8)]
        + [("ISIC_0000100", "IP_2", "", "h100")]
    )
    groups = build_groups(meta, None)
    assert _same(groups, *[f"ISIC_{i:07d}" for i in range(8)])
    assert groups["ISIC_0000100"] != groups["ISIC_0000000"]


def test_lesion_chain_through_a_patient_links_four_images():
    """A-lesion-B-patient-C-lesion-D: no single key is shared by all, the union still joins them."""
    meta = _meta(
        [
            ("ISIC_0000001", "", "L1", "a"),
            ("ISIC_0000002", "P", "L1", "b"),
            ("ISIC_0000003", "P", "L2", "c"),
            ("ISIC_0000004", "", "L2", "d"),
            ("ISIC_0000005", "", "L3", "e"),
        ]
    )
    groups = build_groups(meta, None)
    assert _same(groups, "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004")
    assert groups["ISIC_0000005"] == "GISIC_0000005"
    assert groups["ISIC_0000004"] == "GISIC_0000001"


def test_identical_bytes_under_different_ids_are_one_group():
    """The same picture republished under a new id in another year must not sit on both sides."""
    meta = _meta(
        [("ISIC_0000001", "", "", "ABC"), ("ISIC_0000002", "", "", "abc"), ("ISIC_0000003", "", "", "x")]
    )
    groups = build_groups(meta, None)
    assert _same(groups, "ISIC_0000001", "ISIC_0000002")
    assert groups["ISIC_0000003"] != groups["ISIC_0000001"]


def test_listed_pair_with_both_ids_present_is_one_group():
    """The 2020 duplicates CSV pairs two different ids; both may still be in the metadata."""
    meta = _meta([("ISIC_0000001", "", "", "a"), ("ISIC_0000002", "", "", "b")])
    groups = build_groups(meta, _dups([("ISIC_0000002", "ISIC_0000001")]))
    assert _same(groups, "ISIC_0000001", "ISIC_0000002")


def test_dropped_id_links_kept_ids_through_its_own_keys_and_rows():
    """A dropped copy is gone from the metadata but its patient, bytes and listings still link."""
    meta = _meta(
        [
            ("ISIC_0000001", "", "", "k1"),
            ("ISIC_0000002", "P9", "", "k2"),
            ("ISIC_0000003", "", "", "k3"),
            ("ISIC_0000004", "", "", "k4"),
            ("ISIC_0000005", "", "", "k5"),
            ("ISIC_0000006", "", "", "k6"),
        ]
    )
    dups = _dups(
        [
            ("ISIC_0000090", "ISIC_0000001"),  # dropped 90 shares patient P9 with kept 2
            ("ISIC_0000091", "ISIC_0000003"),  # dropped 91 has the bytes of kept 4
            ("ISIC_0000092", "ISIC_0000005"),  # dropped 92 listed against two keepers
            ("ISIC_0000092", "ISIC_0000006"),
        ],
        patient_id=["P9", "", "", ""],
        sha256=["d90", "k4", "d92", "d92"],
    )
    groups = build_groups(meta, dups)
    assert _same(groups, "ISIC_0000001", "ISIC_0000002")
    assert _same(groups, "ISIC_0000003", "ISIC_0000004")
    assert _same(groups, "ISIC_0000005", "ISIC_0000006")
    assert groups.nunique() == 3
    assert set(groups.index) == set(meta["isic_id"]), "dropped ids are not part of the result"


def test_missing_keys_never_link_and_columns_do_not_collide():
    """Empty cells and NaN mean "unknown", not a shared patient; a patient id is not a lesion id."""
    meta = pd.DataFrame(
        {
            "isic_id": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004", "ISIC_0000005"],
            "patient_id": ["", None, np.nan, "X", " "],
            "lesion_id": ["", None, np.nan, "", "X"],
        }
    )
    groups = build_groups(meta, pd.DataFrame(columns=["isic_id", "kept_isic_id"]))
    assert groups.nunique() == 5
    assert list(groups) == [f"GISIC_000000{i}" for i in range(1, 6)]
    assert groups.name == "group_id" and groups.index.name == "isic_id"


def test_group_ids_do_not_depend_on_row_order():
    """Group ids name the smallest member, so shuffling the metadata changes nothing."""
    rng = np.random.default_rng(1)
    meta = _meta([(f"ISIC_{i:07d}", f"P{rng.integers(0, 30)}", "", f"h{i}") for i in range(200)])
    first = build_groups(meta, None)
    shuffled = build_groups(meta.sample(frac=1.0, random_state=3), None)
    pd.testing.assert_series_equal(first.sort_index(), shuffled.sort_index())
    smallest = meta.assign(g=first.to_numpy()).groupby("g")["isic_id"].min()
    assert all(g == "G" + s for g, s in smallest.items())


def test_sixty_thousand_rows_group_quickly():
    """The union of every ISIC year is about 60k images; grouping must not be the slow step."""
    n = 60_000
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 20_000, n)
    lesions = rng.integers(0, 40_000, n)
    meta = pd.DataFrame(
        {
            "isic_id": [f"ISIC_{i:07d}" for i in range(n)],
            "patient_id": np.where(patients % 3 == 0, "", np.char.add("P", patients.astype(str))),
            "lesion_id": np.where(lesions % 2 == 0, "", np.char.add("L", lesions.astype(str))),
            "sha256": [f"h{i}" for i in range(n)],
        }
    )
    dups = _dups([(f"ISIC_{9_000_000 + i:07d}", f"ISIC_{i * 7:07d}") for i in range(2_000)])
    start = time.perf_counter()
    groups = build_groups(meta, dups)
    print(f"build_groups on {n} rows: {time.perf_counter() - start:.3f} s")
    assert len(groups) == n
    # Every patient must sit in exactly one group.
    with_patient = meta["patient_id"] != ""
    per_patient = (
        pd.Series(groups.to_numpy()[with_patient.to_numpy()])
        .groupby(meta.loc[with_patient, "patient_id"].to_numpy())
        .nunique()
    )
    assert per_patient.max() == 1


def _reference_groups(meta: pd.DataFrame, dups: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, str]:
    """The grouping rule spelled out plainly: a union-find over every record, key by key."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    def clean(value: object) -> str:
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()

    records = [(clean(r.isic_id), "", r) for r in meta.itertuples()]
    records += [(clean(r.isic_id), clean(r.kept_isic_id), r) for r in dups.itertuples()]
    records += [(clean(r.isic_id_b), clean(r.isic_id_a), None) for r in pairs.itertuples()]
    holder: dict[tuple[str, str], str] = {}
    for isic_id, kept, row in records:
        if not isic_id:
            continue
        find(isic_id)
        if kept:
            union(isic_id, kept)
        for column in ("patient_id", "lesion_id", "sha256"):
            key = clean(getattr(row, column, "")) if row is not None else ""
            key = key.lower() if column == "sha256" else key
            if key:
                union(isic_id, holder.setdefault((column, key), isic_id))
    ids = [clean(i) for i in meta["isic_id"]]
    smallest: dict[str, str] = {}
    for isic_id in ids:
        root = find(isic_id)
        smallest[root] = min(smallest.get(root, isic_id), isic_id)
    return {isic_id: "G" + smallest[find(isic_id)] for isic_id in ids}


def test_groups_match_a_plain_union_find_on_arrow_and_object_text():
    """The numbered keys give the groups of a plain union-find over the cleaned keys, whether the
    table comes as Arrow-backed text (layout.read_table), as shared Python strings
    (layout.read_table_chunks' chunks made objects) or with values to clean (spaces, capitals, NaN)."""
    rng = np.random.default_rng(7)
    n = 3_000
    patients = rng.integers(0, 400, n)
    lesions = rng.integers(0, 2_500, n)
    hashes = rng.integers(0, 2_900, n)
    meta = pd.DataFrame({
        "isic_id": [f"ISIC_{i:07d}" for i in rng.permutation(n)],
        "patient_id": np.where(patients % 4 == 0, "", np.char.add("IP_", patients.astype(str))),
        "lesion_id": np.where(lesions % 3 == 0, "", np.char.add("IL_", lesions.astype(str))),
        "sha256": [f"{h:064x}" for h in hashes],
    })
    dirty = meta.astype(object).copy()
    dirty.loc[::97, "patient_id"] = [f" {v} " for v in dirty.loc[::97, "patient_id"]]
    dirty.loc[::89, "sha256"] = [v.upper() for v in dirty.loc[::89, "sha256"]]
    dirty.loc[::83, "lesion_id"] = np.nan
    dups = pd.DataFrame({"isic_id": [f"ISIC_9{i:06d}" for i in range(40)],
                         "kept_isic_id": [f"ISIC_{i * 61:07d}" for i in range(40)],
                         "sha256": [f"{h:064X}" for h in rng.integers(0, 2_900, 40)],
                         "patient_id": [""] * 20 + [f"IP_{p}" for p in rng.integers(0, 400, 20)]})
    pairs = pd.DataFrame({"isic_id_a": [f"ISIC_{i:07d}" for i in range(0, 300, 7)],
                          "isic_id_b": [f"ISIC_{i + 1500:07d}" for i in range(0, 300, 7)]})
    for frame in (meta, meta.astype("str"), meta.astype(object), dirty):
        for links, near in ((dups.iloc[:0], pairs.iloc[:0]), (dups, pairs), (dups.astype("str"), pairs)):
            groups = build_groups(frame, links if len(links) else None, near if len(near) else None)
            expected = _reference_groups(frame, links, near)
            assert groups.to_dict() == expected
            assert groups.nunique() < n


def test_group_codes_of_a_pool_equal_build_groups_and_the_plain_union_find():
    """Grouping on fixed-width bytes (what planning does since it holds no Python string per image)
    gives every image the group build_groups and a plain union-find give it, on keys to clean
    (spaces, capitals, NaN), ids that share a prefix, repeated ids and links through dropped copies;
    the group numbers order the groups as their ids."""
    rng = np.random.default_rng(11)
    n = 2_000
    patients, lesions, hashes = rng.integers(0, 300, n), rng.integers(0, 1_500, n), rng.integers(0, 1_900, n)
    ids = [f"ISIC_{i:07d}" for i in rng.permutation(n)]
    ids[5], ids[6] = "ISIC_00", "ISIC_00é"  # a prefix of others; a byte above ASCII
    meta = pd.DataFrame({
        "isic_id": ids,
        "patient_id": np.where(patients % 4 == 0, "", np.char.add("IP_", patients.astype(str))),
        "lesion_id": np.where(lesions % 3 == 0, "", np.char.add("IL_", lesions.astype(str))),
        "sha256": [f"{h:064x}" for h in hashes],
    }).astype(object)
    meta.loc[::97, "patient_id"] = [f" {v} " for v in meta.loc[::97, "patient_id"]]
    meta.loc[::89, "sha256"] = [v.upper() for v in meta.loc[::89, "sha256"]]
    meta.loc[::83, "lesion_id"] = np.nan
    meta.loc[::101, "isic_id"] = [f" {v}" for v in meta.loc[::101, "isic_id"]]
    dups = pd.DataFrame({"isic_id": [f"ISIC_9{i:06d}" for i in range(30)] + ["", "ISIC_9000000"],
                         "kept_isic_id": [f"ISIC_{i * 61:07d}" for i in range(30)] + ["ISIC_0000001", ""],
                         "sha256": [f"{h:064X}" for h in rng.integers(0, 1_900, 32)],
                         "patient_id": [""] * 16 + [f"IP_{p}" for p in rng.integers(0, 300, 16)]})
    pairs = pd.DataFrame({"isic_id_a": [f"ISIC_{i:07d}" for i in range(0, 200, 7)],
                          "isic_id_b": [f"ISIC_{i + 1000:07d}" for i in range(0, 200, 7)]})
    repeated = pd.concat([meta, meta.iloc[[3, 40]]], ignore_index=True)
    for frame in (meta, meta.iloc[:, :2], repeated):
        for links, near in ((dups.iloc[:0], pairs.iloc[:0]), (dups, pairs), (dups.iloc[:, :2], pairs)):
            pool = pool_from_frame(frame, "benign_malignant")
            numbers, names = group_codes(pool.ids, pool.keys, links if len(links) else None,
                                         near if len(near) else None)
            assert list(names) == sorted(names) and len(set(names)) == len(names)
            got = dict(zip((v.decode() for v in pool.ids.tolist()), names[numbers], strict=True))
            assert got == _reference_groups(frame, links, near)
            assert got == build_groups(frame, links if len(links) else None, near if len(near) else None).to_dict()
    empty_id = meta.copy()
    empty_id.loc[4, "isic_id"] = " "
    pool = pool_from_frame(empty_id, "benign_malignant")
    with pytest.raises(ValueError, match="empty isic_id"):
        group_codes(pool.ids, pool.keys)
