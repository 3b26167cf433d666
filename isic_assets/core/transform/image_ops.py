"""Image operations of ``transformed_images``: fast downscaled decode, resize, optional dermoscopy steps.

The order inside ``transform_bytes`` is chosen for speed first (docs/PERFORMANCE.md 12.1: one read, one
decode): libjpeg-turbo decodes the JPEG already shrunk by the largest power-of-two DCT factor that
still leaves enough pixels for the target, the EXIF orientation is applied to that small array,
``cv2.resize`` finishes the job, and the optional colour-constancy and hair-removal steps run on the
final-size content (before any padding, so the black border neither biases the illuminant estimate
nor looks like a "hair" to the black-hat filter). Output is JPEG q95 4:2:0 (docs/PERFORMANCE.md 4).

Everything here is pure and single-image; the process pool, incremental state and quarantine live
in ``transform.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import cv2
import numpy as np
import simplejpeg
from PIL import Image

# Bump whenever the output bytes for the same input and settings would change (a new step, another
# interpolation rule, a different encoder option): the fingerprint changes and everything is redone.
TRANSFORM_CODE_VERSION = "1"

ResizeMode = Literal["pad", "center_crop", "stretch"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)

# docs/PERFORMANCE.md 2: only the power-of-two factors have SIMD IDCT and do not ring; largest first.
_DCT_FACTORS = (8, 4, 2, 1)
# docs/PERFORMANCE.md 2: past a 2x shrink INTER_LINEAR aliases (hairs break up); up to 2x it is as clean.
_LINEAR_MAX_RATIO = 2.0
_JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg-turbo cannot turn these into RGB correctly (Adobe's inverted CMYK): Pillow handles them.
_PILLOW_JPEG_COLORSPACES = {"CMYK", "YCCK"}
_MAX_SIZE = 8192
# Pad colour: black, the colour of the dermoscope vignette most ISIC images already have, so the
# border looks like more of the same instead of a new artificial edge.
PAD_VALUE = 0


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image; deterministic for given bytes, so safe to remember."""


# ---------------------------------------------------------------------------------------------
# Decoding


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG SOI marker followed by another marker."""
    return data[:3] == _JPEG_MAGIC


def min_decoded_size(width: int, height: int, target: int, mode: ResizeMode) -> tuple[int, int]:
    """The smallest (width, height) a decode may have so ``mode`` can still reach ``target`` pixels.

    ``stretch`` needs both sides >= target; ``center_crop`` only the short side (the long side is
    cropped anyway); ``pad`` only the long side (the short side shrinks by the same factor).
    Values of 0 mean "no constraint" on that side.
    """
    _check_mode(mode)
    if mode == "stretch":
        return target, target
    short_is_width = width <= height
    if mode == "center_crop":
        return (target, 0) if short_is_width else (0, target)
    return (0, target) if short_is_width else (target, 0)


def choose_dct_factor(width: int, height: int, target: int, mode: ResizeMode = "stretch") -> int:
    """The largest d in {8, 4, 2, 1} whose decoded size ceil(W/d) x ceil(H/d) still satisfies ``mode``.

    libjpeg-turbo's scaled sizes are ceil(W/d), ceil(H/d); the remaining resize ratio is then < 2
    on the binding side, which is what makes the INTER_LINEAR rule apply (docs/PERFORMANCE.md 2).
    """
    need_w, need_h = min_decoded_size(width, height, target, mode)
    for factor in _DCT_FACTORS:
        if math.ceil(width / factor) >= need_w and math.ceil(height / factor) >= need_h:
            return factor
    return 1


def decode_downscaled(
    data: bytes, target: int, exif_orientation: int = 1, *, mode: ResizeMode = "stretch"
) -> np.ndarray:
    """Decode ``data`` to RGB uint8, already shrunk as far as ``mode`` allows for ``target``.

    JPEG: simplejpeg at the chosen power-of-two scale, passing min_width/min_height = ceil(W/d),
    ceil(H/d) so libjpeg-turbo picks exactly 1/d and never an M/8 factor (docs/PERFORMANCE.md 2: M/8
    factors have no SIMD IDCT and ring). ``strict=True`` turns libjpeg's "premature end" and
    "corrupt data" warnings into errors, so a truncated file is rejected rather than grey-filled.
    Other formats (and CMYK JPEGs) take Pillow's general path, box-reduced by the same factor.

    The default ``mode="stretch"`` is the conservative need (both sides >= target); pass the real
    resize mode to let ``pad``/``center_crop`` decode smaller. The EXIF orientation (1-8, as read
    at merge time; anything else means "as stored", like Pillow's ``exif_transpose``) is applied
    after decoding, on the small array, where a flip or transpose costs microseconds.

    Raises ``ImageDecodeError`` for bytes that are not a decodable image.
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    rgb = None
    if is_jpeg(data):
        rgb = _decode_jpeg_scaled(data, target, mode)
    if rgb is None:
        rgb = _decode_with_pillow(data, target, mode)
    return apply_exif_orientation(rgb, exif_orientation)


def decode_image(data: bytes) -> np.ndarray:
    """Full-size RGB uint8 decode of any supported image, no orientation applied.

    For the small stored outputs (augmentation copies) and for reference decodes in the bench.
    Raises ``ImageDecodeError``.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if is_jpeg(data):
        rgb = _decode_jpeg_at(data, 1)
        if rgb is not None:
            return rgb
    return _decode_with_pillow_at(data, 1)


def _decode_jpeg_scaled(data: bytes, target: int, mode: ResizeMode) -> np.ndarray | None:
    """simplejpeg decode at the chosen factor; None when the JPEG needs Pillow (CMYK/YCCK)."""
    height, width, _colorspace, _sub = _jpeg_header(data)
    return _decode_jpeg_at(data, choose_dct_factor(width, height, target, mode))


def _jpeg_header(data: bytes) -> tuple[int, int, str, str]:
    try:
        return simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageDecodeError(f"unreadable JPEG header: {exc}") from exc


def _decode_jpeg_at(data: bytes, factor: int) -> np.ndarray | None:
    height, width, colorspace, _sub = _jpeg_header(data)
    if colorspace in _PILLOW_JPEG_COLORSPACES:
        return None
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=math.ceil(width / factor),
            min_height=math.ceil(height / factor),
            strict=True,
        )
    except ValueError as exc:
        raise ImageDecodeError(f"corrupt or truncated JPEG: {exc}") from exc


def _decode_with_pillow(data: bytes, target: int, mode: ResizeMode) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc
    return _decode_with_pillow_at(data, choose_dct_factor(width, height, target, mode))


def _decode_with_pillow_at(data: bytes, factor: int) -> np.ndarray:
    """Pillow's general path: any mode to RGB (alpha composited on black), shrunk by ``factor``.

    A JPEG here (CMYK/YCCK only) uses ``draft``, libjpeg's own DCT scaling; other formats are
    decoded in full and box-reduced, which is exact averaging and cheap next to the decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and factor > 1:
                image.draft(image.mode, (math.ceil(image.width / factor), math.ceil(image.height / factor)))
                factor = 1
            image.load()
            rgb_image = _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc
    if factor > 1:
        rgb_image = rgb_image.reduce(factor)
    return np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert("RGB") clips at 255; scale the full range instead.
        wide = np.asarray(image, dtype=np.int64)
        grey = np.clip(wide >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (PAD_VALUE, PAD_VALUE, PAD_VALUE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Return ``img`` as displayed for EXIF ``orientation`` 1-8 (other values: unchanged).

    Same results as Pillow's ``ImageOps.exif_transpose``; cv2 flips/rotations return contiguous
    arrays, which the later cv2/simplejpeg calls require.
    """
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(img), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


# ---------------------------------------------------------------------------------------------
# Resizing


def _check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")


def resize_exact(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to exactly ``width`` x ``height``, choosing the filter per case (docs/PERFORMANCE.md 2).

    - ratio <= 2 on both axes (every upscale included): INTER_LINEAR, as clean as AREA there and
      up to 2x faster; for enlargements it is the right filter (cv2's INTER_AREA degenerates to
      nearest-neighbour blocks when zooming).
    - largest ratio in (2, 4], what DCT scaling usually leaves (6000x4000 squashed to 256 keeps
      2.9x horizontally): INTER_LINEAR to exactly twice the target (every ratio now <= 2, so no
      aliasing), then INTER_AREA by exactly 2, which OpenCV runs as a fast 2x2 box average.
      docs/PERFORMANCE.md 2 found non-integer INTER_AREA expensive; measured on the bench pictures this
      two-step is 3-4x faster (0.35-0.56 vs 0.85-1.93 ms) with MAD 0.31-0.36 instead of 0.25-0.33
      against a float full-decode reference, p99 <= 1.8.
    - larger ratios (extreme aspect ratios in stretch mode): INTER_AREA, or, if the other axis
      grows, AREA along the shrinking axis first and LINEAR along the growing one.
    """
    src_h, src_w = img.shape[:2]
    if (src_w, src_h) == (width, height):
        return img
    ratio_x, ratio_y = src_w / width, src_h / height
    if ratio_x <= _LINEAR_MAX_RATIO and ratio_y <= _LINEAR_MAX_RATIO:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    if max(ratio_x, ratio_y) <= 2 * _LINEAR_MAX_RATIO:
        doubled = cv2.resize(img, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(doubled, (width, height), interpolation=cv2.INTER_AREA)
    if ratio_x >= 1 and ratio_y >= 1:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    if ratio_x > 1:
        shrunk = cv2.resize(img, (width, src_h), interpolation=cv2.INTER_AREA)
    else:
        shrunk = cv2.resize(img, (src_w, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (width, height), interpolation=cv2.INTER_LINEAR)


def fit_content(img: np.ndarray, size: int, mode: ResizeMode) -> np.ndarray:
    """The resized picture content for ``mode``, before any padding.

    ``pad``: long side = ``size``, aspect kept; ``center_crop``: the centred square of side
    min(W, H) is cut first (in source pixels, so no pixel that will be thrown away is resampled)
    and resized to ``size`` x ``size``; ``stretch``: ``size`` x ``size`` regardless of aspect.
    """
    _check_mode(mode)
    height, width = img.shape[:2]
    if mode == "stretch":
        return resize_exact(img, size, size)
    if mode == "center_crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        return resize_exact(img[y0 : y0 + side, x0 : x0 + side], size, size)
    scale = size / max(width, height)
    return resize_exact(img, max(1, round(width * scale)), max(1, round(height * scale)))


def pad_to_square(img: np.ndarray, size: int, value: int = PAD_VALUE) -> np.ndarray:
    """Centre ``img`` (at most ``size`` on each side) on a ``size`` x ``size`` canvas of ``value``."""
    height, width = img.shape[:2]
    if (width, height) == (size, size):
        return img
    if width > size or height > size:
        raise ValueError(f"cannot pad a {width}x{height} image into {size}x{size}")
    canvas = np.full((size, size, img.shape[2]), value, dtype=img.dtype)
    y0, x0 = (size - height) // 2, (size - width) // 2
    canvas[y0 : y0 + height, x0 : x0 + width] = img
    return canvas


def resize(img: np.ndarray, size: int, mode: ResizeMode) -> np.ndarray:
    """Resize RGB ``img`` to a ``size`` x ``size`` square by ``mode`` (pad, center_crop, stretch)."""
    content = fit_content(img, size, mode)
    return pad_to_square(content, size) if mode == "pad" else content


# ---------------------------------------------------------------------------------------------
# Optional dermoscopy steps


def shades_of_gray(img: np.ndarray, p: int = 6) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004) on an RGB uint8 image.

    The illuminant is estimated per channel as the Minkowski p-norm mean (mean(I_c ** p)) ** (1/p);
    p=6 is the value Barata et al. (2015) found best for dermoscopy. The estimate is normalised to
    unit length and each channel is scaled by 1 / (sqrt(3) * e_c), so a grey illuminant leaves the
    image unchanged; results are rounded and clipped to uint8. Pure-black padding does not bias
    the result (it scales every channel's norm alike), but this runs before padding anyway.
    """
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    pixels = img.reshape(-1, img.shape[-1]).astype(np.float64) / 255.0
    illuminant = np.power(np.mean(np.power(pixels, p), axis=0), 1.0 / p)
    norm = float(np.linalg.norm(illuminant))
    if norm == 0.0 or np.any(illuminant == 0.0):
        return img.copy()  # a channel with no light at all: no cast to estimate
    gains = (norm / math.sqrt(img.shape[-1])) / illuminant
    corrected = img.astype(np.float32) * gains.astype(np.float32)
    return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)


def hair_mask(img: np.ndarray, kernel_size: int = 17, threshold: int = 10) -> np.ndarray:
    """uint8 mask (255 = hair) from a morphological black-hat of the grey image.

    The black-hat (closing minus image) is large only where a dark structure is thinner than the
    cross-shaped kernel, i.e. hairs, and ~0 on smooth skin and on dark areas wider than the kernel
    (the lesion body, the vignette). A cross closes thin lines of any orientation with fewer pixel
    operations than a full square.
    """
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (kernel_size, kernel_size))
    blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel)
    _, mask = cv2.threshold(blackhat, threshold, 255, cv2.THRESH_BINARY)
    return mask


def remove_hair(img: np.ndarray, kernel_size: int = 17, threshold: int = 10, radius: int = 3) -> np.ndarray:
    """Hair removal for dermoscopy (DullRazor idea): black-hat mask, then cv2.inpaint TELEA.

    Only masked pixels change. Run it on the small, resized image: inpainting cost grows with the
    masked area, and the default kernel is sized for hairs a few pixels wide at ~256 px. It can
    also soften fine dark lesion structure (pigment network), which is why the step is off by
    default.
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    mask = hair_mask(img, kernel_size, threshold)
    if not mask.any():
        return img.copy()
    return cv2.inpaint(img, mask, radius, cv2.INPAINT_TELEA)


# ---------------------------------------------------------------------------------------------
# Encoding and the whole per-image transform


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """JPEG 4:2:0 with simplejpeg: cheapest to write and to read back each epoch (docs/PERFORMANCE.md 4).

    simplejpeg's own default is 4:4:4 (+22% bytes, 30-45% slower), hence the explicit subsampling.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1-100, got {quality}")
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(img), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


@dataclass(frozen=True)
class TransformSettings:
    """What ``transformed_images`` does to every image; any change re-runs every image.

    ``size``: side of the square output; ``mode``: pad (keep aspect, black borders), center_crop
    or stretch; ``jpeg_quality``: 1-100; ``color_constancy``: Shades of Gray (p=6);
    ``hair_removal``: black-hat + TELEA inpainting. Both steps are off by default: they alter the
    lesion's colour and fine structure, which the model may need, and are easy to add later.
    """

    size: int = 256
    mode: ResizeMode = "pad"
    jpeg_quality: int = 95
    color_constancy: bool = False
    hair_removal: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 1 <= self.size <= _MAX_SIZE:
            raise ValueError(f"size must be an integer within 1-{_MAX_SIZE}, got {self.size!r}")
        _check_mode(self.mode)
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer within 1-100, got {self.jpeg_quality!r}")

    def fingerprint(self) -> str:
        """16 hex digits identifying these settings and TRANSFORM_CODE_VERSION, stable across runs."""
        payload = json.dumps(
            {"settings": asdict(self), "code_version": TRANSFORM_CODE_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def transform_array(img: np.ndarray, settings: TransformSettings) -> np.ndarray:
    """Resize, then the optional steps on the content, then pad: the final RGB uint8 pixels."""
    content = fit_content(img, settings.size, settings.mode)
    if settings.color_constancy:
        content = shades_of_gray(content)
    if settings.hair_removal:
        content = remove_hair(content)
    return pad_to_square(content, settings.size) if settings.mode == "pad" else content


def transform_bytes(
    data: bytes, settings: TransformSettings, exif_orientation: int = 1
) -> tuple[bytes, np.ndarray]:
    """One image, one decode: the output JPEG bytes and the pixels they encode (pre-encoding).

    Raises ``ImageDecodeError`` for undecodable input.
    """
    small = decode_downscaled(data, settings.size, exif_orientation, mode=settings.mode)
    final = transform_array(small, settings)
    return encode_jpeg(final, settings.jpeg_quality), final
