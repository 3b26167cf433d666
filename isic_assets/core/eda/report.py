"""Documents made from the EDA figures and tables: the HTML report, thumbnails and a markdown gallery.

Kept apart from the plotting (``eda.py``) because these functions only deal with finished PNG bytes
and tables: they know nothing about ISIC columns, so they stay small and easy to test.

The report is one self-contained HTML file (figures inlined as base64 PNG, inline CSS, no script)
so it can be mailed, attached to a ticket or opened from an archive years later without the
folder it came from.
"""

from __future__ import annotations

import base64
import html
import io
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

#: Upper bound for one thumbnail as base64 text. Thumbnails live in Dagster's event log (markdown
#: metadata), so they must stay small (docs/DAGSTER_NOTES.md 2: they live in the event log).
THUMBNAIL_MAX_CHARS = 40_000
#: Longest side of a thumbnail to start from; shrunk further only if the size bound demands it.
THUMBNAIL_START_PX = 560

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #4c72b0; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-bottom: .4rem; }
table { border-collapse: collapse; margin: .4rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #eef2f8; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9rem; }
nav ul { columns: 2; }
p.empty { color: #777; font-style: italic; }
"""


_NUM = ' class="num"'


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report: file stem (the anchor), a human title and the full PNG bytes."""

    name: str
    title: str
    png: bytes


@dataclass(frozen=True)
class ReportTable:
    """One table of the report with the sentence that says what it counts."""

    name: str
    title: str
    frame: pd.DataFrame


def png_thumbnail_base64(png: bytes, max_chars: int = THUMBNAIL_MAX_CHARS) -> str:
    """A downscaled, palette-quantized copy of ``png`` as base64 text of at most ``max_chars``.

    Downscaling the full render (rather than re-rendering at a low dpi) keeps the layout identical
    to the file on disk; quantizing to 128 colours is lossless-looking for flat plot colours and
    cuts the size several times. The side shrinks until the bound holds.
    """
    with Image.open(io.BytesIO(png)) as opened:
        source = opened.convert("RGB")
    side = THUMBNAIL_START_PX
    while True:
        small = source.copy()
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.quantize(colors=128).save(buffer, format="PNG", optimize=True)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(encoded) <= max_chars or side <= 64:
            return encoded
        side = int(side * 0.8)


def data_uri(png: bytes) -> str:
    """``data:`` URI of a PNG, the only way to embed an image without a second file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report_html(
    title: str,
    inputs: Mapping[str, object],
    tables: Sequence[ReportTable],
    figures: Sequence[ReportFigure],
    review_sheet: str | None = None,
) -> str:
    """The whole report as one HTML string: inputs summary, contents, key tables, every figure.

    ``review_sheet``, when given, is a finished section (``review_sheet.review_sheet_html``) placed
    after the figures.

    Deterministic for equal arguments (no clock, no random ids), so an unchanged dataset gives a
    byte-identical report and a re-run is visibly a no-op.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<h2 id="inputs">Inputs</h2>',
        _key_value_table(inputs),
        _contents(tables, figures),
        '<h2 id="tables">Key tables</h2>',
        *(_table_section(table) for table in tables),
        '<h2 id="figures">Figures</h2>',
        *(_figure_section(figure) for figure in figures),
        *([review_sheet] if review_sheet is not None else []),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def gallery_markdown(
    titles: Mapping[str, str],
    thumbnails: Mapping[str, str],
    paths: Mapping[str, object],
    report: object,
) -> str:
    """Markdown with every thumbnail inline and the full file's path under it.

    Dagster renders ``MetadataValue.md`` with data-URI images, which puts the figures on the asset
    page; the paths point to the full-resolution files for anyone who needs them.
    """
    lines = [f"Full report: `{report}`", ""]
    for name, encoded in thumbnails.items():
        lines += [
            f"**{titles.get(name, name)}**: `{paths.get(name, name)}`",
            "",
            f"![{name}](data:image/png;base64,{encoded})",
            "",
        ]
    return "\n".join(lines)


def _key_value_table(values: Mapping[str, object]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_format_value(value))}</td></tr>"
        for key, value in values.items()
    )
    return f"<table>{rows}</table>"


def _contents(tables: Sequence[ReportTable], figures: Sequence[ReportFigure]) -> str:
    items = [f'<li><a href="#table-{html.escape(t.name)}">{html.escape(t.title)}</a></li>' for t in tables]
    items += [f'<li><a href="#figure-{html.escape(f.name)}">{html.escape(f.title)}</a></li>' for f in figures]
    return f"<nav><h2>Contents</h2><ul>{''.join(items)}</ul></nav>"


def _table_section(table: ReportTable) -> str:
    heading = f'<h3 id="table-{html.escape(table.name)}">{html.escape(table.title)}</h3>'
    if table.frame.empty:
        return heading + '<p class="empty">no rows</p>'
    return heading + _frame_html(table.frame)


def _frame_html(frame: pd.DataFrame) -> str:
    """A plain HTML table with thousands separators and right-aligned numbers.

    Written by hand rather than with ``DataFrame.to_html`` to control number formatting and
    alignment per column while escaping every cell.
    """
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    head = "".join(
        f"<th{_NUM if is_num else ''}>{html.escape(str(column))}</th>"
        for column, is_num in zip(frame.columns, numeric, strict=True)
    )
    body = []
    for row in frame.itertuples(index=False):  # tables have tens of rows, not images
        cells = "".join(
            f"<td{_NUM if is_num else ''}>{html.escape(_format_value(value))}</td>"
            for value, is_num in zip(row, numeric, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_section(figure: ReportFigure) -> str:
    name = html.escape(figure.name)
    title = html.escape(figure.title)
    return (
        f'<figure id="figure-{name}"><h3>{title}</h3>'
        f'<img alt="{title}" src="{data_uri(figure.png)}">'
        f"<figcaption>{name}.png</figcaption></figure>"
    )


def _format_value(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return f"{float(value):,.2f}"
    return str(value)
