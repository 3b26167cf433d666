"""Perceptual hashes of one image, for the near-duplicate candidate search.

``phash`` is the classic DCT hash: the image in grey, shrunk to 32x32, its 2-D DCT, and one bit per
coefficient of the lowest 8x8 frequencies (1 where above their median). imagehash's ``phash``
computes the same construction; it is written here with OpenCV, already a dependency, because that
needs no extra package and took half the time per image (bench/bench_near_duplicates.py measures
both). Re-encoding, resizing and exposure changes move few of these bits (at most 4 of 64 on the
bench); cropping moves many (a 10% crop: up to 22 bits), because a crop shifts and stretches every
frequency.

``view_signatures`` is what the near-duplicate search uses instead: the same hash taken on
``len(VIEWS)`` (36) windows of the image (the whole picture and windows trimmed by 3-10% on either
side of each axis). A copy cropped by up to 10% then matches one window of its original within a
few bits, whichever part was cut. Each window gets two hashes from one 64x64 DCT: a 64-bit key
(lowest 8x8 frequencies) for the candidate index, and a 256-bit hash (lowest 16x16) that tells
copies from look-alike lesions far better: among 1,200 look-alike synthetic lesions no two whole
pictures came within 46 of 256 bits, while 64-bit keys of 0.2% of all pairs were within 10 bits.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

HASH_SIDE = 32  # the DCT input, as in the classic pHash
HASH_BITS_SIDE = 8  # 8x8 low frequencies -> 64 bits
_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))
_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


class UnreadableImageError(ValueError):
    """The file is missing or does not decode as an image."""


def grey(path: Path) -> np.ndarray:
    """The image at ``path`` as 8-bit grey; a clear error names the file when it does not decode."""
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if pixels is None or pixels.size == 0:
        raise UnreadableImageError(f"{path} is missing or does not decode as an image")
    return pixels


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT hash of a grey image, as an unsigned int (bit 63 = the DC coefficient)."""
    small = cv2.resize(pixels, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:HASH_BITS_SIDE, :HASH_BITS_SIDE].ravel()
    bits = (low > np.median(low)).astype(np.uint64)
    return int(np.bitwise_or.reduce(bits * _BIT_WEIGHTS))


# Per-axis windows (start, end) as fractions: the whole side, trimmed by 3% on both ends, by 6% at
# either end, and by 10% at either end. A crop keeping 90-100% of a side, anywhere along it, lands
# within about 3% of one of them; the 10% windows are for the largest crops, which the others miss.
# Six per axis (36 windows) found 97-98% of the bench's random crops at the default radii; the four
# inner ones alone found as many random crops but missed crops of 10% at a corner.
_AXIS_WINDOWS = ((0.0, 1.0), (0.03, 0.97), (0.06, 1.0), (0.0, 0.94), (0.1, 1.0), (0.0, 0.9))
VIEWS = tuple((x0, y0, x1, y1) for x0, x1 in _AXIS_WINDOWS for y0, y1 in _AXIS_WINDOWS)  # VIEWS[0]: whole
FINE_BYTES = 32  # 256 bits
_VIEW_SIDE = 64
_FINE_SIDE = 16


def crop_view(pixels: np.ndarray, view: tuple[float, float, float, float]) -> np.ndarray:
    """The window ``view`` (x0, y0, x1, y1 as fractions) of an image."""
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = view
    return pixels[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)]


def _linear_resize_matrix(source: int, target: int) -> np.ndarray:
    """``target x source``: what ``cv2.resize`` with INTER_LINEAR does along one axis of a float image."""
    out = np.zeros((target, source), dtype=np.float64)
    for i in range(target):
        x = (i + 0.5) * source / target - 0.5  # OpenCV's half-pixel centres, clamped at the edges
        left = int(np.floor(x))
        weight = x - left
        if left < 0:
            left, weight = 0, 0.0
        if left >= source - 1:
            left, weight = source - 1, 0.0
        out[i, left] += 1 - weight
        if weight:
            out[i, left + 1] += weight
    return out


def _dct_matrix(size: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II of length ``size`` (``cv2.dct``'s)."""
    grid = np.arange(size)[None, :]
    out = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * grid + 1) * np.arange(keep)[:, None] / (2 * size))
    out[0] /= np.sqrt(2.0)
    return out


def _window_matrix() -> np.ndarray:
    """Per axis window: crop, resize to 64 (INTER_LINEAR) and the 16 lowest DCT rows, as one matrix.

    Stacked (6 windows x 16 rows) x 128: ``M @ base @ M.T`` gives every window's 16x16 lowest
    frequencies at once, what cropping, resizing and ``cv2.dct`` per window gave (the same bits but
    for ties at the median), in two matrix products instead of 36 resizes and DCTs.
    """
    side = 2 * _VIEW_SIDE
    dct = _dct_matrix(_VIEW_SIDE, _FINE_SIDE)
    blocks = []
    for lo, hi in _AXIS_WINDOWS:
        start, stop = round(lo * side), round(hi * side)
        block = np.zeros((_FINE_SIDE, side))
        block[:, start:stop] = dct @ _linear_resize_matrix(stop - start, _VIEW_SIDE)
        blocks.append(block)
    return np.vstack(blocks).astype(np.float32)


_WINDOW_MATRIX = _window_matrix()
_AXES = len(_AXIS_WINDOWS)


def base(pixels: np.ndarray) -> np.ndarray:
    """The grey image at 128x128 (INTER_AREA): what the window hashes and the thumbnail are taken from."""
    return cv2.resize(pixels, (2 * _VIEW_SIDE, 2 * _VIEW_SIDE), interpolation=cv2.INTER_AREA)


def read_base(path: Path) -> np.ndarray:
    """``base`` of the image at ``path``, decoded at half size where that still leaves 128 pixels a side.

    libjpeg's DCT-scaled decode at half size took 0.30 ms against 0.73 ms for the full decode of a
    256x256 transformed image (docs/PERFORMANCE.md 13), the largest part of hashing it; the hashes
    and the planted copies found were the same on the bench. Smaller images are decoded in full.
    """
    half = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if half is not None and half.size and min(half.shape) >= 2 * _VIEW_SIDE:
        return base(half)
    return base(grey(path))


def view_signatures(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window of ``VIEWS``: a 64-bit key (uint64 array) and a 256-bit hash (uint8 array, 32 per view).

    The image is shrunk once to 128x128 (INTER_AREA); each window of that is brought to 64x64 with
    INTER_LINEAR (no aliasing at a ratio below 2) and its DCT taken, both folded into one matrix
    (``_window_matrix``). Call it with BLAS held to one thread (``near_dup_store`` does): on 128x128
    matrices OpenBLAS's threads cost ten times the products themselves (docs/PERFORMANCE.md 13).
    """
    keys, fine = signatures_of_bases(base(pixels)[None])
    return keys[0], fine[0]


def signatures_of_bases(bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``view_signatures`` of a stack of 128x128 bases (k x 128 x 128): keys k x 36, hashes k x 36 x 32."""
    count = len(bases)
    low16 = _WINDOW_MATRIX @ bases.astype(np.float32) @ _WINDOW_MATRIX.T  # k x 96 x 96: (y window, x window)
    # VIEWS runs over x windows, then y windows: view = x * 6 + y
    coefficients = low16.reshape(count, _AXES, _FINE_SIDE, _AXES, _FINE_SIDE).transpose(0, 3, 1, 2, 4)
    coefficients = coefficients.reshape(count, len(VIEWS), _FINE_SIDE, _FINE_SIDE)
    low = coefficients[..., :HASH_BITS_SIDE, :HASH_BITS_SIDE].reshape(count, len(VIEWS), -1)
    key_bits = np.packbits(low > _median(low), axis=-1)
    keys = key_bits.view(">u8")[..., 0].astype(np.uint64)
    wide = coefficients.reshape(count, len(VIEWS), -1)
    fine = np.packbits(wide > _median(wide), axis=-1)
    return keys, fine


def _median(values: np.ndarray) -> np.ndarray:
    """``np.median`` over the last (even-sized) axis, kept: a sort is ten times faster on rows of 64-256."""
    ordered = np.sort(values, axis=-1)
    middle = values.shape[-1] // 2
    return (ordered[..., middle - 1 : middle] + ordered[..., middle : middle + 1]) / 2


def fine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance between paired rows of 256-bit hashes (uint8 arrays of shape (..., 32))."""
    return _POPCOUNT8[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance between paired uint64 hashes (a byte table: numpy 1.26 has no bitwise_count)."""
    xor = np.ascontiguousarray(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))
    return _POPCOUNT8[xor.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)
