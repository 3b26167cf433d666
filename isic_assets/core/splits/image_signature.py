"""A 64-bit perceptual hash of one image, for the near-duplicate candidate search.

The hash is the classic DCT hash: the image in grey, shrunk to 32x32, its 2-D DCT, and one bit per
coefficient of the lowest 8x8 frequencies (1 where above their median). imagehash's ``phash``
computes the same construction; it is written here with OpenCV, already a dependency, because that
needs no extra package and took half the time per image (bench/bench_near_duplicates.py measures
both). Re-encoding, resizing and exposure changes move few of these bits; cropping moves more.
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


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance between paired uint64 hashes (a byte table: numpy 1.26 has no bitwise_count)."""
    xor = np.ascontiguousarray(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))
    return _POPCOUNT8[xor.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)
