"""The review sheet of near-duplicate pairs in report.html: closest first, images embedded, explicit when empty."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from isic_assets.core.eda.report import render_report_html
from isic_assets.core.eda.review_sheet import REPORT_PAIRS, REPORT_TILE, image_paths, review_sheet_html
from isic_assets.demo.synthetic import encode_jpeg, picture_rng, synth_dermoscopy


def _images(tmp_path: Path, count: int) -> dict[str, Path]:
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(count):
        (tmp_path / "images" / f"ISIC_{i:07d}.jpg").write_bytes(
            encode_jpeg(synth_dermoscopy(picture_rng(3, f"l{i}"), 120, 90), 85))
        rows.append({"isic_id": f"ISIC_{i:07d}", "image": f"images/ISIC_{i:07d}.jpg"})
    return image_paths(pd.DataFrame(rows), tmp_path)


def _pairs(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"isic_id_a": f"ISIC_{a:07d}", "isic_id_b": f"ISIC_{b:07d}", "distance": str(d),
                          "method": "dct-views+ecc-ncc", "similarity": str(s)} for a, b, d, s in rows])


def test_closest_pairs_come_first_with_both_images_side_by_side(tmp_path):
    paths = _images(tmp_path, 60)
    # 30 pairs; distances descending with the index, so the closest are the last ones written
    pairs = _pairs([(2 * k, 2 * k + 1, 60 - k, 0.9) for k in range(30)])
    section = review_sheet_html(pairs, paths)
    rows = re.findall(r"<tr><td>(ISIC_\d+)</td><td>(ISIC_\d+)</td><td class=\"num\">(\d+)</td>", section)
    assert len(rows) == REPORT_PAIRS
    assert [int(d) for _, _, d in rows] == sorted(range(31, 61))[:REPORT_PAIRS]
    assert rows[0][:2] == ("ISIC_0000058", "ISIC_0000059")
    assert "30 confirmed pair(s)" in section and "dct-views+ecc-ncc" in section and "0.9" in section
    encoded = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', section)
    assert len(encoded) == REPORT_PAIRS
    with Image.open(io.BytesIO(base64.b64decode(encoded[0]))) as picture:
        assert picture.size == (2 * REPORT_TILE, REPORT_TILE)


def test_report_says_so_when_there_are_no_pairs_or_the_step_did_not_run(tmp_path):
    empty = review_sheet_html(_pairs([]).reindex(columns=["isic_id_a", "isic_id_b", "distance", "method",
                                                          "similarity"]), {})
    assert "found no near-duplicate pairs" in empty and "<img" not in empty
    off = review_sheet_html(None, {})
    assert "has not run" in off and "off" in off and "<img" not in off
    report = render_report_html("t", {}, [], [], off)
    assert 'id="near-duplicates"' in report and "has not run" in report
    assert 'id="near-duplicates"' not in render_report_html("t", {}, [], [])


def test_a_pair_whose_image_is_gone_is_listed_without_a_picture(tmp_path):
    paths = _images(tmp_path, 2)
    paths["ISIC_0000001"].unlink()
    section = review_sheet_html(_pairs([(0, 1, 10, 0.97)]), paths)
    assert "ISIC_0000001" in section and "image file missing" in section and "<img" not in section
