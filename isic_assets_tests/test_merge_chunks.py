"""The merge's metadata a chunk at a time: an ISIC 2024 CSV harmonized in chunks of rows, and the
sources combined a range of ids at a time, give the tables of the whole-file, whole-table merge."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isic_assets.core import layout
from isic_assets.core.merge import id_ranges
from isic_assets.core.merge import merge_sources as merge_module
from isic_assets.core.merge.harmonize import HarmonizeError
from isic_assets.core.merge.harmonize.isic2024 import harmonize_isic2024
from isic_assets.core.merge.merge_sources import merge_sources
from isic_assets.demo.isic2024 import HEADER_2024, isic_ids, metadata_rows
from isic_assets_tests.test_merge_tables import _sources

N = 40


def _rows() -> list[list[str]]:
    return list(metadata_rows(isic_ids(N, seed=5), patients=4, malignant=2, seed=5))


def _write(path: Path, rows: list[list[str]], blank_after: int | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER_2024)
        for number, row in enumerate(rows):
            writer.writerow(row)
            if number == blank_after:
                handle.write("\n")
    return path


def _set(row: list[str], column: str, value: str) -> None:
    row[HEADER_2024.index(column)] = value


def test_chunks_give_the_whole_file_frame_notes_and_conflicts(tmp_path):
    """Every whole-file judgement made on facts that first show in a later chunk."""
    rows = _rows()
    _set(rows[37], "tbp_lv_symm_2axis_angle", "12.5")  # whole elsewhere: the one decimal makes it float
    _set(rows[33], "target", "1.0")  # 'target' is not documented as numeric: its dot shows only here
    _set(rows[30], "iddx_1", "Malignant")  # with target 0: a conflict, only in a late chunk
    _set(rows[30], "iddx_full", "Malignant::Malignant melanocytic proliferations (Melanoma)")
    _set(rows[30], "target", "0")
    _set(rows[26], "isic_id", rows[26][0] + "_downsampled")
    path = _write(tmp_path / "m.csv", rows, blank_after=20)
    whole = harmonize_isic2024(path)
    for chunk_rows in (1, 7, 13, N - 1, N):
        chunked = harmonize_isic2024(path, chunk_rows=chunk_rows)
        pd.testing.assert_frame_equal(chunked.frame, whole.frame)
        pd.testing.assert_frame_equal(chunked.conflicts, whole.conflicts)
        assert chunked.notes == whole.notes
    assert whole.frame["tbp_lv_symm_2axis_angle"].dtype == np.float64
    assert whole.frame["tbp_lv_A"].dtype == np.float64
    assert whole.frame["target"].dtype == np.float64  # '1.0': a decimal point, as in the whole file
    assert len(whole.conflicts) >= 1 and "1 blank lines skipped" in " ".join(whole.notes)
    assert "1 ids had the _downsampled suffix stripped" in whole.notes


def test_an_id_repeated_in_two_chunks_names_both_lines_as_the_whole_file_does(tmp_path):
    rows = _rows()
    rows[35][0] = rows[2][0]  # lines 4 and 37: the repeat is in the sixth chunk of 7 rows
    path = _write(tmp_path / "m.csv", rows)
    with pytest.raises(HarmonizeError) as whole:
        harmonize_isic2024(path)
    with pytest.raises(HarmonizeError) as chunked:
        harmonize_isic2024(path, chunk_rows=7)
    assert str(chunked.value) == str(whole.value)
    assert f"lines 4 and 37: column 'isic_id': id {rows[2][0]} appears twice" in str(whole.value)
    assert chunked.value.line == 37


def test_a_bad_number_only_in_a_later_chunk_is_still_reported_at_its_line(tmp_path):
    rows = _rows()
    _set(rows[38], "tbp_lv_B", "blue")
    path = _write(tmp_path / "m.csv", rows)
    with pytest.raises(HarmonizeError, match=r"m.csv: line 40: column 'tbp_lv_B': found 'blue'"):
        harmonize_isic2024(path, chunk_rows=7)


def test_merging_a_range_of_ids_at_a_time_gives_the_whole_table_bytes(tmp_path, monkeypatch):
    """A 2016 source (no 2024 columns, one row contradicting a 2024 label) and a 2024 source: the
    ranges holding only 2024 ids must still make the 2024 integers floats and the 2024 texts text,
    as the whole table does, and the conflict found in one range must be reported as before."""
    sources = _sources(tmp_path / "src")
    kaggle = pd.read_csv(tmp_path / "src" / "k" / "train-metadata.csv", dtype=str)
    benign = kaggle.loc[kaggle["target"] == "0", "isic_id"].iloc[0]
    with (tmp_path / "src" / "a.csv").open("a") as handle:
        handle.write(f"{benign},malignant\r\n")
    monkeypatch.setattr(id_ranges, "RANGE_ROWS", 10**9)
    monkeypatch.setattr(merge_module, "_METADATA_CHUNK", None)
    whole = merge_sources(sources, tmp_path / "whole", log=lambda _m: None)
    monkeypatch.setattr(id_ranges, "RANGE_ROWS", 2)
    monkeypatch.setattr(merge_module, "_METADATA_CHUNK", 5)
    ranged = merge_sources(sources, tmp_path / "ranged", log=lambda _m: None)

    assert benign in set(whole.conflicts["isic_id"])
    for name in (layout.METADATA_CSV, "conflicts.csv", "quarantine.csv", "duplicates.csv"):
        if (tmp_path / "whole" / name).exists():
            assert (tmp_path / "ranged" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    frame = pd.read_parquet(tmp_path / "ranged" / layout.METADATA_PARQUET)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / "whole" / layout.METADATA_PARQUET))
    assert frame["tbp_lv_symm_2axis_angle"].dtype == np.float64
    assert frame.loc[frame["source"] == "a", "tbp_tile_type"].eq("").all()
    assert ranged.notes == whole.notes
    pd.testing.assert_frame_equal(ranged.conflicts, whole.conflicts)
