"""The review sheet: the closest confirmed near-duplicate pairs side by side, for a person to judge.

One rendering (two transformed images scaled to a square tile and joined into one JPEG) serves both
places that show the sheet: the near_duplicates asset page (markdown, a few small tiles, because
it lives in Dagster's event log) and the ``report.html`` section (larger tiles). The report embeds
its images as data URIs like its figures, so the report folder stays one portable file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPORT_PAIRS = 24  # a page a person reads through; the CSV has every pair
REPORT_TILE = 160
SECTION_ID = "near-duplicates"
SECTION_TITLE = "Closest near-duplicate pairs"


def pair_jpeg(first: Path, second: Path, tile: int, quality: int = 80) -> bytes:
    """The two images scaled to ``tile`` pixels square and placed side by side, as JPEG bytes."""
    tiles = []
    for path in (first, second):
        with Image.open(path) as img:
            tiles.append(np.asarray(img.convert("RGB").resize((tile, tile))))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(tiles, axis=1)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def image_paths(images: pd.DataFrame, image_root: Path) -> dict[str, Path]:
    """``isic_id`` -> transformed image file, from ``data_transformed/metadata.csv`` (its ``image`` column)."""
    rows = images.drop_duplicates("isic_id")
    return {isic_id: Path(image_root) / image for isic_id, image in zip(rows["isic_id"], rows["image"], strict=True)}


def closest(pairs: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The ``limit`` closest pairs: fewest differing hash bits, then the highest similarity, then ids."""
    ordered = pairs.assign(_d=pd.to_numeric(pairs["distance"]), _s=pd.to_numeric(pairs["similarity"]))
    ordered = ordered.sort_values(["_d", "_s", "isic_id_a", "isic_id_b"], ascending=[True, False, True, True],
                                  kind="stable")
    return ordered.drop(columns=["_d", "_s"]).head(limit)


def review_sheet_html(pairs: pd.DataFrame | None, paths: Mapping[str, Path], limit: int = REPORT_PAIRS) -> str:
    """The report section: heading, one sentence on what is shown, then a row per pair with both images.

    ``pairs`` is ``near_duplicates.csv`` as read back (None when the step never ran, e.g. switched off
    by leaving it out of the run). A pair whose image file is gone is listed without the picture.
    """
    heading = f'<h2 id="{SECTION_ID}">{html.escape(SECTION_TITLE)}</h2>'
    if pairs is None:
        return heading + ('<p class="empty">near_duplicates has not run for this data (the setting is off '
                          'or the step was not materialized): no near-duplicate pairs to review.</p>')
    if pairs.empty:
        return heading + '<p class="empty">near_duplicates found no near-duplicate pairs.</p>'
    shown = closest(pairs, limit)
    intro = (f"<p>{len(pairs):,} confirmed pair(s) in merged_data/near_duplicates.csv; the {len(shown)} "
             "closest (fewest differing bits of the 256-bit window hash) shown, left image first.</p>")
    head = ('<tr><th>isic_id_a</th><th>isic_id_b</th><th class="num">distance</th>'
            '<th class="num">similarity</th><th>method</th><th>images</th></tr>')
    rows = []
    for row in shown.itertuples(index=False):
        first, second = paths.get(row.isic_id_a), paths.get(row.isic_id_b)
        if first is not None and second is not None and first.is_file() and second.is_file():
            encoded = base64.b64encode(pair_jpeg(first, second, REPORT_TILE)).decode("ascii")
            picture = (f'<img alt="{html.escape(row.isic_id_a)} and {html.escape(row.isic_id_b)}" '
                       f'width="{2 * REPORT_TILE}" height="{REPORT_TILE}" src="data:image/jpeg;base64,{encoded}">')
        else:
            picture = '<span class="empty">image file missing</span>'
        rows.append(f"<tr><td>{html.escape(str(row.isic_id_a))}</td><td>{html.escape(str(row.isic_id_b))}</td>"
                    f'<td class="num">{html.escape(str(row.distance))}</td>'
                    f'<td class="num">{html.escape(str(row.similarity))}</td>'
                    f"<td>{html.escape(str(row.method))}</td><td>{picture}</td></tr>")
    return heading + intro + f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
