"""ISIC 2024 (SLICE-3D) as a source: both published layouts, HDF5 members, each bad input, the whole graph.

Inputs are real files: HDF5 written with h5py, zips with zipfile, JPEGs encoded by Pillow, CSVs with
the real 55-column header (isic_assets.demo.isic2024).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import pandas as pd
import pytest

from isic_assets.core import layout
from isic_assets.core.merge import member_source
from isic_assets.core.merge.harmonize import HarmonizeError
from isic_assets.core.merge.harmonize.isic2024 import harmonize_isic2024
from isic_assets.core.merge.member_source import (
    Hdf5Members,
    UnreadableImages,
    container_kind,
    open_image_file,
)
from isic_assets.core.merge.merge_sources import SourceArchive, merge_sources
from isic_assets.core.merge.zip_stream import ZipLimits
from isic_assets.core.splits.assign import SplitConfig, select_image_types
from isic_assets.definitions import defs
from isic_assets.defs.resources import IsicSettings
from isic_assets.demo.isic2024 import (
    HEADER_2024,
    generate_isic2024_mirror,
    isic_ids,
    metadata_rows,
    tile_jpegs,
    write_hdf5,
)
from isic_assets_tests.demo_support import copy_demo_mirror

N = 40


def _kaggle(tmp_path: Path, n: int = N) -> dict[str, Path]:
    generate_isic2024_mirror(tmp_path, n)
    return {"images": tmp_path / "train-image.hdf5", "metadata": tmp_path / "train-metadata.csv"}


def _merge(tmp_path: Path, files: dict[str, Path], name: str = "s2024"):
    source = SourceArchive(name=name, format="isic2024", order=0, files=files)
    return merge_sources([source], tmp_path / "merged", log=lambda _m: None)


def _rows(n: int = N, malignant: int = 2) -> tuple[list[str], list[list[str]]]:
    ids = isic_ids(n, seed=3)
    return ids, list(metadata_rows(ids, patients=4, malignant=malignant, seed=3))


def _write_csv(path: Path, rows: list[list[str]], header=HEADER_2024) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------
# containers


def test_container_is_told_by_content_not_name(tmp_path):
    hdf5_named_zip = tmp_path / "images.zip"
    write_hdf5(hdf5_named_zip, iter([("ISIC_0000001", next(tile_jpegs(1)))]))
    zip_named_hdf5 = tmp_path / "train-image.hdf5"
    with zipfile.ZipFile(zip_named_hdf5, "w") as archive:
        archive.writestr("ISIC_0000001.jpg", next(tile_jpegs(1)))
    with_user_block = tmp_path / "userblock.bin"
    with h5py.File(with_user_block, "w", userblock_size=512) as handle:
        handle.create_dataset("ISIC_0000001", data=np.bytes_(next(tile_jpegs(1))))
    assert container_kind(hdf5_named_zip) == "hdf5"
    assert container_kind(zip_named_hdf5) == "zip"
    assert container_kind(with_user_block) == "hdf5"
    assert isinstance(open_image_file(with_user_block, ZipLimits()), Hdf5Members)
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(UnreadableImages, match=r"junk\.hdf5"):
        container_kind(junk)


@pytest.mark.parametrize("open_at_once", [25_000, 2])
def test_every_byte_layout_reads_back_and_bad_objects_are_refused(tmp_path, monkeypatch, open_at_once):
    """Also with a fresh file handle every 2 datasets (the listing reopens the file every
    ``_OPEN_AT_ONCE`` so HDF5's cache of opened headers stays small): the same entries, in order."""
    monkeypatch.setattr(member_source, "_OPEN_AT_ONCE", open_at_once)
    tiles = list(tile_jpegs(3))
    path = tmp_path / "t.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("ISIC_0000001", data=np.bytes_(tiles[0]))
        handle.create_dataset("ISIC_0000002", data=np.void(tiles[1]))
        handle.create_dataset("ISIC_0000003", data=np.frombuffer(tiles[2], dtype=np.uint8))
        handle.create_dataset("ISIC_0000004", data=np.zeros((4, 4), dtype=np.float32))
        handle.create_dataset("thumbnail_ISIC_0000001", data=np.bytes_(tiles[0]))
        handle.create_group("ISIC_0000005")
    members = Hdf5Members(path, ZipLimits())
    entries = members.entries()
    assert [e.name for e in entries] == ["ISIC_0000001.jpg", "ISIC_0000002.jpg", "ISIC_0000003.jpg"]
    reads = {r.entry.name: r.data for r in members.iter_bytes(entries)}
    assert reads == {"ISIC_0000001.jpg": tiles[0], "ISIC_0000002.jpg": tiles[1], "ISIC_0000003.jpg": tiles[2]}
    assert members.read("ISIC_0000002.jpg") == tiles[1]
    refused = {r.name: r.reason for r in members.refused()}
    assert refused == {"ISIC_0000004": "not_image_bytes", "thumbnail_ISIC_0000001": "not_an_isic_id",
                       "ISIC_0000005": "not_a_dataset"}


def test_plain_datasets_are_read_at_their_address_and_the_rest_through_h5py(tmp_path):
    """Contiguous |S datasets (the Kaggle file's) are listed with their file address and read with
    one pread; chunked or compressed ones, and every dataset of a file changed since it was listed,
    go through h5py: the bytes are the same either way."""
    tiles = list(tile_jpegs(4))
    path = tmp_path / "t.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("ISIC_0000001", data=np.bytes_(tiles[0]))
        # Stored with two NULs of padding, which h5py's read drops: so must the address read.
        handle.create_dataset("ISIC_0000002", data=np.array(tiles[1] + b"\0\0", dtype=f"S{len(tiles[1]) + 2}"))
        handle.create_dataset("ISIC_0000003", data=np.frombuffer(tiles[2], dtype=np.uint8), chunks=(512,),
                              compression="gzip")
        handle.create_dataset("ISIC_0000004", data=np.bytes_(tiles[3]))
    members = Hdf5Members(path, ZipLimits())
    entries = {e.name: e for e in members.entries()}
    assert [e.header_offset >= 0 for e in entries.values()] == [True, True, False, True]
    expected = {"ISIC_0000001.jpg": tiles[0], "ISIC_0000002.jpg": tiles[1], "ISIC_0000003.jpg": tiles[2],
                "ISIC_0000004.jpg": tiles[3]}
    assert {r.entry.name: r.data for r in members.iter_bytes(entries.values())} == expected
    assert {name: members.read(name) for name in entries} == expected

    # The file is rewritten after the listing: the listed addresses no longer hold these bytes.
    with h5py.File(path, "a") as handle:
        del handle["ISIC_0000001"]
        handle.create_dataset("ISIC_0000001", data=np.bytes_(tiles[3]))
    reads = {r.entry.name: r.data for r in members.iter_bytes(entries.values())}
    assert reads["ISIC_0000001.jpg"] == tiles[3] and reads["ISIC_0000004.jpg"] == tiles[3]


def test_an_oversized_dataset_is_not_read(tmp_path):
    path = tmp_path / "t.hdf5"
    write_hdf5(path, iter([("ISIC_0000001", b"\xff\xd8" + b"x" * 5000)]))
    members = Hdf5Members(path, ZipLimits(max_member_bytes=1000))
    [read] = list(members.iter_bytes(members.entries()))
    assert read.data is None and "max_member_bytes" in read.error


def test_a_truncated_hdf5_is_a_clear_error_naming_the_file(tmp_path):
    files = _kaggle(tmp_path)
    data = files["images"].read_bytes()
    files["images"].write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImages, match=r"train-image\.hdf5.*truncated"):
        _merge(tmp_path, files)


# ----------------------------------------------------------------------------------------------
# both layouts


def test_kaggle_layout_merges_with_typed_columns(tmp_path):
    files = _kaggle(tmp_path)
    report = _merge(tmp_path, files)
    frame = report.metadata
    rows = pd.read_csv(files["metadata"])
    assert len(frame) == N and report.quarantine.empty
    assert set(frame["image_type"]) == {"TBP tile: close-up"}
    assert (frame["benign_malignant"] == "malignant").sum() == (rows["target"] == 1).sum()
    assert frame.set_index("isic_id")["patient_id"].to_dict() == rows.set_index("isic_id")["patient_id"].to_dict()
    parquet = pd.read_parquet(tmp_path / "merged" / layout.METADATA_PARQUET)
    assert parquet["tbp_lv_A"].dtype == np.float64
    assert parquet["tbp_lv_symm_2axis_angle"].dtype == np.int64
    assert parquet["tbp_tile_type"].dtype != np.float64
    assert len(list((tmp_path / "merged" / "images").glob("ISIC_*.jpg"))) == N
    again = _merge(tmp_path, files)  # unchanged file: every dataset's recorded facts are reused
    assert again.per_source["s2024"].reused == N and again.scanned == 0 and again.images_written == 0


def test_challenge_layout_gives_the_same_rows_as_kaggle(tmp_path):
    kaggle = _merge(tmp_path / "k", _kaggle(tmp_path / "k")).metadata
    generate_isic2024_mirror(tmp_path / "c", N, layout="challenge")
    files = {"images": tmp_path / "c" / "ISIC_2024_Training_Input.zip",
             "ground_truth": tmp_path / "c" / "ISIC_2024_Training_GroundTruth.csv",
             "metadata": tmp_path / "c" / "ISIC_2024_Training_Supplement.csv"}
    challenge = _merge(tmp_path / "c", files).metadata
    columns = ["isic_id", "benign_malignant", "diagnosis", "patient_id", "lesion_id", "sex", "age_approx",
               "anatom_site_general", "copyright_license", "image_type", "sha256", "tbp_lv_A"]
    pd.testing.assert_frame_equal(kaggle[columns], challenge[columns])


# ----------------------------------------------------------------------------------------------
# labels and bad rows


def test_target_and_iddx_1_disagreeing_is_a_conflict_not_an_error(tmp_path):
    ids, rows = _rows()
    target, iddx_1 = HEADER_2024.index("target"), HEADER_2024.index("iddx_1")
    benign = next(r for r in rows if r[target] == "0" and r[iddx_1] == "Benign")
    benign[target] = "1"  # iddx_1 still says Benign
    write_hdf5(tmp_path / "i.hdf5", zip(ids, tile_jpegs(len(ids)), strict=True))
    report = _merge(tmp_path, {"images": tmp_path / "i.hdf5", "metadata": _write_csv(tmp_path / "m.csv", rows)})
    conflicts = report.conflicts
    assert conflicts.to_dict("records") == [{"isic_id": benign[0], "column": "benign_malignant",
                                             "values": "target=malignant; iddx_1=benign", "kept": "malignant"}]
    flagged = report.metadata.set_index("isic_id")["label_conflict"]
    assert flagged[benign[0]] and flagged.sum() == 1
    written = pd.read_csv(tmp_path / "merged" / layout.CONFLICTS_CSV)
    assert list(written["isic_id"]) == [benign[0]]


def test_rows_without_images_and_images_without_rows_are_quarantined(tmp_path):
    ids, rows = _rows()
    write_hdf5(tmp_path / "i.hdf5", zip(ids[1:] + ["ISIC_0000009"], tile_jpegs(len(ids)), strict=True))
    report = _merge(tmp_path, {"images": tmp_path / "i.hdf5", "metadata": _write_csv(tmp_path / "m.csv", rows)})
    reasons = report.quarantine.set_index("isic_id")["reason"].to_dict()
    assert reasons == {ids[0]: "missing_image", "ISIC_0000009": "no_metadata_row"}
    assert "ISIC_0000009" not in set(report.metadata["isic_id"])
    assert len(report.metadata) == N - 1


def test_a_non_number_in_a_tbp_column_names_file_line_and_column(tmp_path):
    _, rows = _rows()
    rows[4][HEADER_2024.index("tbp_lv_areaMM2")] = "n/a"
    with pytest.raises(HarmonizeError, match=r"m.csv: line 6: column 'tbp_lv_areaMM2': found 'n/a'"):
        harmonize_isic2024(_write_csv(tmp_path / "m.csv", rows))


def test_diagnosis_comes_from_the_deepest_iddx_node():
    ids = ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    fulls = ["Benign", "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive",
             "Benign::Benign melanocytic proliferations::Nevus::Nevus, NOS, Junctional",
             "Indeterminate::Indeterminate epidermal proliferations::Solar or actinic keratosis"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["isic_id", "target", "iddx_full", "iddx_1"])
    for isic_id, full, target in zip(ids, fulls, ["0", "1", "0", "0"], strict=True):
        writer.writerow([isic_id, target, full, full.split("::")[0]])
    frame = harmonize_isic2024(text.getvalue().encode()).frame
    assert frame["diagnosis"].tolist() == ["", "melanoma", "nevus", "actinic keratosis"]
    assert frame["benign_malignant"].tolist() == ["benign", "malignant", "benign", "indeterminate"]


def test_image_types_keep_tiles_out_or_alone():
    metadata = pd.DataFrame({"isic_id": ["a", "b", "c"], "image_type": ["dermoscopic", "TBP tile: close-up",
                                                                        "dermoscopic"]})
    kept, left_out = select_image_types(metadata, SplitConfig(image_types=("dermoscopic",)).image_types)
    assert kept["isic_id"].tolist() == ["a", "c"] and left_out == 1
    kept, left_out = select_image_types(metadata, ("TBP tile: close-up",))
    assert kept["isic_id"].tolist() == ["b"] and left_out == 2
    assert select_image_types(metadata, ())[1] == 0
    with pytest.raises(ValueError, match="clinical"):
        select_image_types(metadata, ("clinical",))


# ----------------------------------------------------------------------------------------------
# the demo source through the whole graph


def test_demo_isic2024_through_the_whole_graph(tmp_path, generated_demo_mirror):
    copy_demo_mirror(generated_demo_mirror, tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks], instance=instance,
            resources={"isic": IsicSettings(data_dir=str(tmp_path), sources="demo_isic2024")},
            # Oversampling: 1 malignant tile in 20 is too few whole patient groups to undersample to 1:1.
            run_config={"ops": {"balanced_splits": {"config": {"image_types": ["TBP tile: close-up"],
                                                               "strategy": "oversample"}}}},
            raise_on_error=False,
        )
    assert result.success
    expected = json.loads((tmp_path / layout.DEMO_MIRROR / "MIRROR.json").read_text())["expected"]["isic2024"]
    merged = layout.read_table(tmp_path / layout.MERGED / layout.METADATA_CSV)
    assert len(merged) == expected["kept"]
    assert (merged["benign_malignant"] == "malignant").sum() == expected["kept_malignant"]
    assert merged["patient_id"].nunique() == expected["patients"]
    assert set(merged["image_type"]) == {expected["image_type"]}
    quarantine = layout.read_table(tmp_path / layout.MERGED / layout.QUARANTINE_CSV)
    assert sorted(quarantine["reason"]) == ["missing_image", "not_an_image", "not_an_isic_id"]
    assert quarantine.loc[quarantine["reason"] == "not_an_isic_id", "member"].tolist() == expected["not_isic_id_keys"]
    assert quarantine.loc[quarantine["reason"] == "not_an_image", "isic_id"].tolist() == expected["not_a_jpeg_ids"]
    assert quarantine.loc[quarantine["reason"] == "missing_image", "isic_id"].tolist() == \
        expected["rows_without_image"]
    card = (tmp_path / layout.SPLITS_DIR / "DATASET_CARD.md").read_text()
    assert "## Image types" in card and "TBP tile: close-up" in card
    report = next((tmp_path / layout.EDA).rglob("*.html")).read_text()
    assert "Images per image type and class" in report


def test_reading_in_chunks_gives_the_same_frame_and_names_the_first_bad_row(tmp_path, monkeypatch):
    """Numeric columns are parsed chunk by chunk while reading; the result must not depend on where
    the chunks fall, and a bad value is reported at its own line even when the supplement lists the
    images in another order than the ground truth."""
    from isic_assets.core.merge.harmonize import common
    from isic_assets.demo.isic2024 import SUPPLEMENT_COLUMNS

    _, rows = _rows()
    kaggle = _write_csv(tmp_path / "m.csv", rows)
    whole = harmonize_isic2024(kaggle)
    monkeypatch.setattr(common, "_CHUNK_ROWS", 7)
    chunked = harmonize_isic2024(kaggle)
    pd.testing.assert_frame_equal(whole.frame, chunked.frame)
    assert chunked.frame["tbp_lv_symm_2axis_angle"].dtype == np.int64
    assert chunked.frame["tbp_lv_A"].dtype == np.float64

    at = [HEADER_2024.index(name) for name in SUPPLEMENT_COLUMNS]
    target = HEADER_2024.index("target")
    truth = _write_csv(tmp_path / "gt.csv", [[row[0], row[target]] for row in rows], header=["isic_id", "malignant"])
    supplement = [[row[i] for i in at] for row in reversed(rows)]  # the other order
    thick = SUPPLEMENT_COLUMNS.index("mel_thick_mm")
    supplement[N - 1 - 30][thick] = "thin"  # ids[30]: later in the ground truth's order
    supplement[N - 1 - 3][thick] = "thick"  # ids[3]: first in the ground truth's order, line 38 here
    path = _write_csv(tmp_path / "supplement.csv", supplement, header=SUPPLEMENT_COLUMNS)
    with pytest.raises(HarmonizeError, match=r"supplement.csv: line 38: column 'mel_thick_mm': found 'thick', "
                                             r"expected a number or empty .* \(1 more such rows\)"):
        harmonize_isic2024(path, truth)
