"""Synthetic dermoscopy pictures for the demo mirror: cheap, deterministic, plausible.

The pipeline never looks at what a lesion means, only at what a file is: its format, its size, its
bytes and whether it decodes. So the pictures only need to look like dermoscopy (skin, a brown
irregular blob, hairs, the dark ring of a dermoscope) to make plots and thumbnails believable, and
they must be cheap enough to make hundreds of them in seconds, including 4000x3000 ones.

How it stays cheap: every smooth structure is computed on a small canvas (long side 200 px) and
upscaled once with ``cv2.resize``; only the hairs (thin, so they must be drawn at full size) and the
sensor noise (a small random tile repeated) touch full-resolution pixels.

How it stays deterministic: every picture gets its own ``numpy`` Generator derived from the mirror
seed and the picture's name (``picture_rng``), so a picture's pixels never depend on which pictures
were made before it, or in which thread. Encoders run with fixed settings.
"""

from __future__ import annotations

import hashlib
import io

import cv2
import numpy as np
from PIL import Image

JPEG_QUALITY = 90
# Pillow's subsampling code 2 is 4:2:0, what cameras and the ISIC JPEGs use.
JPEG_SUBSAMPLING_420 = 2
PNG_COMPRESS_LEVEL = 6
EXIF_ORIENTATION_TAG = 0x0112

_CANVAS_LONG_SIDE = 200
_NOISE_TILE = 64


def picture_rng(seed: int, name: str) -> np.random.Generator:
    """A Generator that depends only on the mirror seed and one picture's name.

    Seeding per picture (instead of drawing from one stream) keeps each picture's bytes stable when
    pictures are added, removed, reordered or rendered in parallel.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Unit-variance-ish random field with features about ``shape / cells`` wide (float32)."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _canvas_size(width: int, height: int) -> tuple[int, int]:
    scale = max(1.0, max(width, height) / _CANVAS_LONG_SIDE)
    return max(8, round(width / scale)), max(8, round(height / scale))


def _skin(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Skin tone with lighting gradient and mottled texture, float32 RGB on the small canvas."""
    tone = np.array([rng.uniform(195, 235), rng.uniform(140, 180), rng.uniform(120, 160)], dtype=np.float32)
    tilt_x, tilt_y = (np.float32(v) for v in rng.uniform(-0.18, 0.18, 2))
    shape = xx.shape
    shade = (
        1.0
        + tilt_x * (xx - 0.5)
        + tilt_y * (yy - 0.5)
        + np.float32(0.05) * _smooth_field(rng, shape, (4, 5))
        + np.float32(0.03) * _smooth_field(rng, shape, (24, 32))
    )
    return shade[..., None] * tone


def _lesion_alpha(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Irregular blob: a circle whose radius wobbles with a few random harmonics.

    Returns the soft coverage mask and how deep inside the lesion each pixel is (0 edge, 1 centre),
    which drives the darker centre real pigmented lesions show.
    """
    aspect = np.float32(xx.shape[1] / xx.shape[0])
    cx, cy = (np.float32(v) for v in rng.uniform(0.35, 0.65, 2))
    base_radius = np.float32(rng.uniform(0.12, 0.3))
    dx = (xx - cx) * aspect
    dy = yy - cy
    theta = np.arctan2(dy, dx)
    dist = np.sqrt(dx * dx + dy * dy)
    radius = np.full_like(theta, base_radius)
    for harmonic in range(2, 7):
        amplitude = np.float32(base_radius * rng.uniform(0.0, 0.5 / harmonic))
        radius += amplitude * np.cos(harmonic * theta + np.float32(rng.uniform(0, 2 * np.pi)))
    softness = np.float32(0.02 + 0.05 * rng.random())
    alpha = np.clip((radius - dist) / softness, 0.0, 1.0)
    depth = np.clip(1.0 - dist / np.maximum(radius, 1e-3), 0.0, 1.0)
    return alpha, depth


def _lesion_colour(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Brown pigment, darker towards the centre, with mottling and a faint pigment network."""
    shape = xx.shape
    mottle = 0.5 * _smooth_field(rng, shape, (12, 16)) + 0.5 * _smooth_field(rng, shape, (48, 64))
    pitch = np.float32(rng.uniform(0.6, 1.1))
    network = np.sin(xx * shape[1] * pitch + 3 * mottle) * np.sin(yy * shape[0] * pitch + 3 * mottle)
    darkness = np.clip(0.5 + 0.35 * depth + 0.15 * mottle + 0.08 * network, 0.0, 1.0)
    red = rng.uniform(110, 160)
    green = red * rng.uniform(0.5, 0.65)
    brown = np.array([red, green, green * rng.uniform(0.5, 0.75)], dtype=np.float32)
    return brown * (1.15 - 0.65 * darkness)[..., None]


def _vignette(xx: np.ndarray, yy: np.ndarray, radius: float) -> np.ndarray:
    """Coverage of the round dermoscope field of view (1 inside, 0 in the dark corners)."""
    aspect = np.float32(xx.shape[1] / xx.shape[0])
    dist = np.sqrt(((xx - 0.5) * aspect) ** 2 + (yy - 0.5) ** 2) / max(aspect, np.float32(1.0))
    return np.clip((np.float32(radius) - dist) / np.float32(0.015), 0.0, 1.0)


def _draw_hairs(rng: np.random.Generator, image: np.ndarray) -> None:
    """Thin dark quadratic curves drawn at full size (upscaled hairs would be blurry ropes)."""
    height, width = image.shape[:2]
    thickness = max(1, round(min(width, height) / 600))
    steps = np.linspace(0.0, 1.0, max(32, max(width, height) // 40))[:, None]  # no visible kinks
    for _ in range(int(rng.integers(1, 9))):
        p0, p1, p2 = rng.uniform(0.0, 1.0, (3, 2)) * (width, height)
        curve = (1 - steps) ** 2 * p0 + 2 * (1 - steps) * steps * p1 + steps**2 * p2
        colour = tuple(int(c) for c in rng.uniform(15, 60, 3))
        cv2.polylines(image, [curve.astype(np.int32)], False, colour, thickness, cv2.LINE_AA)


def _add_noise(rng: np.random.Generator, image: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Mild sensor noise from one small random tile repeated: full-size Gaussian draws are too slow.

    The signed noise is applied as a saturating uint8 add of its positive part and subtract of its
    negative part, which is about three times faster than widening the picture to int16.
    """
    height, width = image.shape[:2]
    tile = np.rint(rng.normal(0.0, sigma, (_NOISE_TILE, _NOISE_TILE, 3)))
    reps = (height // _NOISE_TILE + 1, width // _NOISE_TILE + 1)
    brighter = cv2.repeat(np.clip(tile, 0, 255).astype(np.uint8), *reps)[:height, :width]
    darker = cv2.repeat(np.clip(-tile, 0, 255).astype(np.uint8), *reps)[:height, :width]
    noisy = cv2.add(image, brighter)
    cv2.subtract(noisy, darker, dst=noisy)
    return noisy


def synth_dermoscopy(
    rng: np.random.Generator, width: int, height: int, *, vignette: bool | None = None
) -> np.ndarray:
    """Return a dermoscopy-like RGB picture, shape ``(height, width, 3)``, dtype uint8.

    Skin-tone shading and texture, one irregular brown lesion, a few hairs, mild noise and (on about
    half the pictures, or as ``vignette`` says) the dark circular border of a contact dermoscope.
    All randomness comes from ``rng``, so the same Generator state gives the same pixels.
    """
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {width}x{height}")
    canvas_w, canvas_h = _canvas_size(width, height)
    yy, xx = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
    xx /= np.float32(canvas_w)
    yy /= np.float32(canvas_h)
    picture = _skin(rng, xx, yy)
    alpha, depth = _lesion_alpha(rng, xx, yy)
    lesion = _lesion_colour(rng, xx, yy, depth)
    picture = picture * (1.0 - alpha[..., None]) + lesion * alpha[..., None]
    with_vignette = bool(rng.random() < 0.5) if vignette is None else vignette
    if with_vignette:
        field = _vignette(xx, yy, rng.uniform(0.47, 0.6))
        picture = picture * (0.04 + 0.96 * field)[..., None]
    small = np.clip(picture, 0, 255).astype(np.uint8)
    full = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    _draw_hairs(rng, full)
    return _add_noise(rng, full)


def encode_jpeg(
    rgb: np.ndarray, quality: int = JPEG_QUALITY, *, exif_orientation: int | None = None
) -> bytes:
    """Baseline JPEG, 4:2:0, no optimisation passes: fixed settings so equal pixels give equal bytes.

    cv2 encodes (about 30% faster than Pillow here); Pillow only when an EXIF Orientation tag is
    wanted, written alone, like a camera that did not rotate the pixels.
    """
    if exif_orientation is None:
        params = [
            cv2.IMWRITE_JPEG_QUALITY, quality,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
            cv2.IMWRITE_JPEG_OPTIMIZE, 0,
            cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
        ]  # fmt: skip
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError("cv2 could not encode the picture as JPEG")
        return encoded.tobytes()
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = exif_orientation
    Image.fromarray(rgb).save(
        buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING_420, optimize=False,
        progressive=False, exif=exif.tobytes(),
    )  # fmt: skip
    return buffer.getvalue()


def encode_png(rgb: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG with a fixed compression level (zlib output is deterministic for a given level)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def synth_superpixels(rng: np.random.Generator, width: int, height: int, cell: int = 24) -> bytes:
    """A 2017-style superpixel PNG: each region's index encoded in the R and G channels.

    ISIC 2017 shipped one such label image per photo; the pipeline must skip them, so only their
    name, format and size matter. Regions are a grid warped by a smooth field, built on a small canvas
    and upscaled with nearest-neighbour so labels stay exact.
    """
    canvas_w, canvas_h = _canvas_size(width, height)
    yy, xx = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
    warp = cell / 3.0
    xx += warp * _smooth_field(rng, (canvas_h, canvas_w), (6, 8))
    yy += warp * _smooth_field(rng, (canvas_h, canvas_w), (6, 8))
    columns = canvas_w // cell + 2
    labels = (np.clip(yy // cell, 0, None) * columns + np.clip(xx // cell, 0, None)).astype(np.int32)
    rgb = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    rgb[..., 0] = labels & 0xFF
    rgb[..., 1] = (labels >> 8) & 0xFF
    full = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_NEAREST)
    # Level 1: a third faster than the default on these flat images, and they are never decoded.
    return encode_png(full, compress_level=1)


def downsample(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The smaller copy 2019 republished some older photos as (``ISIC_..._downsampled.jpg``)."""
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def near_duplicate(rng: np.random.Generator, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Same photo re-exported: a slight crop, a resize and a tiny exposure change.

    The 2020 duplicates list pairs such images; they look identical but their bytes differ, so only
    the list (or a perceptual hash) can find them.
    """
    src_h, src_w = rgb.shape[:2]
    crop_x = int(rng.integers(0, max(1, src_w // 50)))
    crop_y = int(rng.integers(0, max(1, src_h // 50)))
    cropped = rgb[crop_y : src_h - crop_y, crop_x : src_w - crop_x]
    resized = cv2.resize(cropped, (width, height), interpolation=cv2.INTER_AREA)
    gain = float(rng.uniform(0.97, 1.03))
    return cv2.convertScaleAbs(resized, alpha=gain, beta=0.0)


def truncate(data: bytes) -> bytes:
    """First half of a file: what an interrupted upload leaves (headers parse, decoding fails)."""
    return data[: len(data) // 2]


def garbage(rng: np.random.Generator, size: int) -> bytes:
    """Random bytes with no image signature, for a member that only pretends to be a JPEG."""
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    # A random first byte of 0xFF could start a JPEG marker by chance; make sure it cannot.
    return b"\x00" + data[1:]
