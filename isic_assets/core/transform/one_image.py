"""The worker side of ``transformed_images``: one image to one output, and one batch of them.

``transform_batch`` is what either engine (core/compute/batches.py) runs on a worker, the local
fork pool or a Dask cluster alike: the same code, the same bytes. It journals each image (see
records.py), bounds it by the per-image time limit, writes the output atomically and returns
small records, never pixels.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_write_bytes
from ..compute.allocator import keep_large_buffers
from ..compute.batches import item_time_limit
from .image_ops import ImageDecodeError, TransformSettings, transform_bytes
from .records import (
    JOURNAL_PREFIX,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_QUARANTINED,
    STATUS_STARTED,
    TransformJob,
    journal_line,
    output_name,
)

_CV2_READY = threading.local()


def transform_batch(jobs: list[TransformJob], out_dir: Path, state_dir: Path, settings: TransformSettings,
                    fingerprint: str, time_limit_s: float = 0.0) -> list[dict]:
    """One batch on a worker: journal, transform (within the time limit), journal; return the records."""
    if not getattr(_CV2_READY, "done", False):
        cv2.setNumThreads(1)  # docs/PERFORMANCE.md 7: its threads add nothing here and oversubscribe the cores
        keep_large_buffers()  # a freshly started worker would map and unmap every picture's buffers
        _CV2_READY.done = True
    name = f"{JOURNAL_PREFIX}{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.jsonl"
    records = []
    # Opened per batch, not kept: the step deletes journals after each run, and a long-lived worker
    # of an external cluster must not keep appending to a deleted file on the next run.
    with (Path(state_dir) / name).open("a", encoding="utf-8") as journal:
        for job in jobs:
            journal_line(journal, {"isic_id": job.isic_id, "status": STATUS_STARTED})
            with item_time_limit(time_limit_s):
                record = transform_job(job, out_dir, settings, fingerprint)
            journal_line(journal, record)
            records.append(record)
    return records


def transform_job(job: TransformJob, out_dir: Path, settings: TransformSettings, fingerprint: str) -> dict:
    """Transform one image and write its output atomically; return its state record (small).

    One read of the source. Its sha256 is taken from the job, not recomputed: the merge hashed
    exactly the bytes it wrote in the same single read, and hashing a 4 MB file again would cost
    ~5% of the per-image budget (docs/PERFORMANCE.md 5), the margin of the 6000x4000 target. Status
    ``quarantined`` marks undecodable bytes (deterministic, remembered), ``failed`` anything that
    may be different next time (unreadable file, unexpected error). Errors writing the output are
    not the image's fault and propagate.
    """
    base = {"isic_id": job.isic_id, "src_sha256": job.src_sha256, "fingerprint": fingerprint}
    try:
        data = Path(job.src).read_bytes()
    except OSError as exc:
        return {**base, "status": STATUS_FAILED, "reason": f"cannot read source: {exc}"}
    try:
        jpeg, pixels = transform_bytes(data, settings, job.exif_orientation)
    except ImageDecodeError as exc:
        return {**base, "status": STATUS_QUARANTINED, "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one odd image must not stop the run; reported, retried
        return {**base, "status": STATUS_FAILED, "reason": f"transform error: {type(exc).__name__}: {exc}"}
    relative = output_name(job.isic_id)
    atomic_write_bytes(Path(out_dir) / relative, jpeg)
    sums, squares, count = channel_sums(pixels)
    return {
        **base,
        "status": STATUS_OK,
        "out": relative,
        "out_bytes": len(jpeg),
        "out_sha256": hashlib.sha256(jpeg).hexdigest(),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "sum": sums,
        "sumsq": squares,
        "pixels": count,
    }


def channel_sums(pixels: np.ndarray) -> tuple[list[int], list[int], int]:
    """Exact per-channel sum and sum of squares (Python ints) and the pixel count of an RGB image.

    Integer sums make the streamed mean/std exact however many images are added (no float drift).
    cv2 does it ~30x faster than numpy's int64 path (0.045 vs 1.4 ms at 256x256, where 1.4 ms was a
    third of a 1024x768 image's whole budget); its float64 results are exact here because every
    partial sum is an integer below 2**53 (8192**2 pixels * 255**2 = 4.4e12).
    They are taken on the pixels before JPEG encoding; q95 round-trip error is ~1 grey level with
    near-zero mean (docs/PERFORMANCE.md 4), far below what matters for normalization.
    """
    channels = pixels.shape[-1]
    sums = cv2.sumElems(pixels)[:channels]
    squares = [cv2.norm(plane, cv2.NORM_L2SQR) for plane in cv2.split(pixels)]
    count = int(pixels.shape[0] * pixels.shape[1])
    return [round(v) for v in sums], [round(v) for v in squares], count
