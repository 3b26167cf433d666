"""The dataset's picture: EDA figures, key tables and a self-contained report from merged metadata.

Everything is computed from the three merged tables (``metadata``, ``duplicates``,
``quarantine``). Image sizes come from the ``width``/``height`` columns recorded during the single
read at merge time, so EDA never decodes an image again (issue 3).

Figures are built on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas instead of
pyplot: no global figure registry, no backend switch that could surprise other code in the same
process, and nothing left open after a run. Seaborn only supplies the styling (a temporary rc
context) and the palettes.

Every figure is produced whatever the input: a panel with nothing to show says "no data" instead
of failing, so the set of files in the output folder is always the same and a re-run replaces
each of them under its stable name.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter, StrMethodFormatter

from .. import layout
from ..atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from .report import ReportFigure, ReportTable, gallery_markdown, png_thumbnail_base64, render_report_html
from .review_sheet import review_sheet_html
from .tables import (
    AGE_STEP,
    UNLABELLED,
    MetadataFacts,
    _class_order,
    _Columns,
    _normalize,
    _summarize,
    _tables,
    _valid_dimensions,
)

#: Fixed colours so a class looks the same in every figure (seaborn "deep" blue/red/orange, grey).
CLASS_COLOURS: dict[str, str] = {
    "benign": "#4c72b0",
    "malignant": "#c44e52",
    "indeterminate": "#dd8452",
    UNLABELLED: "#9a9a9a",
}

#: File stem -> title, in report order. The stems are the stable file names (``<stem>.png``).
FIGURE_TITLES: dict[str, str] = {
    "class_distribution": "Class distribution (benign_malignant)",
    "classes_per_source": "Classes per source",
    "anatomical_site": "Anatomical site by class",
    "sex": "Sex by class",
    "age_distribution": "Age distribution, overall and by class",
    "image_dimensions": "Image dimensions by source",
    "missing_values": "Missing values per column",
    "duplicates_quarantine": "Duplicates and quarantine by reason",
    "source_overlap": "Images shared by each pair of sources (by id, content, near-duplicate)",
}
#: Table name -> title, in report order.
TABLE_TITLES: dict[str, str] = {
    "class_counts": "Images per class",
    "source_by_class": "Images per source and class",
    "anatomical_site_by_class": "Images per anatomical site and class",
    "sex_by_class": "Images per sex and class",
    "image_type_by_class": "Images per image type and class (dermoscopic, TBP tile...)",
    "age_summary": "Age per class (years)",
    "dimensions_by_source": "Image dimensions per source (pixels)",
    "missing_values": "Missing values per column (empty string = missing)",
    "duplicates_by_reason": "Duplicates dropped, by reason",
    "quarantine_by_reason": "Images or rows quarantined, by reason",
    "source_overlap": "Images shared by each pair of sources: same id, same content under another id, "
                      "near-duplicate",
}
REPORT_NAME = layout.REPORT_HTML
REPORT_TITLE = "ISIC merged dataset: exploratory data analysis"

#: Above this many distinct (source, width, height) points the scatter shows a weighted sample:
#: beyond it a scatter is a blot and rendering time grows with no gain.
MAX_SCATTER_POINTS = 20_000
_ANNOTATE_MAX_POINTS = 40
DPI = 110
_THOUSANDS = "{x:,.0f}"  # count axes: 12,000 rather than 12000
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h")

# rc_context edits matplotlib's global rcParams for its duration; the lock keeps two EDA runs in
# one process (threads) from restoring each other's styles halfway through a figure.
_STYLE_LOCK = threading.Lock()


@dataclass(frozen=True)
class EdaResult:
    """What an EDA run wrote and measured, shaped for the Dagster asset's metadata.

    ``figures`` maps each stem of ``FIGURE_TITLES`` to its PNG; ``thumbnails`` holds the same
    figures as small base64 PNGs for markdown metadata; ``tables`` are the numbers behind the
    figures; ``inputs`` summarizes what the run was given (also shown in the report).
    """

    figures: dict[str, Path]
    thumbnails: dict[str, str]
    tables: dict[str, pd.DataFrame]
    report: Path
    inputs: dict[str, object] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# public API


def make_eda(metadata: pd.DataFrame, duplicates: pd.DataFrame, quarantine: pd.DataFrame,
             out_dir: Path, near_duplicates: pd.DataFrame | None = None,
             source_order: tuple[str, ...] = (), facts: MetadataFacts | None = None,
             review_images: Mapping[str, Path] | None = None) -> EdaResult:
    """Write every figure and ``report.html`` to ``out_dir`` under stable names; return what was made.

    Reads nothing but the three frames (and ``near_duplicates.csv``'s pairs when given, for the
    source overlap, whose pairs follow ``source_order``). ``metadata`` may hold only ``EDA_COLUMNS``
    when ``facts`` are those of the whole table (``MetadataFacts.from_chunks``). With
    ``review_images`` (``isic_id`` -> transformed image file) the report also gets the review sheet
    of the closest pairs (``review_sheet.py``). Each file is written atomically (temporary name +
    rename) so a reader never sees a half-written figure and a re-run simply replaces the files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    cols = _normalize(metadata)
    facts = facts if facts is not None else MetadataFacts.of(metadata)
    tables = _tables(cols, metadata, duplicates, quarantine, near_duplicates, source_order, facts)
    inputs = _summarize(cols, metadata, duplicates, quarantine, facts)
    pngs = {name: render_png(figure) for name, figure in _figures(cols, tables).items()}
    paths: dict[str, Path] = {}
    for name, png in pngs.items():
        paths[name] = out_dir / f"{name}.png"
        atomic_write_bytes(paths[name], png)
    report = out_dir / REPORT_NAME
    atomic_write_text(report, render_report_html(
        REPORT_TITLE,
        inputs,
        [ReportTable(name, TABLE_TITLES[name], tables[name]) for name in TABLE_TITLES],
        [ReportFigure(name, FIGURE_TITLES[name], pngs[name]) for name in FIGURE_TITLES],
        review_sheet_html(near_duplicates, review_images) if review_images is not None else None,
    ))
    thumbnails = {name: png_thumbnail_base64(png) for name, png in pngs.items()}
    return EdaResult(figures=paths, thumbnails=thumbnails, tables=tables, report=report, inputs=inputs)


def markdown_gallery(result: EdaResult) -> str:
    """Markdown showing every thumbnail with its full file's path, for ``MetadataValue.md``."""
    return gallery_markdown(FIGURE_TITLES, result.thumbnails, result.figures, result.report)


def build_tables(metadata: pd.DataFrame, duplicates: pd.DataFrame, quarantine: pd.DataFrame,
                 near_duplicates: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The key tables of ``TABLE_TITLES``, the numbers behind the figures.

    Public so notebooks and asset checks can reuse the same counting rules as the report.
    """
    return _tables(_normalize(metadata), metadata, duplicates, quarantine, near_duplicates)


def build_figures(metadata: pd.DataFrame, duplicates: pd.DataFrame, quarantine: pd.DataFrame,
                  near_duplicates: pd.DataFrame | None = None) -> dict[str, Figure]:
    """Every figure of ``FIGURE_TITLES`` as a matplotlib ``Figure`` (not saved), for notebooks and tests."""
    cols = _normalize(metadata)
    return _figures(cols, _tables(cols, metadata, duplicates, quarantine, near_duplicates))


def render_png(figure: Figure) -> bytes:
    """PNG bytes of ``figure`` through an explicit Agg canvas: no pyplot, no backend switch."""
    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with _style():
        canvas.print_png(buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# figures


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Seaborn's whitegrid look for the duration of one figure, restored afterwards."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}
    with _STYLE_LOCK, mpl.rc_context(rc):
        yield


def _figures(cols: _Columns, tables: Mapping[str, pd.DataFrame]) -> dict[str, Figure]:
    builders: dict[str, Callable[[], Figure]] = {
        "class_distribution": lambda: _class_distribution_figure(tables["class_counts"]),
        "classes_per_source": lambda: _classes_per_source_figure(tables["source_by_class"]),
        "anatomical_site": lambda: _category_by_class_figure(
            tables["anatomical_site_by_class"], "anatom_site_general", "Anatomical site"),
        "sex": lambda: _category_by_class_figure(tables["sex_by_class"], "sex", "Sex"),
        "age_distribution": lambda: _age_figure(cols),
        "image_dimensions": lambda: _dimensions_figure(cols),
        "missing_values": lambda: _missing_figure(tables["missing_values"], cols.n),
        "duplicates_quarantine": lambda: _duplicates_quarantine_figure(
            tables["duplicates_by_reason"], tables["quarantine_by_reason"]),
        "source_overlap": lambda: _source_overlap_figure(tables["source_overlap"]),
    }
    figures = {}
    for name in FIGURE_TITLES:
        with _style():  # rcParams are read when artists are created, so build inside the style
            figures[name] = builders[name]()
    return figures


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _no_data(ax: Axes, reason: str) -> None:
    """Mark a panel as empty in words, so an empty input is visible rather than a blank axis."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, f"no data\n({reason})", transform=ax.transAxes, ha="center", va="center",
            fontsize=13, color="0.45")


def _class_colours(classes: list[str]) -> dict[str, str]:
    extra = [c for c in classes if c not in CLASS_COLOURS]
    palette = sns.color_palette("muted", len(extra)).as_hex() if extra else []
    return {**CLASS_COLOURS, **dict(zip(extra, palette, strict=True))}


def benign_malignant_ratio(benign: int, malignant: int) -> str:
    """``"55.7 : 1"`` style ratio for titles; ``n/a`` with the reason when a side is empty."""
    if malignant == 0:
        return "n/a (no malignant images)"
    if benign == 0:
        return "n/a (no benign images)"
    if benign >= malignant:
        return f"{benign / malignant:,.1f} : 1"
    return f"1 : {malignant / benign:,.1f}"


def _class_distribution_figure(counts: pd.DataFrame) -> Figure:
    figure = _new_figure(8, 5)
    ax = figure.subplots()
    total = int(counts["count"].sum())
    by_class = dict(zip(counts["class"], counts["count"], strict=True))
    ratio = benign_malignant_ratio(int(by_class.get("benign", 0)), int(by_class.get("malignant", 0)))
    ax.set_title(f"Class distribution, {total:,} images\nbenign:malignant = {ratio}")
    ax.set_xlabel("benign_malignant")
    ax.set_ylabel("images")
    if total == 0:
        _no_data(ax, "no metadata rows")
        return figure
    colours = _class_colours(list(counts["class"]))
    bars = ax.bar(counts["class"], counts["count"], color=[colours[c] for c in counts["class"]])
    labels = [f"{c:,}\n({p:.1f}%)" for c, p in zip(counts["count"], counts["percent"], strict=True)]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=9)
    ax.set_ylim(0, counts["count"].max() * 1.2)
    ax.yaxis.set_major_formatter(StrMethodFormatter(_THOUSANDS))
    ax.grid(axis="x", visible=False)
    return figure


def _stacked_barh(ax: Axes, counts: pd.DataFrame, colours: Mapping[str, str], *, share: bool) -> None:
    """Horizontal bars stacked by class, largest category on top.

    With ``share`` each bar is 100% so a minority class stays visible next to a huge one; without,
    the total is written at the end of each bar. Segments wide enough for text carry their value.
    """
    values = counts.to_numpy(dtype="float64")
    totals = values.sum(axis=1)
    plotted = 100.0 * values / np.where(totals == 0, 1, totals)[:, None] if share else values
    longest = float(plotted.sum(axis=1).max())
    y = np.arange(len(counts))
    left = np.zeros(len(counts))
    for j, cls in enumerate(counts.columns):
        width = plotted[:, j]
        if not width.any():
            continue
        bars = ax.barh(y, width, left=left, color=colours[cls], label=cls, edgecolor="white", linewidth=0.5)
        texts = [(f"{w:.0f}%" if share else f"{int(v):,}") if w >= 0.08 * longest else ""
                 for w, v in zip(width, values[:, j], strict=True)]
        ax.bar_label(bars, labels=texts, label_type="center", fontsize=7, color="white")
        left += width
    ax.set_yticks(y, [str(i) for i in counts.index])
    ax.grid(axis="y", visible=False)
    if share:
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of the row's images")
        return
    for yi, total in zip(y, totals, strict=True):  # one label per category (tens), not per image
        ax.annotate(f"{int(total):,}", (total, yi), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlim(0, longest * 1.18 if longest else 1)
    ax.xaxis.set_major_formatter(StrMethodFormatter(_THOUSANDS))
    ax.set_xlabel("images")


def _malignant_share_barh(ax: Axes, counts: pd.DataFrame, colour: str) -> None:
    """Malignant / (benign + malignant) per category: the rate a melanoma model has to learn."""
    benign = counts["benign"].to_numpy() if "benign" in counts else np.zeros(len(counts))
    malignant = counts["malignant"].to_numpy() if "malignant" in counts else np.zeros(len(counts))
    labelled = benign + malignant
    share = np.divide(100.0 * malignant, labelled, out=np.zeros(len(counts)), where=labelled > 0)
    bars = ax.barh(np.arange(len(counts)), share, color=colour)
    texts = [f"{s:.1f}% ({int(m):,} of {int(n):,})" if n else "no benign/malignant"
             for s, m, n in zip(share, malignant, labelled, strict=True)]
    ax.bar_label(bars, labels=texts, padding=3, fontsize=7)
    ax.set_xlim(0, max(float(share.max()) * 1.6, 1.0))
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("% malignant of benign + malignant")
    ax.set_title("Malignant share")


def _category_height(n: int) -> float:
    return max(3.6, 0.36 * n + 2.0)


def _category_by_class_figure(table: pd.DataFrame, column: str, label: str) -> Figure:
    """Counts per category stacked by class, beside each category's malignant share."""
    counts = table.set_index(column).drop(columns="total")
    figure = _new_figure(12, _category_height(len(counts)))
    left, right = figure.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    figure.suptitle(f"{label} by class ({column}), {int(table['total'].sum()):,} images")
    left.set_title("Images, stacked by class")
    left.set_ylabel(column)
    if counts.empty:
        _no_data(left, "no metadata rows")
        _no_data(right, "no metadata rows")
        return figure
    colours = _class_colours(list(counts.columns))
    _stacked_barh(left, counts, colours, share=False)
    left.invert_yaxis()  # shared with the right panel: invert once
    _malignant_share_barh(right, counts, colours["malignant"])
    figure.legend(*left.get_legend_handles_labels(), loc="outside lower center",
                  ncols=len(counts.columns), title="class", fontsize=8)
    return figure


def _classes_per_source_figure(table: pd.DataFrame) -> Figure:
    counts = table.set_index("source").drop(columns="total")
    figure = _new_figure(12, _category_height(len(counts)))
    left, right = figure.subplots(1, 2, sharey=True)
    figure.suptitle(f"Classes per source (source of the kept image), {int(table['total'].sum()):,} images")
    left.set_title("Images, stacked by class")
    right.set_title("Share of each class within the source")
    left.set_ylabel("source")
    if counts.empty:
        _no_data(left, "no metadata rows")
        _no_data(right, "no metadata rows")
        return figure
    colours = _class_colours(list(counts.columns))
    _stacked_barh(left, counts, colours, share=False)
    _stacked_barh(right, counts, colours, share=True)
    left.invert_yaxis()
    figure.legend(*left.get_legend_handles_labels(), loc="outside lower center",
                  ncols=len(counts.columns), title="class", fontsize=8)
    return figure


def _age_bins(ages: pd.Series) -> np.ndarray:
    """Bin edges centred on multiples of 5, so each published 5-year step gets its own bar."""
    low = np.floor(ages.min() / AGE_STEP) * AGE_STEP - AGE_STEP / 2
    high = np.ceil(ages.max() / AGE_STEP) * AGE_STEP + AGE_STEP / 2
    return np.arange(low, high + AGE_STEP / 2, AGE_STEP)


def _age_figure(cols: _Columns) -> Figure:
    figure = _new_figure(13, 5)
    overall, by_class = figure.subplots(1, 2)
    known = cols.age.dropna()
    missing = cols.n - len(known)
    missing_pct = 100.0 * missing / cols.n if cols.n else 0.0
    figure.suptitle(f"Age (age_approx, 5-year steps): {len(known):,} images with an age, "
                    f"{missing:,} missing ({missing_pct:.1f}%)")
    overall.set_title("All images")
    by_class.set_title("By class (share within each class)")
    for ax in (overall, by_class):
        ax.set_xlabel("age_approx (years)")
    overall.set_ylabel("images")
    by_class.set_ylabel("% of the class's images with an age")
    if known.empty:
        _no_data(overall, "no ages recorded")
        _no_data(by_class, "no ages recorded")
        return figure
    edges = _age_bins(known)
    centres = edges[:-1] + AGE_STEP / 2
    counts, _ = np.histogram(known, bins=edges)
    bars = overall.bar(centres, counts, width=AGE_STEP * 0.9, color="#55a868")
    overall.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], padding=2, fontsize=7,
                      rotation=90 if len(counts) > 12 else 0)
    overall.set_ylim(0, counts.max() * 1.25)
    overall.yaxis.set_major_formatter(StrMethodFormatter(_THOUSANDS))
    classes = _class_order(cols.label)
    colours = _class_colours(classes)
    for cls in classes:  # a handful of classes
        ages = cols.age[(cols.label == cls) & cols.age.notna()]
        if ages.empty:
            continue
        class_counts, _ = np.histogram(ages, bins=edges)
        by_class.plot(centres, 100.0 * class_counts / len(ages), marker="o", markersize=3,
                      color=colours[cls], label=f"{cls} (n={len(ages):,})")
    by_class.set_ylim(bottom=0)
    by_class.legend(title="class", fontsize=8)
    return figure


def _scatter_points(cols: _Columns) -> tuple[pd.DataFrame, int]:
    """Distinct (source, width, height) with their image count; a weighted sample if too many.

    ISIC sizes repeat heavily (whole releases share one size), so aggregating first draws each
    size once with a marker sized by its count, exact and fast even for the full archive.
    """
    dims = _valid_dimensions(cols)
    points = dims.groupby(["source", "width", "height"], sort=True).size().rename("images").reset_index()
    distinct = len(points)
    if distinct > MAX_SCATTER_POINTS:
        points = points.sample(n=MAX_SCATTER_POINTS, weights="images", random_state=0)
    return points, distinct


def _annotate_size_counts(ax: Axes, points: pd.DataFrame, sources: list[str], palette: list) -> None:
    """With few sizes, write each point's image count beside it in its source's colour.

    Sources sharing a size (600x450 is in several releases) get their labels stacked upwards
    rather than printed over each other.
    """
    rank = {source: i for i, source in enumerate(sources)}
    ordered = points.assign(rank=points["source"].map(rank)).sort_values(["rank", "width", "height"])
    ordered["stack"] = ordered.groupby(["width", "height"]).cumcount()
    for row in ordered.itertuples(index=False):  # at most _ANNOTATE_MAX_POINTS labels
        ax.annotate(f"{row.images:,}", (row.width, row.height), xytext=(8, 4 + 10 * row.stack),
                    textcoords="offset points", fontsize=7, color=palette[row.rank])


def _dimensions_figure(cols: _Columns) -> Figure:
    figure = _new_figure(10, 7)
    ax = figure.subplots()
    points, distinct = _scatter_points(cols)
    shown = int(points["images"].sum())
    unknown = cols.n - len(_valid_dimensions(cols))
    note = f", {unknown:,} without a size" if unknown else ""
    sample = f"; weighted sample of {len(points):,} sizes shown" if len(points) < distinct else ""
    ax.set_title(f"Image dimensions by source (recorded at merge): {distinct:,} distinct sizes{note}{sample}\n"
                 "marker area grows with the number of images of that size")
    ax.set_xlabel("width (px, log scale)")
    ax.set_ylabel("height (px, log scale)")
    if points.empty:
        _no_data(ax, "no width/height recorded")
        return figure
    sources = points.groupby("source")["images"].sum().sort_values(ascending=False)
    palette = sns.color_palette("colorblind" if len(sources) <= 10 else "husl", len(sources))
    # Hollow markers of a distinct shape per source: sources often share a size (1024x768 spans
    # several releases) and filled markers would hide all but the last one drawn.
    for i, (colour, (source, images)) in enumerate(zip(palette, sources.items(), strict=True)):
        own = points[points["source"] == source]
        ax.scatter(own["width"], own["height"], s=20 + 40 * np.log10(own["images"]),
                   marker=_MARKERS[i % len(_MARKERS)], facecolors="none", edgecolors=colour,
                   linewidths=1.4, label=f"{source} ({images:,})")
    if len(points) <= _ANNOTATE_MAX_POINTS:
        _annotate_size_counts(ax, points, sources.index.tolist(), palette)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 6.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.margins(0.08)
    legend = ax.legend(title=f"source (images; {shown:,} plotted)", loc="upper left",
                       bbox_to_anchor=(1.01, 1), fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    return figure


def _missing_label(percent: float) -> str:
    if percent == 0:
        return "0%"
    if percent < 0.1:
        return "<0.1%"
    return f"{percent:.1f}%"


def _missing_figure(table: pd.DataFrame, rows: int) -> Figure:
    figure = _new_figure(9, _category_height(len(table)))
    ax = figure.subplots()
    ax.set_title(f"Missing values per column, {rows:,} rows (empty string = missing)")
    ax.set_xlabel("% of rows missing")
    ax.set_ylabel("column")
    if table.empty or rows == 0:
        _no_data(ax, "no metadata rows")
        return figure
    percent = table["missing_percent"].to_numpy(dtype="float64")
    colours = sns.color_palette("rocket_r", as_cmap=True)(0.15 + 0.7 * percent / 100.0)
    bars = ax.barh(np.arange(len(table)), percent, color=colours)
    ax.bar_label(bars, labels=[_missing_label(p) for p in percent], padding=3, fontsize=8)
    ax.set_yticks(np.arange(len(table)), table["column"].tolist())
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)  # room for the label of a 100% bar
    ax.set_xticks(range(0, 101, 20))
    return figure


def _reason_barh(ax: Axes, table: pd.DataFrame, what: str, empty: str, colour: str) -> None:
    total = int(table["count"].sum())
    ax.set_title(f"{what}: {total:,}")
    ax.set_xlabel("rows")
    ax.set_ylabel("reason")
    if table.empty:
        _no_data(ax, empty)
        return
    y = np.arange(len(table))
    bars = ax.barh(y, table["count"], color=colour)
    ax.bar_label(bars, labels=[f"{c:,}" for c in table["count"]], padding=3, fontsize=8)
    ax.set_yticks(y, table["reason"].tolist())
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    ax.set_xlim(0, table["count"].max() * 1.18)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(StrMethodFormatter(_THOUSANDS))


def _duplicates_quarantine_figure(duplicates: pd.DataFrame, quarantine: pd.DataFrame) -> Figure:
    figure = _new_figure(12, _category_height(max(len(duplicates), len(quarantine), 3)))
    left, right = figure.subplots(1, 2)
    figure.suptitle("Left out at merge: duplicates dropped and images/rows quarantined, by reason")
    _reason_barh(left, duplicates, "Duplicates dropped", "nothing dropped as a duplicate", "#8172b3")
    _reason_barh(right, quarantine, "Quarantined", "nothing quarantined", "#937860")
    return figure


def _source_overlap_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars per pair of sources: shared ids, same bytes under another id, near-duplicates."""
    kinds = ("same_id", "same_content", "near_duplicate")
    figure = _new_figure(7.5, _category_height(max(1, len(table))) + 0.6)
    ax = figure.add_subplot()
    if table.empty:
        _no_data(ax, "no two selected sources share an image")
        return figure
    labels = [f"{a} & {b}" for a, b in zip(table["source_a"], table["source_b"], strict=True)]
    positions = np.arange(len(table))
    height = 0.8 / len(kinds)
    palette = sns.color_palette("deep", len(kinds))
    for k, kind in enumerate(kinds):
        values = table[kind].to_numpy()
        bars = ax.barh(positions + (k - 1) * height, values, height=height, color=palette[k], label=kind)
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=7)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.xaxis.set_major_formatter(StrMethodFormatter(_THOUSANDS))
    ax.legend(loc="lower right", fontsize=8)
    return figure
