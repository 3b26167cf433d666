"""Keep a worker's large image buffers in its heap instead of mapping and unmapping them per image.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised as mapped blocks are
freed) with a fresh ``mmap`` and gives it back with ``munmap`` on free, so each decoded picture
costs page faults and zeroed pages anew. A process that has already decoded many images (the step,
and every worker forked from it) has raised the threshold; a freshly started ``dask worker`` has not.
Measured with ``bench/bench_dask.py`` (128 x 4000x3000, 2 single-threaded workers, quiet machine):
an external cluster ran at 0.80x the local pool as started, 0.89-0.94x with the thresholds below.

``keep_large_buffers`` fixes the thresholds once per process (64 MiB mapped, 128 MiB kept before
trimming), so a worker reuses its buffers from the first image on, whoever started it. It is a no-op
where the C library has no ``mallopt`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 128 << 20

_done_in: int | None = None  # the pid that already set them (a forked child sets its own again: harmless)


def keep_large_buffers() -> bool:
    """Set the thresholds in this process (once); True if the C library took them."""
    global _done_in
    if _done_in == os.getpid():
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    _done_in = os.getpid() if ok else None
    return ok
