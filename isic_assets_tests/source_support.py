"""Small real sources for the core's fault tests: noise JPEGs zipped in the ISBI 2016 layout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from isic_assets.core.merge.merge_sources import SourceArchive


def noise_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A ``size`` (width, height) JPEG of random pixels: distinct per seed, and costly to compress,
    so its byte count is close to the pixels' (what the disk-full tests size their tmpfs by)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def isic2016_source(folder: Path, count: int, size: tuple[int, int] = (64, 48)) -> SourceArchive:
    """One source "a": ``count`` benign images ISIC_0000000... in a.zip, with its ground-truth CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(count):
            zf.writestr(f"a/ISIC_{i:07d}.jpg", noise_jpeg(i, size))
    gt = folder / "a.csv"
    gt.write_text("".join(f"ISIC_{i:07d},benign\r\n" for i in range(count)))
    return SourceArchive(name="a", format="isic2016", order=0, files={"images": archive, "ground_truth": gt})
