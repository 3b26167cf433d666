"""The images_readable checks' core: every row's file exists, has the recorded size and opens."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from isic_assets.core.merge import quality
from isic_assets.core.merge.quality import unreadable_images


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def table(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """Thirty rows: good JPEGs and a PNG, with seven faults spread over them."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for k in range(30):
        name = f"images/ISIC_{k:07d}.jpg"
        data = _png() if k == 3 else _jpeg((k * 8, 40, 200 - k))
        (tmp_path / name).write_bytes(data)
        rows.append({"isic_id": f"ISIC_{k:07d}", "image": name, "file_bytes": str(len(data))})
    (tmp_path / rows[5]["image"]).unlink()                                   # missing
    rows[11]["file_bytes"] = str(int(rows[11]["file_bytes"]) + 1)           # another size than recorded
    (tmp_path / rows[17]["image"]).write_bytes(b"\x00" * int(rows[17]["file_bytes"]))  # not an image
    (tmp_path / rows[23]["image"]).unlink()
    (tmp_path / rows[23]["image"]).mkdir()                                  # a folder in its place
    (tmp_path / rows[26]["image"]).unlink()
    os.mkfifo(tmp_path / rows[26]["image"])                                 # a pipe: must not hang the check
    rows[28]["file_bytes"] = "12x"                                          # a recorded size that is no count
    rows[29]["file_bytes"] = ""                                             # no recorded size: not compared
    return pd.DataFrame(rows).astype("string"), tmp_path


EXPECTED = {"ISIC_0000005": "missing file", "ISIC_0000011": "size", "ISIC_0000017": "not readable",
            "ISIC_0000023": "not a regular file", "ISIC_0000026": "not a regular file",
            "ISIC_0000028": "recorded size '12x' is not a whole number"}


def _reasons(problems: list[dict[str, str]]) -> dict[str, str]:
    return {p["isic_id"]: p["reason"] for p in problems}


def test_each_fault_is_named_with_its_row(table: tuple[pd.DataFrame, Path]) -> None:
    frame, base = table
    problems = unreadable_images(frame, base, "file_bytes")
    assert list(_reasons(problems)) == list(EXPECTED)  # in the table's order
    for isic_id, start in EXPECTED.items():
        assert _reasons(problems)[isic_id].startswith(start), problems
    assert _reasons(problems)["ISIC_0000011"].endswith(f"!= recorded {frame.loc[11, 'file_bytes']}")
    assert problems[0]["image"] == "images/ISIC_0000005.jpg"
    assert _reasons(problems)["ISIC_0000017"] == "not readable: Pillow does not recognise it as an image"


def test_without_a_size_column_only_missing_and_unreadable_files_count(table: tuple[pd.DataFrame, Path]) -> None:
    frame, base = table
    assert _reasons(unreadable_images(frame, base, None)).keys() == EXPECTED.keys() - {"ISIC_0000011", "ISIC_0000028"}


def test_forked_workers_find_the_same_problems_in_the_same_order(table: tuple[pd.DataFrame, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    frame, base = table
    monkeypatch.setattr(quality, "CHECK_BATCH", 4)  # eight batches over two processes
    assert unreadable_images(frame, base, "file_bytes", processes=2) == unreadable_images(frame, base, "file_bytes")


def test_a_table_given_in_chunks_gives_the_same_problems_in_the_same_order(table: tuple[pd.DataFrame, Path],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of rows (as the checks read metadata.csv) are checked as they come, cut into batches of
    CHECK_BATCH rows whatever the chunk size: the same problems, in the table's order, in one process
    or in forked workers."""
    frame, base = table
    whole = unreadable_images(frame, base, "file_bytes")
    monkeypatch.setattr(quality, "CHECK_BATCH", 4)
    for size in (7, 3, 30):
        for processes in (1, 2):
            chunks = (frame.iloc[start : start + size] for start in range(0, len(frame), size))
            assert unreadable_images(chunks, base, "file_bytes", processes=processes) == whole


def test_an_empty_table_has_no_problem(tmp_path: Path) -> None:
    frame = pd.DataFrame({"isic_id": [], "image": [], "file_bytes": []}, dtype="string")
    assert unreadable_images(frame, tmp_path, "file_bytes", processes=2) == []
