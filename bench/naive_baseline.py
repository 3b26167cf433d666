"""The notebook baseline bench_transform.py measures the fast path against, and its self-check.

Benchmark code only: nothing in the package uses it. ``check_same_geometry`` runs before every
bench so a ratio is never reported against a baseline that makes different pictures.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from isic_assets.core.transform.image_ops import ImageDecodeError, TransformSettings, transform_bytes


def naive_transform(src: Path, dst: Path, size: int, mode: str = "stretch") -> None:
    """The notebook baseline the bench measures against (docs/PERFORMANCE.md 2): ``cv2.imread`` of the full
    image, full-size ``cvtColor``, INTER_AREA resize, ``cv2.imwrite`` q95. ``mode`` gives the same
    geometry as the fast path (stretch, or pad/center_crop done on full-size pixels)."""
    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(f"{src}: cv2.imread cannot decode it")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    if mode == "stretch":
        out = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    elif mode == "center_crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        out = cv2.resize(rgb[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)
    elif mode == "pad":
        scale = size / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        content = cv2.resize(rgb, new, interpolation=cv2.INTER_AREA)
        out = np.zeros((size, size, 3), np.uint8)
        y0, x0 = (size - new[1]) // 2, (size - new[0]) // 2
        out[y0 : y0 + new[1], x0 : x0 + new[0]] = content
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    if not cv2.imwrite(str(dst), cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cv2.imwrite could not write {dst}")


def check_same_geometry() -> None:
    """The baseline must produce comparable outputs to the fast path, or the speed ratio means nothing."""
    yy, xx = np.mgrid[0:150, 0:240]
    picture = np.stack([xx, yy, (xx + yy) // 2], axis=2).astype(np.uint8)  # smooth ramps
    picture[50:100, 100:140] = (20, 30, 200)  # an off-centre block to catch misplaced geometry
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=95)
    with tempfile.TemporaryDirectory(prefix="naive_check_") as folder:
        src = Path(folder) / "src.jpg"
        src.write_bytes(buffer.getvalue())
        for mode in ("stretch", "pad", "center_crop"):
            dst = Path(folder) / f"naive-{mode}.jpg"
            naive_transform(src, dst, 64, mode=mode)
            naive = simplejpeg.decode_jpeg(dst.read_bytes()).astype(int)
            fast = transform_bytes(src.read_bytes(), TransformSettings(size=64, mode=mode))[1].astype(int)
            error = float(np.abs(naive - fast).mean())
            if naive.shape != fast.shape or error >= 3:
                raise SystemExit(f"the naive baseline ({mode}) makes other pictures than the fast path: shapes "
                                 f"{naive.shape} vs {fast.shape}, mean abs difference {error:.2f}; fix it first")


if __name__ == "__main__":
    check_same_geometry()
    print("the naive baseline makes the same geometry as the fast path")
