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

``return_free_memory`` is the other side, for a step's own process: numpy arrays below the raised
threshold live in the heap, and when a phase frees them the pages stay with the process (counted in
its RSS, and in the RSS of every worker it forks next) until ``malloc_trim`` hands them back. At
401,059 images the near-duplicate search left 659 MiB resident of which 198 were such free pages.
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


def return_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``, which also releases
    free pages in the middle of the heap); True if any were. A no-op elsewhere. Call it where a phase
    has dropped large temporaries and before forking workers; it costs a few milliseconds."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim(0) == 1
