"""A worker keeps its large image buffers: the next picture's buffers cost no fresh page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _plain_glibc_env() -> dict[str, str]:
    """This environment without glibc's MALLOC_* tunables. Any of them (Dask's nanny puts
    MALLOC_TRIM_THRESHOLD_ in os.environ of a process that started a cluster, as an earlier test in
    the same pytest worker may have) turns off glibc's dynamic mmap threshold, and both tests measure
    the allocator as a plain process starts it."""
    return {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}


_FAULTS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    if {tuned}:
        from isic_assets.core.compute.allocator import keep_large_buffers
        assert keep_large_buffers()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    size = 4000 * 3000 * 3  # one 4000x3000 RGB picture, 34 MiB: above glibc's largest dynamic threshold
    np.ones(size, dtype=np.uint8)  # a first picture, freed at once
    before = faults()
    for _ in range(20):
        np.ones(size, dtype=np.uint8)  # 20 more, as 20 more images would
    print(faults() - before)
""")


def _faults(tuned: bool) -> int:
    code = _FAULTS.format(repo=str(REPO), tuned=tuned)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=_plain_glibc_env()
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's")
def test_a_fresh_worker_reuses_picture_sized_buffers_instead_of_mapping_them_anew():
    as_started, tuned = _faults(False), _faults(True)
    # As started, glibc maps and unmaps each buffer, so every one faults its pages in again (fewer
    # than 8,800 each where numpy gets transparent huge pages; 12,280 for the 20 measured here).
    assert as_started > 20 * 100, as_started
    # Tuned, the freed buffer stays in the heap and the next ones reuse its pages (0 measured).
    assert tuned * 10 < as_started and tuned < 20 * 100, (tuned, as_started)


_TRIM = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    from isic_assets.core.compute.allocator import return_free_memory
    def rss_mib():
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) // 1024 for line in handle if line.startswith("VmRSS:"))
    np.ones(30 << 20, dtype=np.uint8)  # freed at once: freeing a mapped block raises the threshold past 2 MiB
    arrays = [np.ones(2 << 20, dtype=np.uint8) for _ in range(200)]  # 400 MiB of 2 MiB arrays, in the heap
    tail = [np.ones(1 << 10, dtype=np.uint8) for _ in range(1000)]  # live blocks above them: no trim at the top
    del arrays
    freed = rss_mib()
    print(freed, return_free_memory(), rss_mib())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_heap_pages_a_phase_freed_go_back_to_the_system():
    code = _TRIM.format(repo=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=_plain_glibc_env()
    )
    freed, returned, after = done.stdout.split()
    # Freed numpy arrays below the raised mmap threshold stay in the process: 400 MiB still resident.
    assert int(freed) - int(after) > 300, done.stdout
    assert returned == "True"
