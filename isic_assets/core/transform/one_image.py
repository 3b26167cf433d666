"""The worker side of ``transformed_images``: one image to one output, and one batch of them.

``transform_batch`` is what either engine (core/compute/batches.py) runs on a worker, the local
fork pool or a Dask cluster alike: the same code, the same bytes. It journals each image (see
records.py), bounds it by the per-image time limit, writes the output atomically and returns
small records, never pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from pathlib import Path

import cv2
import numpy as np

from ..atomic import TMP_PREFIX
from ..compute.allocator import keep_large_buffers
from ..compute.batches import item_time_limit
from .image_ops import ImageDecodeError, TransformSettings, transform_bytes
from .records import (
    JOURNAL_PREFIX,
    OUTPUT_SUFFIX,
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
    write_output(f"{out_dir}/{relative}", jpeg)
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


def write_output(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: into this thread's own temporary sibling, then renamed.

    What ``atomic.atomic_write_bytes`` does, without ``mkstemp``'s random name, its retry loop and a
    Python file object: on small tiles that took about twice the system time of the write itself.
    The temporary name is fixed per process and thread (``TMP_PREFIX``, so a killed worker's
    leftover is removed by the runner like any other), and truncated if it exists."""
    folder = path.rpartition("/")[0]
    tmp = f"{folder}/{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}{OUTPUT_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: outputs are data for other users and tools
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
