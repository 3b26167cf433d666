"""What the per-image time limits must stay above: the slowest 6000x4000 image, checked and transformed.

The merge's check (``image_check.inspect_image``: 1/8-scale strict decode + sha256) and the
transform (``transform_bytes``) each get a wall-clock limit per image (60 s by default) that only a
hanging decoder may reach. This measures the largest time a 6000x4000 JPEG (the largest ISIC size)
takes, on noise (the worst case for the entropy decoder) and with every optional transform step on.

Run from the repository root::

    .venv/bin/python bench/bench_time_limit.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_core import time_runs  # the same timing loop as the other core benches

from isic_assets.core.merge.image_check import DEFAULT_CHECK_TIME_LIMIT_S, inspect_image
from isic_assets.core.transform.image_ops import TransformSettings, transform_bytes
from isic_assets.core.transform.runner import DEFAULT_IMAGE_TIME_LIMIT_S


def _big_jpeg(quality: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (4000, 6000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _worst(fn, repeats: int = 3) -> float:
    return max(time_runs(repeats, fn))


def main() -> None:
    data = _big_jpeg(95)
    rows = [
        ("merge check (1/8 decode + sha256)", _worst(lambda: inspect_image(data, "big.jpg")),
         DEFAULT_CHECK_TIME_LIMIT_S),
        ("transform 256 px pad", _worst(lambda: transform_bytes(data, TransformSettings(size=256))),
         DEFAULT_IMAGE_TIME_LIMIT_S),
        ("transform 1024 px, colour constancy + hair removal",
         _worst(lambda: transform_bytes(data, TransformSettings(size=1024, color_constancy=True, hair_removal=True))),
         DEFAULT_IMAGE_TIME_LIMIT_S),
    ]
    print(f"6000x4000 noise JPEG q95, {len(data) / 1e6:.1f} MB; worst of 3 runs")
    print("| step | worst seconds | limit (s) | headroom |")
    print("|---|---:|---:|---:|")
    for name, seconds, limit in rows:
        print(f"| {name} | {seconds:.2f} | {limit:g} | {limit / seconds:.0f}x |")


if __name__ == "__main__":
    main()
