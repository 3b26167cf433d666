"""Near-duplicates: exact candidate search, confirmed pairs on real JPEGs, caching, grouping and the check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from isic_assets.core.splits import image_signature, near_dup_quick_check, near_dup_search, near_dup_store
from isic_assets.core.splits import near_duplicates as nd
from isic_assets.core.splits.checks import leakage
from isic_assets.core.splits.grouping import build_groups
from isic_assets.core.splits.near_dup_store import SignatureStore
from isic_assets.core.transform.image_ops import TransformSettings, transform_bytes
from isic_assets.demo.isic2024 import tile_jpegs
from isic_assets.demo.synthetic import encode_jpeg, picture_rng, synth_dermoscopy

SIDE = 256


def test_search_returns_only_pairs_within_the_limits_finds_planted_ones_and_caps_partners():
    """Every candidate passes both limits (checked against all pairs); close planted pairs are all found."""
    rng = np.random.default_rng(7)
    n, views = 1500, 3
    keys = rng.integers(0, 2**64 - 1, (n, views), dtype=np.uint64)
    fine = rng.integers(0, 256, (n, views, 32), dtype=np.uint8)
    planted = {}
    for k in range(0, 200, 2):  # window k % views of image k is image k+1's whole picture, a few bits off
        view = k % views
        bits = np.unpackbits(fine[k, view])
        bits[rng.choice(256, k % 12, replace=False)] ^= 1
        fine[k + 1, 0] = np.packbits(bits)
        keys[k + 1, 0] = keys[k, view] ^ np.uint64(1 << int(rng.integers(64)))
        planted[(k + 1, k)] = view
    found, reads = near_dup_search.search(keys[:, 0], fine[:, 0], lambda lo, hi: (keys[lo:hi], fine[lo:hi]),
                                          max_distance=7, max_fine_distance=40, chunk_images=400)
    pairs = {(q, o): v for q, o, v in found[["query", "other", "view"]].itertuples(index=False)}
    assert planted.items() <= pairs.items()
    words = fine.view(np.uint64)
    for q, o, v, d in found.itertuples(index=False):  # the returned distance is the true one, within limits
        assert d == near_dup_search.popcount64(words[q, 0] ^ words[o, v]).sum() <= 40
        assert near_dup_search.popcount64(keys[q, 0] ^ keys[o, v]) <= 7
    assert 0 < reads < n * n * views  # far fewer entries read than all pairs of windows
    # With one partner per image, a chain of three near-identical images keeps only its closest links.
    crowd_fine = np.repeat(fine[:1, :1], 3, axis=0)
    crowd_fine[1, 0, 0] ^= 1
    crowd_fine[2, 0, 2:4] ^= 255
    crowd_keys = np.repeat(keys[:1, :1], 3, axis=0)
    capped, _ = near_dup_search.search(crowd_keys[:, 0], crowd_fine[:, 0], lambda lo, hi: (crowd_keys[lo:hi],
                                       crowd_fine[lo:hi]), max_distance=7, max_fine_distance=40, closest=1)
    assert {tuple(sorted(p)) for p in capped[["query", "other"]].itertuples(index=False)} == {(0, 1), (0, 2)}


def _reference_caps(hits_by_chunk: list[pd.DataFrame], closest: int) -> pd.DataFrame:
    """The partner caps as the search first applied them, with pandas: per chunk, then over all pairs."""
    found = []
    for hits in hits_by_chunk:
        chunk = hits.sort_values(["fine", "view"], kind="stable").drop_duplicates(["query", "other"])
        found.append(chunk[chunk.groupby("other").cumcount() < closest])
    table = pd.concat(found, ignore_index=True)
    table["a"] = np.minimum(table["query"], table["other"])
    table["b"] = np.maximum(table["query"], table["other"])
    table = table.sort_values(["a", "b", "fine", "view"], kind="stable").drop_duplicates(["a", "b"])
    table = table.sort_values(["fine", "a", "b"], kind="stable").reset_index(drop=True)
    rows = np.arange(len(table))
    sides = pd.DataFrame({"image": np.concatenate([table["a"], table["b"]]), "row": np.concatenate([rows, rows])})
    sides = sides.sort_values("row", kind="stable")
    best = np.full(len(table), np.iinfo(np.int64).max)
    np.minimum.at(best, sides["row"].to_numpy(), sides.groupby("image").cumcount().to_numpy())
    kept = table[best < closest].sort_values(["a", "b"], kind="stable")
    return kept[["query", "other", "view", "fine"]].reset_index(drop=True)


@pytest.mark.parametrize("closest", [1, 2, 4])
def test_the_partner_caps_equal_the_pandas_rules_they_replace(closest):
    """Crowded hits with many ties (equal distances, equal views, both orientations of a pair, repeats):
    the numpy caps keep exactly the rows, in the order, that the pandas version kept."""
    rng = np.random.default_rng(closest)
    chunks = []
    for _ in range(5):
        size = int(rng.integers(0, 400))
        query, other = rng.integers(0, 60, size), rng.integers(0, 60, size)
        keep = query != other
        chunks.append(pd.DataFrame({"query": query[keep], "other": other[keep],
                                    "view": rng.integers(0, 3, size)[keep], "fine": rng.integers(0, 6, size)[keep]}))
    capped = [near_dup_search._closest_in_chunk(*(chunk[c].to_numpy().astype(t) for c, t in
                                                  (("query", np.int32), ("other", np.int32),
                                                   ("view", np.int16), ("fine", np.int16))), closest)
              for chunk in chunks]
    for chunk, mine in zip(chunks, capped, strict=True):  # the per-chunk cap alone
        expected = chunk.sort_values(["fine", "view"], kind="stable").drop_duplicates(["query", "other"])
        expected = expected[expected.groupby("other").cumcount() < closest]
        assert [list(column) for column in mine] == [list(expected[c]) for c in ("query", "other", "view", "fine")]
    query, other, view, fine = (np.concatenate(column) for column in zip(*capped, strict=True))
    rows = near_dup_search._kept_pairs(query, other, view, fine, closest)
    expected = _reference_caps(chunks, closest)
    assert len(expected) > 20
    assert [list(query[rows]), list(other[rows]), list(view[rows]), list(fine[rows])] == \
        [list(expected[c]) for c in ("query", "other", "view", "fine")]


def _transformed(rgb: np.ndarray) -> bytes:
    return encode_jpeg(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA), 90)


def _copy(rgb: np.ndarray, crop: float, scale: float, gain: float, quality: int) -> np.ndarray:
    """The same photo re-exported: cropped, shrunk, brightened, re-encoded."""
    h, w = rgb.shape[:2]
    dy, dx = int(h * crop / 2), int(w * crop / 2)
    out = rgb[dy : h - dy, dx : w - dx]
    out = cv2.resize(out, (int(out.shape[1] * scale), int(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = cv2.convertScaleAbs(out, alpha=gain, beta=5)
    return cv2.imdecode(np.frombuffer(encode_jpeg(out, quality), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, pd.DataFrame, set[tuple[str, str]]]:
    """Twelve look-alike lesions, three of them re-exported under a new id, and one broken file."""
    root = tmp_path_factory.mktemp("data_transformed")
    (root / "images").mkdir()
    rows, planted = [], set()
    bases = [synth_dermoscopy(picture_rng(5, f"lesion{i}"), 400, 300) for i in range(12)]
    variants = {12: (0, 0.08, 0.6, 1.08, 70), 13: (3, 0.0, 0.5, 0.93, 62), 14: (7, 0.05, 0.85, 1.0, 95)}
    pictures = {i: _transformed(b) for i, b in enumerate(bases)}
    for new, (base, *how) in variants.items():
        pictures[new] = _transformed(_copy(bases[base], *how))
        planted.add((f"ISIC_{base:07d}", f"ISIC_{new:07d}"))
    pictures[15] = b"not a jpeg"
    for i, data in pictures.items():
        name = f"images/ISIC_{i:07d}.jpg"
        (root / name).write_bytes(data)
        rows.append({"isic_id": f"ISIC_{i:07d}", "image": name, "sha256": f"{i:064x}"})
    return root, pd.DataFrame(rows), planted


def test_planted_copies_are_found_and_look_alikes_are_not(archive, tmp_path):
    root, images, planted = archive
    report = nd.find_near_duplicates(images, root, tmp_path / "state")
    found = set(zip(report.pairs["isic_id_a"], report.pairs["isic_id_b"], strict=True))
    assert found == planted
    assert list(report.pairs.columns) == nd.PAIR_COLUMNS
    assert (report.pairs["method"] == nd.METHOD).all()
    assert report.unreadable == ("ISIC_0000015",)
    assert report.hashed == 15


def _edited(rgb: np.ndarray, window: tuple[float, float, float, float] = (0, 0, 1, 1), scale: float = 1.0,
            contrast: float = 1.0, brightness: float = 0.0, quality: int | None = None) -> np.ndarray:
    """``rgb`` cropped to ``window`` (x0, y0, x1, y1 as fractions), resized, recoloured and re-encoded."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = window
    out = rgb[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)]
    out = cv2.resize(out, (int(out.shape[1] * scale), int(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = np.clip(out.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)
    if quality is not None:
        out = cv2.imdecode(np.frombuffer(encode_jpeg(out, quality), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(out)


# Each edit kind at the far end of the range the search promises (crop up to 10% of each side, from
# any side; resize to 50%; contrast and brightness within 10%; JPEG quality down to 60).
EDITS = {
    "reencode": [{"quality": 60}, {"quality": 75}],
    "resize": [{"scale": 0.5}, {"scale": 0.9}],
    "crop": [{"window": (0.0, 0.0, 0.9, 0.9)}, {"window": (0.1, 0.1, 1.0, 1.0)}, {"window": (0.1, 0.0, 1.0, 0.9)},
             {"window": (0.0, 0.05, 0.9, 0.95)}, {"window": (0.05, 0.0, 0.95, 1.0)}],
    "colour": [{"contrast": 0.9, "brightness": 25.0}, {"contrast": 1.1, "brightness": -25.0}],
    "all": [{"window": (0.1, 0.0, 1.0, 0.9), "scale": 0.5, "contrast": 1.1, "brightness": -25.0, "quality": 60},
            {"window": (0.0, 0.1, 0.9, 1.0), "scale": 0.7, "contrast": 0.9, "brightness": 25.0, "quality": 70}],
}


def test_every_planted_copy_of_each_edit_kind_is_found_among_look_alikes(tmp_path):
    """A regression guard for recall and precision: one copy per edit above, among 30 look-alike lesions."""
    (tmp_path / "images").mkdir()
    planted: dict[tuple[str, str], str] = {}
    rows = []
    edits = [(kind, how) for kind, hows in EDITS.items() for how in hows]
    bases = [synth_dermoscopy(picture_rng(11, f"lesion{i}"), 400, 300) for i in range(30)]
    pictures = {f"ISIC_{i:07d}": _transformed(rgb) for i, rgb in enumerate(bases)}
    for k, (kind, how) in enumerate(edits):
        copy_id = f"ISIC_{100 + k:07d}"
        pictures[copy_id] = _transformed(_edited(bases[k], **how))
        planted[(f"ISIC_{k:07d}", copy_id)] = kind
    for isic_id, data in pictures.items():
        (tmp_path / "images" / f"{isic_id}.jpg").write_bytes(data)
        rows.append({"isic_id": isic_id, "image": f"images/{isic_id}.jpg", "sha256": isic_id})
    report = nd.find_near_duplicates(pd.DataFrame(rows), tmp_path, tmp_path / "state")
    found = set(zip(report.pairs["isic_id_a"], report.pairs["isic_id_b"], strict=True))
    missed = {kind: sorted(p for p, k in planted.items() if k == kind and p not in found) for kind in EDITS}
    assert not any(missed.values()), f"planted copies not found, by edit: {missed}"
    assert found - planted.keys() == set(), "look-alike lesions reported as copies"


def test_a_rerun_hashes_and_checks_nothing_again(archive, tmp_path):
    root, images, _ = archive
    first = nd.find_near_duplicates(images, root, tmp_path / "state")
    again = nd.find_near_duplicates(images, root, tmp_path / "state")
    assert again.hashed == 0 and again.confirmed_checked == 0
    pd.testing.assert_frame_equal(first.pairs, again.pairs)
    # A changed image (new sha256) is hashed again, alone.
    changed = images.assign(sha256=images["sha256"].where(images["isic_id"] != "ISIC_0000003", "f" * 64))
    third = nd.find_near_duplicates(changed, root, tmp_path / "state")
    assert third.hashed == 1


def test_the_store_reads_any_rows_in_any_order_and_keeps_only_what_it_is_told(archive, tmp_path, monkeypatch):
    """Rows are read with pread, a run of consecutive records at a time (runs capped here at 3 records):
    scattered, repeated, unordered and consecutive rows all give the records the file holds."""
    root, images, _ = archive
    store = SignatureStore(tmp_path / "signatures.bin")
    store.add_missing(images, root, lambda _m: None, processes=1)
    on_disk = np.fromfile(store.path, dtype=store.dtype)
    monkeypatch.setattr(near_dup_store, "_COPY_ROWS", 3)
    rows = np.array([7, 0, 1, 2, 3, 4, 5, 13, 7, 6, 12, 0])
    for field in ("keys", "fine", "thumb"):
        expected = on_disk[field][rows]
        expected = expected.astype(np.uint64) if field == "keys" else expected
        np.testing.assert_array_equal(store.read(rows, field), expected)
    assert len(store.read(np.array([], dtype=np.int64), "thumb")) == 0
    reopened = SignatureStore(store.path)  # the sha256 column, read 3 records at a time
    assert list(reopened.rows(images["sha256"].iloc[:14])) == list(range(14))
    with pytest.raises(ValueError, match="shorter than its index"):
        store.read(np.array([len(on_disk)]), "thumb")

    # keep_only rewrites the file once most of it is of other images (here 10 of 200 records)
    records = np.zeros(200, dtype=store.dtype)
    records["sha256"] = [f"{i:064x}".encode() for i in range(200)]
    records["thumb"] = np.random.default_rng(0).integers(0, 256, records["thumb"].shape)
    big = tmp_path / "big.bin"
    records.tofile(big)
    keep = [f"{i:064x}" for i in range(5, 200, 20)]
    SignatureStore(big).keep_only(keep)
    assert np.fromfile(big, dtype=store.dtype).tobytes() == records[5::20].tobytes()
    assert list(SignatureStore(big).rows(keep)) == list(range(10))


def test_the_sha256_lookup_takes_the_first_of_repeated_records_and_names_bad_values(tmp_path):
    """The store looks sha256 up by binary search on its sorted column: a sha256 recorded twice (a
    store written by an older run) is found at its first row and keep_only keeps that one; an
    unknown sha256 is a KeyError, one longer than a record holds an error naming the image."""
    records = np.zeros(130, dtype=near_dup_store.record_dtype())
    shas = [f"{(i * 7919) % 100:064x}" for i in range(130)]  # rows 100..129 repeat rows 0..29's values
    records["sha256"] = [sha.encode() for sha in shas]
    records["thumb"] = np.arange(130)[:, None, None] % 251
    path = tmp_path / "repeated.bin"
    records.tofile(path)
    store = SignatureStore(path)
    assert list(store.rows([shas[105], shas[5], shas[99]])) == [5, 5, 99]
    with pytest.raises(KeyError):
        store.rows([f"{999:064x}"])
    store.keep_only(shas[:40:3])  # 14 distinct values kept: the file is rewritten with their first rows
    assert np.fromfile(path, dtype=store.dtype).tobytes() == records[:40:3].tobytes()
    images = pd.DataFrame({"isic_id": ["ISIC_0000001"], "image": ["a.jpg"], "sha256": ["f" * 65]})
    with pytest.raises(ValueError, match=r"ISIC_0000001: sha256 'f{65}' is longer than 64 characters"):
        store.add_missing(images, tmp_path, lambda _m: None, processes=1)


def test_image_columns_read_in_chunks_equal_the_table_and_keep_the_first_row_of_an_id(archive, tmp_path):
    """The step reads its three columns as bytes a chunk at a time (no Python string per image):
    the same columns as from the whole table, one row per id (its first), and the same pairs."""
    root, images, _ = archive
    doubled = pd.concat([images, images.iloc[[3]].assign(image="elsewhere.jpg")], ignore_index=True)
    table = tmp_path / "metadata.csv"
    doubled.assign(extra="x").to_csv(table, index=False)
    read = near_dup_store.ImageColumns.read(table, rows=4)
    whole = near_dup_store.ImageColumns.of(doubled)
    for name in ("ids", "paths", "shas"):
        np.testing.assert_array_equal(getattr(read, name), getattr(whole, name))
    first = read.first_of_each_id()
    assert len(first) == len(images) and b"elsewhere.jpg" not in set(first.paths)
    no_digest = tmp_path / "no_digest.csv"
    doubled.drop(columns=["sha256"]).to_csv(no_digest, index=False)
    with pytest.raises(ValueError, match=r"no_digest\.csv: the image table has no sha256 column"):
        near_dup_store.ImageColumns.read(no_digest)
    from_columns = nd.find_near_duplicates(read, root, tmp_path / "state")
    from_table = nd.find_near_duplicates(doubled, root, tmp_path / "state2")
    pd.testing.assert_frame_equal(from_columns.pairs, from_table.pairs)
    assert len(from_columns.pairs) and from_columns.images == from_table.images == len(images) - 1  # one broken
    assert from_columns.unreadable == from_table.unreadable == ("ISIC_0000015",)


def test_a_torn_signature_record_is_cut_off_and_that_image_hashed_again(archive, tmp_path):
    """A run killed mid-append leaves part of a record: the next run drops it, keeps the rest, finds the same pairs."""
    root, images, planted = archive
    state = tmp_path / "state"
    nd.find_near_duplicates(images, root, state)
    store = state / nd.HASHES_STATE
    store.write_bytes(store.read_bytes()[:-100])  # the last record cut short
    again = nd.find_near_duplicates(images, root, state)
    assert again.hashed == 1
    assert set(zip(again.pairs["isic_id_a"], again.pairs["isic_id_b"], strict=True)) == planted
    assert store.stat().st_size % SignatureStore(store).dtype.itemsize == 0


def test_pairs_join_one_leakage_group_and_the_check_sees_them():
    metadata = pd.DataFrame({"isic_id": ["ISIC_1", "ISIC_2", "ISIC_3"], "patient_id": ["", "", ""]})
    pairs = pd.DataFrame({"isic_id_a": ["ISIC_1"], "isic_id_b": ["ISIC_3"], "distance": ["4"],
                          "method": [nd.METHOD], "similarity": ["0.99"]})
    groups = build_groups(metadata, None, pairs)
    assert groups["ISIC_1"] == groups["ISIC_3"] != groups["ISIC_2"]
    manifest = pd.DataFrame({"isic_id": ["ISIC_1", "ISIC_2", "ISIC_3"], "split": ["train", "train", "test"]})
    failed = leakage(manifest, metadata, None, near_duplicates=pairs)
    assert not failed.passed
    assert failed.measured["leaking_keys"]["near_duplicate"] == 1
    assert failed.offending[0]["isic_ids"] == ["ISIC_1", "ISIC_3"]
    assert leakage(manifest, metadata, None).passed  # without the pairs the same manifest looks clean


def test_drop_keeps_the_smallest_id_of_each_chain():
    pairs = pd.DataFrame({"isic_id_a": ["ISIC_2", "ISIC_1", "ISIC_7"], "isic_id_b": ["ISIC_3", "ISIC_2", "ISIC_8"]})
    dropped = nd.to_drop(pairs, ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_7"])
    assert dropped.to_dict(orient="records") == [
        {"isic_id": "ISIC_2", "kept_isic_id": "ISIC_1", "reason": "near_duplicate"},
        {"isic_id": "ISIC_3", "kept_isic_id": "ISIC_1", "reason": "near_duplicate"},
    ]


# ----------------------------------------------------------------------------------------------
# a real Dagster run: near_duplicates feeding balanced_splits and its no_leakage check


def _data_dir(tmp_path: Path) -> Path:
    """A data root as transformed_images leaves it: 24 lesions, 4 of them also present as a planted copy."""
    import dagster as dg  # noqa: F401  (the run below needs it; imported here to keep the unit tests light)

    root = tmp_path / "data"
    images = root / "data_transformed" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(28):
        base = i if i < 24 else i - 24
        rgb = synth_dermoscopy(picture_rng(9, f"lesion{base}"), 400, 300)
        data = _transformed(rgb if i < 24 else _copy(rgb, 0.06, 0.7, 1.05, 75))
        (images / f"ISIC_{i:07d}.jpg").write_bytes(data)
        rows.append({"isic_id": f"ISIC_{i:07d}", "benign_malignant": "malignant" if base % 2 else "benign",
                     "patient_id": "", "lesion_id": "", "sources": "isic2016", "copyright_license": "CC-0",
                     "attribution": "demo", "image": f"images/ISIC_{i:07d}.jpg", "sha256": f"{i:064x}"})
    pd.DataFrame(rows).to_csv(root / "data_transformed" / "metadata.csv", index=False)
    (root / "merged_data").mkdir()
    pd.DataFrame(columns=["isic_id", "kept_isic_id", "reason"]).to_csv(root / "merged_data" / "duplicates.csv",
                                                                       index=False)
    return root


@pytest.mark.parametrize("mode", ["group", "drop"])
def test_dagster_run_groups_or_drops_the_pairs_and_the_check_rereads_them(tmp_path, mode):
    import dagster as dg

    from isic_assets.definitions import defs
    from isic_assets.defs.resources import IsicSettings

    root = _data_dir(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], instance=instance,
            resources={"isic": IsicSettings(data_dir=str(root), sources="isic2016")},
            selection=["near_duplicates", "balanced_splits"],
            run_config={"ops": {"balanced_splits": {"config": {"strategy": "none", "near_duplicates": mode}}}},
            raise_on_error=False,
        )
    assert result.success
    pairs = pd.read_csv(root / "merged_data" / "near_duplicates.csv", dtype=str)
    assert set(zip(pairs["isic_id_a"], pairs["isic_id_b"], strict=True)) == {
        (f"ISIC_{i:07d}", f"ISIC_{i + 24:07d}") for i in range(4)
    }
    events = {e.asset_key.to_user_string(): e.materialization.metadata
              for e in result.get_asset_materialization_events()}
    assert events["near_duplicates"]["pairs"].value == 4
    assert events["near_duplicates"]["review_sheet"].value.count("data:image/jpeg;base64,") == 4
    manifest = pd.read_csv(root / "neural_network_data" / "manifest.csv", dtype=str).set_index("isic_id")
    if mode == "group":
        for i in range(4):
            assert manifest.loc[f"ISIC_{i:07d}", "group_id"] == manifest.loc[f"ISIC_{i + 24:07d}", "group_id"]
    else:
        assert not manifest.index.isin([f"ISIC_{i:07d}" for i in range(24, 28)]).any()
        assert events["balanced_splits"]["excluded"].value["near_duplicate"] == 4
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["no_leakage"] is True
    # A pair the splits did not respect (here: added afterwards) must fail the re-derived check.
    placed = manifest.reset_index()
    a = placed.loc[placed["split"] == "train", "isic_id"].iloc[0]
    b = placed.loc[placed["split"] == "test", "isic_id"].iloc[0]
    pd.concat([pairs, pd.DataFrame([{"isic_id_a": min(a, b), "isic_id_b": max(a, b), "distance": "3",
                                     "method": nd.METHOD, "similarity": "0.99"}])]).to_csv(
        root / "merged_data" / "near_duplicates.csv", index=False)
    from isic_assets.defs.checks import no_leakage

    # The check alone, in a run of its own: its input changed, so it is evaluated again, not re-emitted.
    with dg.instance_for_test() as instance:
        again = dg.materialize(
            [*defs.assets, *defs.asset_checks], instance=instance,
            resources={"isic": IsicSettings(data_dir=str(root), sources="isic2016")},
            selection=dg.AssetSelection.checks(no_leakage), raise_on_error=False,
        )
    [outcome] = [e for e in again.get_asset_check_evaluations() if e.check_name == "no_leakage"]
    assert not outcome.passed
    assert outcome.metadata["leaking_keys"].value["near_duplicate"] == 1


def test_window_hashes_equal_a_resize_and_a_dct_per_window():
    """The two matrix products give each window's hash as cropping, resizing and ``cv2.dct`` per window do."""
    for i in range(4):
        grey = cv2.cvtColor(synth_dermoscopy(picture_rng(3, f"lesion{i}"), 400, 300), cv2.COLOR_RGB2GRAY)
        keys, fine = image_signature.view_signatures(grey)
        base = image_signature.base(grey).astype(np.float32)
        for view, window in enumerate(image_signature.VIEWS):
            dct = cv2.dct(cv2.resize(image_signature.crop_view(base, window), (64, 64),
                                     interpolation=cv2.INTER_LINEAR))
            low, wide = dct[:8, :8].ravel(), dct[:16, :16].ravel()
            expected_key = np.packbits(low > np.median(low)).view(">u8")[0]
            expected_fine = np.packbits(wide > np.median(wide))
            # a coefficient equal to the median (float rounding of the product order) may flip one bit
            assert image_signature.hamming(np.array([keys[view]]), np.array([expected_key]))[0] <= 1
            assert image_signature.fine_distance(fine[view], expected_fine) <= 1


def test_hashing_in_two_processes_writes_the_records_of_one(archive, tmp_path, monkeypatch):
    root, images, _ = archive
    monkeypatch.setattr(near_dup_store, "_HASH_BATCH", 4)  # several batches from 16 images
    stores = {}
    for processes in (1, 2):
        store = SignatureStore(tmp_path / f"{processes}.bin")
        hashed, unreadable = store.add_missing(images, root, lambda _m: None, processes=processes)
        assert (hashed, unreadable) == (15, {"ISIC_0000015"})
        stores[processes] = np.sort(np.fromfile(store.path, dtype=store.dtype), order="sha256")
    assert stores[1].tobytes() == stores[2].tobytes()


def _tile_pictures(count: int) -> list[np.ndarray]:
    """The first synthetic ISIC 2024 tiles, decoded (RGB)."""
    return [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            for data in tile_jpegs(count)]


def test_the_quick_check_rejects_look_alike_tiles_and_passes_their_copies(tmp_path):
    """The ISIC 2024 mirror's tiles share their smooth outline with the candidates the search finds for
    them; a band-passed correlation of the thumbnails passed most of those on to the slow confirmation
    (docs/PERFORMANCE.md 13). Phase correlation rejects them and keeps copies of tiles."""
    settings = TransformSettings()
    tiles = _tile_pictures(500)
    copies = {0: {"window": (0.08, 0.0, 1.0, 0.92), "scale": 0.9, "quality": 70},
              1: {"scale": 0.6, "contrast": 1.1, "brightness": -20.0, "quality": 60},
              2: {"window": (0.0, 0.05, 0.94, 1.0), "contrast": 0.92, "brightness": 15.0, "quality": 85}}
    pictures = [*tiles, *(_edited(tiles[k], **how) for k, how in copies.items())]
    items = []
    for i, rgb in enumerate(pictures):
        jpeg, _ = transform_bytes(encode_jpeg(rgb, 95), settings)
        (tmp_path / f"{i}.jpg").write_bytes(jpeg)
        items.append((str(i), str(tmp_path / f"{i}.jpg"), f"{i:064x}"))
    records, failed = near_dup_store.hash_batch(items)
    assert not failed
    keys, fine = records["keys"].astype(np.uint64), records["fine"]
    found, _ = near_dup_search.search(keys[:, 0], fine[:, 0], lambda lo, hi: (keys[lo:hi], fine[lo:hi]),
                                      max_distance=nd.DEFAULT_MAX_DISTANCE,
                                      max_fine_distance=nd.DEFAULT_MAX_FINE_DISTANCE)
    thumbs = records["thumb"]
    scores = near_dup_quick_check.scores(thumbs[found["other"].to_numpy()], thumbs[found["query"].to_numpy()],
                                         found["view"].to_numpy())
    pairs = [tuple(sorted(p)) for p in found[["query", "other"]].itertuples(index=False)]
    planted = {(k, len(tiles) + n) for n, k in enumerate(copies)}
    passed = {pair for pair, score in zip(pairs, scores, strict=True) if score >= near_dup_quick_check.MIN_QUICK}
    assert planted <= set(pairs), "a copy of a tile did not reach the candidates"
    assert len(set(pairs) - planted) >= 5, "too few look-alike candidates for the test to mean anything"

    assert passed == planted


def _phase_surface_reference(windowed: np.ndarray, others: np.ndarray, views: np.ndarray) -> np.ndarray:
    """The quick score as first written: the whole inverse FFT of the whitened cross spectrum, its
    highest value within SHIFT pixels of no shift."""
    qc = near_dup_quick_check
    band, taper, weight = qc._filters()
    keep = np.r_[0 : qc.SHIFT + 1, qc.THUMB_SIDE - qc.SHIFT : qc.THUMB_SIDE]
    a = np.fft.rfft2(qc._windows(windowed, views).astype(np.float64) * taper)
    cross = a * np.conj(np.fft.rfft2(others.astype(np.float64) * taper))
    cross *= band / np.maximum(np.abs(cross), 1e-12)
    surface = np.fft.irfft2(cross, s=(qc.THUMB_SIDE, qc.THUMB_SIDE))[:, keep][:, :, keep]
    return surface.reshape(len(views), -1).max(axis=1) * qc.THUMB_SIDE**2 / weight


def test_quick_scores_equal_the_inverse_fft_and_are_the_same_in_forked_slices(tmp_path, monkeypatch):
    """The score is read off the inverse transform at 25 shifts only (a matrix product on the band's
    entries) and each query's thumbnail is transformed once: the scores equal the whole inverse FFT's
    (within one step of the 4-decimal rounding), and slices checked by two forked workers give the
    scores of one process."""
    tiles = _tile_pictures(120)
    items = []
    for i, rgb in enumerate(tiles):
        (tmp_path / f"{i}.jpg").write_bytes(encode_jpeg(rgb, 95))
        items.append((str(i), str(tmp_path / f"{i}.jpg"), f"{i:064x}"))
    store = SignatureStore(tmp_path / "store.bin")
    images = pd.DataFrame({"isic_id": [i for i, _, _ in items], "image": [f"{i}.jpg" for i, _, _ in items],
                           "sha256": [sha for _, _, sha in items]})
    store.add_missing(images, tmp_path, lambda _m: None, processes=1)
    rows = store.rows(images["sha256"])
    thumbs = store.read(rows, "thumb")
    rng = np.random.default_rng(3)
    query = np.repeat(np.arange(120), 4)  # four partners a query, as the search keeps them
    other = rng.integers(0, 120, len(query))
    other[::9] = query[::9]  # some pairs are a picture against itself: 1.0
    view = rng.integers(0, len(image_signature.VIEWS), len(query)).astype(np.int16)
    view[::9] = 0
    found = pd.DataFrame({"query": query, "other": other, "view": view})

    expected = _phase_surface_reference(thumbs[other], thumbs[query], view)
    once = nd._quick_scores(store, rows, found, processes=1)
    assert np.abs(once - expected).max() <= 1e-4 + 1e-9
    assert (once[::9] == 1.0).all() and (once < near_dup_quick_check.MIN_QUICK).mean() > 0.5

    monkeypatch.setattr(nd, "_QUICK_SLICE", 37)  # 13 slices over two workers, back in any order
    assert np.array_equal(nd._quick_scores(store, rows, found, processes=2), once)
    assert nd._QUICK is None


def test_two_different_pictures_bent_onto_each_other_are_not_confirmed_but_a_re_export_is(tmp_path):
    """Two different demo pictures of one size (1024x682, seed 0) share the grid their skin texture
    was upsampled on: after the affine fit their fine detail correlates at 0.92, over
    ``min_similarity``, and only the aligned phase tells them apart. A re-export of one of them
    (a slight crop, 75% of the size, JPEG q87: the demo's own recipe) stays a pair."""
    from isic_assets.demo.plan import Picture
    from isic_assets.demo.writing import render_picture

    first, second = Picture("ISIC_3216139", 1024, 682), Picture("ISIC_8451858", 1024, 682)
    re_export = Picture("near:ISIC_9999999", 768, 512, "near_duplicate", first, 87)
    rows = []
    for isic_id, picture in (("ISIC_3216139", first), ("ISIC_8451858", second), ("ISIC_9999999", re_export)):
        jpeg, _ = transform_bytes(render_picture(picture, 0), TransformSettings())
        (tmp_path / f"{isic_id}.jpg").write_bytes(jpeg)
        rows.append({"isic_id": isic_id, "image": f"{isic_id}.jpg", "sha256": isic_id.encode().hex().ljust(64, "0")})
    report = nd.find_near_duplicates(pd.DataFrame(rows), tmp_path, tmp_path / "state")

    found = set(zip(report.pairs["isic_id_a"], report.pairs["isic_id_b"], strict=True))
    assert found == {("ISIC_3216139", "ISIC_9999999")}
    checked = [json.loads(line) for line in (tmp_path / "state" / nd.CHECKS_STATE).read_text().splitlines()]
    look_alike = [c for c in checked if rows[1]["sha256"] in c["pair"] and rows[2]["sha256"] not in c["pair"]]
    assert look_alike, "the two different pictures were not even candidates: the test means nothing"
    assert max(c["similarity"] for c in look_alike) >= nd.DEFAULT_MIN_SIMILARITY  # the detail alone passes
    assert max(c["phase"] for c in look_alike) < nd.MIN_ALIGNED_PHASE


def test_image_columns_read_an_empty_table_and_name_a_bad_digest_in_a_later_chunk(tmp_path):
    """The two-pass read: a header without rows is no images; a sha256 too long for a record, in the
    third chunk, is named with its file and id as the whole-table read names it."""
    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=["isic_id", "image", "sha256"]).to_csv(empty, index=False)
    assert len(near_dup_store.ImageColumns.read(empty, rows=2)) == 0
    ids = [f"ISIC_{i:07d}" for i in range(6)]
    digests = [f"{i:064x}" for i in range(6)]
    digests[5] = "e" * 65
    table = tmp_path / "metadata.csv"
    pd.DataFrame({"isic_id": ids, "image": [f"images/{i}.jpg" for i in ids], "sha256": digests}).to_csv(
        table, index=False)
    with pytest.raises(ValueError, match=r"metadata\.csv: ISIC_0000005: sha256 'e{65}' is longer than 64"):
        near_dup_store.ImageColumns.read(table, rows=2)
