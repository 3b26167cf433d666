"""Small images for the Dagster asset pages: a strip of transformed samples and the split composition.

Both come back as markdown with the image inlined as a base64 data URI. They are stored in the event
log with every materialization, so they are kept to a few kilobytes; the full figures are files.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def contact_sheet(images_dir: Path, ids: Sequence[str], tile: int = 96) -> str:
    """A strip of ``<images_dir>/<isic_id>.jpg`` tiles, each ``tile`` pixels square, plus their ids."""
    if not ids:
        return "no images"
    tiles = []
    for isic_id in ids:
        with Image.open(Path(images_dir) / f"{isic_id}.jpg") as img:
            tiles.append(np.asarray(img.convert("RGB").resize((tile, tile))))
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=80)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![samples](data:image/jpeg;base64,{encoded})\n\n{', '.join(ids)}"


def composition_plot(counts: pd.DataFrame) -> str:
    """A stacked-bar PNG of images per split (rows) and class (columns)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = counts.fillna(0)
    figure = Figure(figsize=(4.2, 2.4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bottom = pd.Series(0, index=counts.index, dtype=float)
    for label in counts.columns:
        bars = axes.bar(counts.index, counts[label], bottom=bottom, label=label)
        axes.bar_label(bars, labels=[str(int(v)) if v else "" for v in counts[label]], label_type="center",
                       fontsize=7)
        bottom += counts[label]
    axes.set_ylabel("images")
    axes.set_title("images per split and class", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return f"![composition](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
