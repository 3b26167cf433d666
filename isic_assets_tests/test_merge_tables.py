"""metadata.csv and metadata.parquet written a page of kept images at a time: the same tables as one
whole-table join, and a crash while writing them leaves the previous tables, nothing half-written."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isic_assets.core import layout
from isic_assets.core.merge import merge_sources as merge_module
from isic_assets.core.merge import metadata_table
from isic_assets.core.merge.merge_sources import SourceArchive, merge_sources
from isic_assets.demo.isic2024 import generate_isic2024_mirror


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _sources(folder: Path) -> list[SourceArchive]:
    """A 2016 source whose zip holds two images without a label row, then a 2024 source (typed extras).

    The images without metadata leave the 2024 integer columns empty on their rows, so those
    columns are floats in the whole table: every page must make them floats too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n in range(1, 8):
            zf.writestr(f"a/ISIC_{9000000 + n:07d}.jpg", _jpeg(n))
    (folder / "a.csv").write_text("".join(f"ISIC_{9000000 + n:07d},benign\r\n" for n in range(1, 6)))
    generate_isic2024_mirror(folder / "k", 23)
    return [
        SourceArchive(name="a", format="isic2016", order=0,
                      files={"images": archive, "ground_truth": folder / "a.csv"}),
        SourceArchive(name="k", format="isic2024", order=1,
                      files={"images": folder / "k" / "train-image.hdf5",
                             "metadata": folder / "k" / "train-metadata.csv"}),
    ]


def test_pages_give_the_bytes_of_one_whole_table(tmp_path, monkeypatch):
    sources = _sources(tmp_path / "src")
    whole = merge_sources(sources, tmp_path / "whole", log=lambda _m: None)
    monkeypatch.setattr(merge_module, "_TABLE_PAGE", 4)
    paged = merge_sources(sources, tmp_path / "paged", log=lambda _m: None)

    assert whole.images_without_metadata == 2 and len(paged.table) == len(whole.table) == 30
    csv_whole = (tmp_path / "whole" / layout.METADATA_CSV).read_bytes()
    assert (tmp_path / "paged" / layout.METADATA_CSV).read_bytes() == csv_whole
    frame = pd.read_parquet(tmp_path / "paged" / layout.METADATA_PARQUET)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / "whole" / layout.METADATA_PARQUET))
    assert frame["tbp_lv_symm_2axis_angle"].dtype == np.float64  # empty on the two rows without metadata
    assert frame["age_approx"].dtype == "Int64" and frame["label_conflict"].dtype == bool
    # What the Dagster layer shows is summed page by page: the same as counting the whole table.
    assert paged.table.class_counts == frame["benign_malignant"].replace("", "unlabelled").value_counts().to_dict()
    assert paged.table.kept_per_source == frame["source"].value_counts().to_dict()
    assert paged.table.file_bytes == frame["file_bytes"].sum() and paged.table.unlabelled == 2
    assert paged.per_source["a"].kept == 7 and paged.per_source["k"].kept == 23
    assert paged.table.preview.equals(frame.head(10))


def test_a_crash_while_writing_the_tables_leaves_the_previous_ones(tmp_path, monkeypatch):
    sources = _sources(tmp_path / "src")
    out = tmp_path / "out"
    merge_sources(sources[:1], out, log=lambda _m: None)
    before = {name: (out / name).read_bytes() for name in (layout.METADATA_CSV, layout.METADATA_PARQUET)}
    monkeypatch.setattr(merge_module, "_TABLE_PAGE", 4)
    real = metadata_table.build_metadata
    calls = []

    def fail_on_third_page(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("simulated crash while writing the third page")
        return real(*args, **kwargs)

    monkeypatch.setattr(metadata_table, "build_metadata", fail_on_third_page)
    with pytest.raises(OSError, match="third page"):
        merge_sources(sources, out, log=lambda _m: None)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(metadata_table, "build_metadata", real)
    again = merge_sources(sources, out, log=lambda _m: None)  # the checked images are reused
    assert again.scanned == 0 and len(pd.read_csv(out / layout.METADATA_CSV)) == 30
