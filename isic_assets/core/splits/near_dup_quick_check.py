"""A cheap first confirmation of near-duplicate candidates, on 64x64 thumbnails kept beside the hashes.

The full confirmation (an ECC alignment and the correlation of fine detail at 128 px) costs 13-17 ms
a pair and reads both JPEGs; most candidates are look-alike lesions it rejects. This check rejects
most of them first, thousands of pairs at once: the matched window of one thumbnail and the other
thumbnail are band-passed (a difference of Gaussians, sigma ``BAND`` pixels, applied in the
frequency domain; scipy's FFT, as numpy's took several times as long on batches of 64x64) and
correlated over shifts of up to ``SHIFT`` pixels (what the window grid leaves of a crop), scored by
the best normalised correlation. A copy keeps its detail (0.75 or more on the bench's planted
copies); look-alikes mostly score far lower. Pairs from ``MIN_QUICK`` on go on to the full
confirmation.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import image_signature

THUMB_SIDE = 64
BAND = (0.5, 1.5)  # pixels at 64 px: the finest detail a 64 px thumbnail keeps, above the lesion's outline
SHIFT = 2
MIN_QUICK = 0.7  # planted copies scored 0.75 or more, 36 of 37 look-alike candidates 0.65 or less (PERFORMANCE 13)
_BATCH = 2_000
_CHANNELS = 128


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """The grey image at 64x64 (INTER_AREA), as stored per image."""
    return cv2.resize(pixels, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)


def _filters() -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(THUMB_SIDE)[:, None]
    fx = np.fft.rfftfreq(THUMB_SIDE)[None, :]
    radius = fx**2 + fy**2
    low, high = BAND
    band = np.exp(-2 * np.pi**2 * radius * low**2) - np.exp(-2 * np.pi**2 * radius * high**2)
    taper = np.outer(np.hanning(THUMB_SIDE), np.hanning(THUMB_SIDE))
    return band.astype(np.float32), taper.astype(np.float32)


def _windows(thumbs: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Window ``views[k]`` of ``thumbs[k]`` brought back to 64x64, as float32.

    Thumbnails sharing a window are resized in one call, stacked as channels (OpenCV 5 takes up to 128 in a resize).
    """
    out = np.empty(thumbs.shape, dtype=np.float32)
    side = (THUMB_SIDE, THUMB_SIDE)
    for view in np.unique(views):
        rows = np.nonzero(views == view)[0]
        for lo in range(0, len(rows), _CHANNELS):
            part = rows[lo : lo + _CHANNELS]
            stacked = np.ascontiguousarray(thumbs[part].transpose(1, 2, 0))
            window = np.ascontiguousarray(image_signature.crop_view(stacked, image_signature.VIEWS[int(view)]))
            resized = cv2.resize(window, side, interpolation=cv2.INTER_LINEAR).reshape(THUMB_SIDE, THUMB_SIDE, -1)
            out[part] = resized.transpose(2, 0, 1)
    return out


def scores(windowed: np.ndarray, others: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Quick scores of pairs: window ``views[k]`` of ``windowed[k]`` against the whole of ``others[k]``.

    ``windowed`` and ``others`` are stacks of thumbnails (k x 64 x 64, uint8). 1.0 is the same picture.
    """
    import scipy.fft  # here, not with the code location that every dagster command loads

    band, taper = _filters()
    keep = np.r_[0 : SHIFT + 1, THUMB_SIDE - SHIFT : THUMB_SIDE]
    out = np.empty(len(views), dtype=np.float64)
    side = (THUMB_SIDE, THUMB_SIDE)
    for lo in range(0, len(views), _BATCH):
        hi = min(len(views), lo + _BATCH)
        moving = _windows(windowed[lo:hi], views[lo:hi])
        a = scipy.fft.rfft2(moving * taper) * band
        b = scipy.fft.rfft2(others[lo:hi].astype(np.float32) * taper) * band
        surface = scipy.fft.irfft2(a * np.conj(b), s=side)[:, keep][:, :, keep].reshape(hi - lo, -1).max(axis=1)
        # Parseval on a real FFT: every column but the first (and the last) stands for two
        weight = np.full(a.shape[-1], 2.0, dtype=np.float32)
        weight[0] = weight[-1] = 1.0
        norm = np.sqrt((np.abs(a) ** 2 * weight).sum(axis=(1, 2)) * (np.abs(b) ** 2 * weight).sum(axis=(1, 2)))
        out[lo:hi] = np.where(norm > 0, surface * THUMB_SIDE * THUMB_SIDE / np.maximum(norm, 1e-12), 0.0)
    return np.round(out, 4)
