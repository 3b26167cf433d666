"""Merging on small crafted sources: dedup rules, incrementality, crash-resume, folder sources."""

from __future__ import annotations

import io
import multiprocessing
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic_assets.core.merge import merge_sources as merge_module
from isic_assets.core.merge.merge_sources import MergeOptions, SourceArchive, merge_sources
from isic_assets.core.merge.zip_stream import ZipLimits, ZipRefused


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _source_2016(folder: Path, name: str, order: int, images: dict[str, bytes], labels: dict[str, str]
                 ) -> SourceArchive:
    """An ISBI 2016-format source: a zip of images and a headerless ground-truth CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for member, data in images.items():
            zf.writestr(f"{name}/{member}", data)
        zf.writestr(f"{name}/ISIC_0000000_superpixels.png", b"not an image we read")
    gt = folder / f"{name}.csv"
    gt.write_text("".join(f"{i},{label}\r\n" for i, label in labels.items()))
    return SourceArchive(name=name, format="isic2016", order=order, files={"images": archive, "ground_truth": gt})


def _quiet(_message: str) -> None:
    pass


def test_full_size_copy_beats_downsampled_one_even_from_a_later_source(tmp_path):
    """2019 re-publishes 2016 images as smaller `_downsampled` files (docs/ISIC_SOURCES.md 1.3)."""
    small = _source_2016(tmp_path / "a", "a", 0, {"ISIC_0000001_downsampled.jpg": _jpeg(1, (32, 24))},
                         {"ISIC_0000001_downsampled": "benign"})
    full = _source_2016(tmp_path / "b", "b", 1, {"ISIC_0000001.jpg": _jpeg(1, (64, 48))},
                        {"ISIC_0000001": "benign"})
    report = merge_sources([small, full], tmp_path / "out", log=_quiet)
    row = report.metadata.iloc[0]
    assert (row["isic_id"], row["source"], row["width"]) == ("ISIC_0000001", "b", 64)
    assert row["sources"] == "a;b"
    dup = report.duplicates.iloc[0]
    assert (dup["isic_id"], dup["kept_isic_id"], dup["reason"], dup["source"]) == (
        "ISIC_0000001", "ISIC_0000001", "same_id_downsampled", "a")
    assert Image.open(tmp_path / "out" / "images" / "ISIC_0000001.jpg").size == (64, 48)


def test_identical_bytes_under_two_ids_keep_one(tmp_path):
    data = _jpeg(7)
    src = _source_2016(tmp_path / "a", "a", 0, {"ISIC_0000002.jpg": data, "ISIC_0000003.jpg": data},
                       {"ISIC_0000002": "benign", "ISIC_0000003": "benign"})
    report = merge_sources([src], tmp_path / "out", log=_quiet)
    assert report.metadata["isic_id"].tolist() == ["ISIC_0000002"]
    assert report.duplicates[["isic_id", "kept_isic_id", "reason"]].values.tolist() == [
        ["ISIC_0000003", "ISIC_0000002", "identical_content"]]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["ISIC_0000002.jpg"]


def test_a_source_added_later_only_scans_its_own_members(tmp_path):
    a = _source_2016(tmp_path / "a", "a", 0, {f"ISIC_000001{i}.jpg": _jpeg(10 + i) for i in range(5)},
                     {f"ISIC_000001{i}": "benign" for i in range(5)})
    b = _source_2016(tmp_path / "b", "b", 1, {f"ISIC_000002{i}.jpg": _jpeg(20 + i) for i in range(3)},
                     {f"ISIC_000002{i}": "malignant" for i in range(3)})
    out = tmp_path / "out"
    merge_sources([a], out, log=_quiet)
    second = merge_sources([a, b], out, log=_quiet)
    assert second.per_source["a"].scanned == 0
    assert second.per_source["b"].scanned == 3
    assert second.images_written == 3
    third = merge_sources([a, b], out, log=_quiet)
    assert (third.scanned, third.images_written, third.images_deleted) == (0, 0, 0)
    assert len(third.metadata) == 8


def test_deselected_source_images_are_removed(tmp_path):
    a = _source_2016(tmp_path / "a", "a", 0, {"ISIC_0000031.jpg": _jpeg(31)}, {"ISIC_0000031": "benign"})
    b = _source_2016(tmp_path / "b", "b", 1, {"ISIC_0000032.jpg": _jpeg(32)}, {"ISIC_0000032": "benign"})
    out = tmp_path / "out"
    merge_sources([a, b], out, log=_quiet)
    report = merge_sources([a], out, log=_quiet)
    assert report.metadata["isic_id"].tolist() == ["ISIC_0000031"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["ISIC_0000031.jpg"]
    assert report.images_deleted == 1


def test_deleted_output_is_restored_from_the_zip(tmp_path):
    a = _source_2016(tmp_path / "a", "a", 0, {"ISIC_0000041.jpg": _jpeg(41)}, {"ISIC_0000041": "benign"})
    out = tmp_path / "out"
    merge_sources([a], out, log=_quiet)
    (out / "images" / "ISIC_0000041.jpg").unlink()
    report = merge_sources([a], out, log=_quiet)
    assert report.scanned == 0 and report.images_written == 1
    assert (out / "images" / "ISIC_0000041.jpg").read_bytes() == _jpeg(41)


def test_zip_bomb_limits_refuse_the_archive_with_its_name(tmp_path):
    a = _source_2016(tmp_path / "a", "a", 0, {"ISIC_0000051.jpg": _jpeg(51)}, {"ISIC_0000051": "benign"})
    with pytest.raises(ZipRefused, match=r"a\.zip"):
        merge_sources([a], tmp_path / "out", MergeOptions(limits=ZipLimits(max_member_bytes=100)), log=_quiet)
    assert not list((tmp_path / "out").glob("*.csv")), "nothing may be half-written after a refusal"


def _killed_merge(source: SourceArchive, out: Path, after: int) -> None:
    """Run a merge in this (forked) process and die like a killed worker after ``after`` images."""
    real = merge_module.inspect_many

    def dying(*args, **kwargs):
        for count, item in enumerate(real(*args, **kwargs), start=1):
            if count > after:
                os._exit(17)  # no finally blocks, no flush: as abrupt as SIGKILL
            yield item

    merge_module.inspect_many = dying
    merge_sources([source], out, log=_quiet)


def test_a_killed_merge_resumes_without_redoing_flushed_work(tmp_path):
    """A run killed midway loses at most the unflushed tail; nothing half-written is left behind."""
    n = 450
    images = {f"ISIC_{100000 + i:07d}.jpg": _jpeg(1000 + i, (24, 16)) for i in range(n)}
    src = _source_2016(tmp_path / "a", "a", 0, images, {k[:-4]: "benign" for k in images})
    out = tmp_path / "out"
    child = multiprocessing.get_context("fork").Process(target=_killed_merge, args=(src, out, 420))
    child.start()
    child.join(60)
    assert child.exitcode == 17
    assert not (out / "metadata.csv").exists()
    assert not list((out / "images").glob(".tmp-*"))
    report = merge_sources([src], out, log=_quiet)
    assert report.scanned == n - 400  # members flushed every 200 are not checked again
    assert len(report.metadata) == n
    for name, data in list(images.items())[:5]:
        assert (out / "images" / name).read_bytes() == data


def test_folder_source_merges_like_an_archive_export(tmp_path):
    """The ISIC API source lands as images/ + an isic-cli metadata.csv (current schema)."""
    folder = tmp_path / "api"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "ISIC_9000001.jpg").write_bytes(_jpeg(90))
    (folder / "images" / "ISIC_9000002.jpg").write_bytes(_jpeg(91))
    pd.DataFrame([
        {"isic_id": "ISIC_9000001", "attribution": "Anonymous", "copyright_license": "CC-0",
         "diagnosis_1": "Malignant", "anatom_site_1": "Trunk"},
        {"isic_id": "ISIC_9000002", "attribution": "Anonymous", "copyright_license": "CC-BY",
         "diagnosis_1": "Benign", "anatom_site_1": ""},
    ]).to_csv(folder / "metadata.csv", index=False)
    src = SourceArchive(name="api", format="isic_api", order=0, files={"folder": folder})
    report = merge_sources([src], tmp_path / "out", log=_quiet)
    frame = report.metadata.set_index("isic_id")
    assert frame.loc["ISIC_9000001", "benign_malignant"] == "malignant"
    assert frame.loc["ISIC_9000002", "copyright_license"] == "CC-BY"
    again = merge_sources([src], tmp_path / "out", log=_quiet)
    assert again.scanned == 0


def _source_2020(folder: Path, images: dict[str, bytes], pairs: list[tuple[str, str]]) -> SourceArchive:
    """A SIIM-ISIC 2020-format source with a duplicates list."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "ISIC_2020_Training_JPEG.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for isic_id, data in images.items():
            zf.writestr(f"train/{isic_id}.jpg", data)
    gt = folder / "gt.csv"
    gt.write_text("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,"
                  "target\r\n" + "".join(f"{i},IP_0000001,male,45,torso,nevus,benign,0\r\n" for i in images))
    dup = folder / "dups.csv"
    dup.write_text("image_name_1,image_name_2\r\n" + "".join(f"{a},{b}\r\n" for a, b in pairs))
    return SourceArchive(name="y2020", format="isic2020", order=0,
                         files={"images": archive, "ground_truth": gt, "duplicates": dup})


def test_listed_duplicates_are_not_written_only_to_be_deleted(tmp_path):
    """The 2020 list names 425 dropped images: they are checked but never copied out of the zip."""
    src = _source_2020(tmp_path / "s", {"ISIC_2000001": _jpeg(1), "ISIC_2000002": _jpeg(2), "ISIC_2000003": _jpeg(3)},
                       [("ISIC_2000002", "ISIC_2000001")])
    report = merge_sources([src], tmp_path / "out", log=_quiet)
    assert report.metadata["isic_id"].tolist() == ["ISIC_2000001", "ISIC_2000003"]
    assert report.duplicates[["isic_id", "kept_isic_id", "reason"]].values.tolist() == [
        ["ISIC_2000002", "ISIC_2000001", "listed_duplicate"]]
    assert (report.images_written, report.images_deleted) == (2, 0)


def test_listed_pair_whose_presumed_keeper_is_corrupt_keeps_the_other(tmp_path):
    """The pre-scan guess is only an optimisation: the readable image is kept and restored from the zip."""
    src = _source_2020(tmp_path / "s", {"ISIC_2000001": _jpeg(1)[:300], "ISIC_2000002": _jpeg(2)},
                       [("ISIC_2000002", "ISIC_2000001")])
    report = merge_sources([src], tmp_path / "out", log=_quiet)
    assert report.metadata["isic_id"].tolist() == ["ISIC_2000002"]
    assert (tmp_path / "out" / "images" / "ISIC_2000002.jpg").read_bytes() == _jpeg(2)
    assert "ISIC_2000001" in set(report.quarantine["isic_id"])
