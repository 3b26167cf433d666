"""A cheap first confirmation of near-duplicate candidates, on 64x64 thumbnails kept beside the hashes.

The full confirmation (an ECC alignment and the correlation of fine detail at 128 px) costs 13-17 ms
a pair and reads both JPEGs; most candidates are look-alikes it rejects. This check rejects nearly
all of them first, thousands of pairs at once, by phase correlation: the matched window of one
thumbnail (brought back to 64x64) and the other thumbnail are tapered, their cross-power spectrum
is whitened (every frequency weighs the same, whatever its energy) and kept within ``BAND`` cycles
per pixel, and the score is its inverse transform's highest value within ``SHIFT`` pixels of no
shift. 1.0 is the same picture.

Why whitened: a band-passed correlation of the detail, what this check did before, is dominated by
the few strong frequencies of the lesion's outline, and candidates share their outline by
construction (their hashes are close). It passed 59% of the synthetic ISIC 2024 tiles' candidates.
Whitened, the many weak frequencies count as much, and only a copy keeps their phases: on the bench
the planted copies scored from 0.37 and look-alike candidates at most 0.31; on the tiles 0.4% of
candidates pass ``MIN_QUICK`` (docs/PERFORMANCE.md 13). scipy's FFT: numpy's took several times as
long on batches of 64x64.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import image_signature

THUMB_SIDE = 64
BAND = (0.04, 0.45)  # cycles per pixel at 64 px: above the lesion's size, below the JPEG-softened top
SHIFT = 2  # pixels: what the window grid leaves of a crop
MIN_QUICK = 0.37  # planted copies 0.399+, look-alikes at most 0.312, tiles 0.9% (PERFORMANCE 13)
_BATCH = 500  # pairs transformed at once: about 10 MB an array (2,000 took a worker 280 MB over its parent)
# The batch's transforms split over every core (each transform is computed as on one, so the scores
# are the same): the three FFTs were two thirds of the check's 130-180 microseconds a pair.
_FFT_WORKERS = -1
_CHANNELS = 128


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """The grey image at 64x64 (INTER_AREA), as stored per image."""
    return cv2.resize(pixels, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)



def _filters() -> tuple[np.ndarray, np.ndarray, float]:
    """The band (half spectrum, 0/1), the taper, and the band's weight over the full spectrum."""
    fy = np.fft.fftfreq(THUMB_SIDE)[:, None]
    fx = np.fft.rfftfreq(THUMB_SIDE)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    low, high = BAND
    band = ((radius >= low) & (radius <= high)).astype(np.float32)
    # Parseval on a real FFT: every column but the first (and the last) stands for two
    columns = np.full(band.shape[-1], 2.0)
    columns[0] = columns[-1] = 1.0
    taper = np.outer(np.hanning(THUMB_SIDE), np.hanning(THUMB_SIDE))
    return band, taper.astype(np.float32), float((band * columns).sum())


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


def _shift_basis() -> tuple[np.ndarray, np.ndarray]:
    """The band's entries of the half spectrum (flat indices) and what the inverse transform does to
    them at the kept shifts: ``[real, imag] @ basis`` is the whitened surface at every shift within
    ``SHIFT`` pixels (``(2 SHIFT + 1)^2`` columns), already divided by the band's weight.

    The inverse of a real picture's half spectrum C at shift s is the sum over the half spectrum of
    w(fx) Re(C(f) exp(2 pi i f.s)) / N^2, w = 1 on the first and last columns and 2 elsewhere
    (irfft2's own rule); the band holds no entry of the last column. Only 25 of the 4,096 values of
    the inverse transform are looked at, so a matrix product on the band's entries (about 1,300)
    does in 3 microseconds a pair what the whole inverse FFT did in 35.
    """
    band, _, weight = _filters()
    fy = np.fft.fftfreq(THUMB_SIDE)[:, None] * np.ones((1, band.shape[1]))
    fx = np.fft.rfftfreq(THUMB_SIDE)[None, :] * np.ones((THUMB_SIDE, 1))
    columns = np.full(band.shape, 2.0)
    columns[:, 0] = columns[:, -1] = 1.0
    index = np.flatnonzero(band)
    shifts = np.arange(-SHIFT, SHIFT + 1)
    dy, dx = (grid.ravel() for grid in np.meshgrid(shifts, shifts, indexing="ij"))
    angle = 2 * np.pi * (fy.ravel()[index, None] * dy[None, :] + fx.ravel()[index, None] * dx[None, :])
    w = columns.ravel()[index, None] / weight
    return index, np.vstack([w * np.cos(angle), -w * np.sin(angle)]).astype(np.float32)


_BASIS: tuple[np.ndarray, np.ndarray] | None = None


def _spectra(pictures: np.ndarray, index: np.ndarray, workers: int) -> np.ndarray:
    """The band's entries of the tapered pictures' half spectra (k x band, complex64)."""
    import scipy.fft  # here, not with the code location that every dagster command loads

    _, taper, _ = _filters()
    whole = scipy.fft.rfft2(pictures.astype(np.float32) * taper, workers=workers)
    return whole.reshape(len(pictures), -1)[:, index]


def scores(windowed: np.ndarray, others: np.ndarray, views: np.ndarray, *, which: np.ndarray | None = None,
           workers: int = _FFT_WORKERS) -> np.ndarray:
    """Quick scores of pairs: window ``views[k]`` of ``windowed[k]`` against the whole of ``others[k]``
    (of ``others[which[k]]`` when ``which`` is given: a thumbnail shared by several pairs is then
    transformed once a batch).

    ``windowed`` and ``others`` are stacks of thumbnails (k x 64 x 64, uint8). 1.0 is the same picture.
    ``workers``: the FFTs' threads (-1: every core; 1 in a worker of a forked pool, which already
    fills the cores).
    """
    global _BASIS
    if _BASIS is None:
        _BASIS = _shift_basis()
    index, basis = _BASIS
    which = np.arange(len(views)) if which is None else np.asarray(which)
    out = np.empty(len(views), dtype=np.float64)
    for lo in range(0, len(views), _BATCH):
        hi = min(len(views), lo + _BATCH)
        needed, inverse = np.unique(which[lo:hi], return_inverse=True)
        theirs = _spectra(others[needed], index, workers)[inverse]
        cross = _spectra(_windows(windowed[lo:hi], views[lo:hi]), index, workers) * np.conj(theirs)
        cross /= np.maximum(np.abs(cross), 1e-12)  # whitened: unit magnitude within the band
        surface = np.concatenate([cross.real, cross.imag], axis=1) @ basis
        out[lo:hi] = surface.max(axis=1)
    return np.round(out, 4)
