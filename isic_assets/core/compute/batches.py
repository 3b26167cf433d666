"""The one interface through which a stage maps per-image work over batches: ``BatchEngine``.

A stage (the merge's check, ``transformed_images``) cuts its images into batches, puts them on a
queue and calls ``engine.map_batches(function, queue, args, in_flight)``; the engine runs
``function(batch, *args)`` somewhere (a fork pool on this machine, core/compute/fork_pool.py, or a
Dask cluster, core/compute/dask_cluster.py) and streams ``(batch, result)`` back as batches complete.
The stage keeps every piece of state (journals, incremental records, sums): ``function`` only reads
its inputs, writes its outputs atomically under the data root, and returns small records.

A batch whose worker died comes back as ``(batch, LostBatch)``, never as an exception, so the stage
can decide (retry smaller, set the image aside). ``LostBatch.suspect`` says whether the engine
blames the batch itself (Dask gave up after it killed ``allowed-failures`` + 1 workers) or merely
lost it with a pool that another batch broke (the fork pool cannot tell which batch killed it; by
then every worker is down, so the stage may read what its workers journaled before yielding).
The stage may put batches back on the queue while iterating.

Worker side, ``item_time_limit`` bounds one image's wall-clock time the same way on both engines:
the process is killed by the kernel, which even a decoder stuck in C code cannot resist, and the
engine reports the batch lost.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class LostBatch:
    """A batch whose worker process died; ``reason`` says how, ``suspect`` whether the engine blames it."""

    reason: str
    suspect: bool = True


class BatchEngine(Protocol):
    """What a stage needs from where its per-image work runs."""

    @property
    def slots(self) -> int:
        """How many batches run at once (worker processes, or Dask worker threads)."""
        ...

    def map_batches(
        self, function: Callable[..., Any], queue: deque[list[Any]], args: tuple[Any, ...], in_flight: int
    ) -> Iterator[tuple[list[Any], Any]]:
        """Run ``function(batch, *args)`` for every batch taken from ``queue``, at most ``in_flight``
        at a time; yield ``(batch, result)`` or ``(batch, LostBatch)`` as they complete."""
        ...


# docs/PERFORMANCE.md 7: batching small tasks lifts 2-process scaling from 1.81x to 2.07x; the cap keeps
# a batch of 6000x4000 images under a second so the tail of a run stays balanced.
MAX_BATCH = 16
# Two batches per slot: one running, one ready, so a slot never waits for the step to hand it work,
# and memory stays flat for any number of images.
BATCHES_IN_FLIGHT_PER_SLOT = 2


def batch_size(items: int, slots: int, cap: int = MAX_BATCH) -> int:
    """About items / (4 * slots), capped: enough batches to balance the tail, few enough to amortize
    the per-task cost."""
    return max(1, min(cap, math.ceil(items / (4 * max(1, slots)))))


def batches_of(items: list[Any], size: int) -> deque[list[Any]]:
    return deque(items[i : i + size] for i in range(0, len(items), size))


# ---------------------------------------------------------------------------------------------
# Worker side: the per-image time limit


class _Deadlines:
    """The earliest deadline of the images running in this process arms ``ITIMER_REAL``.

    The timer is per process while a Dask worker may run several task threads, so each thread's
    deadline is kept here and the timer always points at the nearest one. SIGALRM's default action
    ends the process (set by ``arm_default_alarm``), which works even inside a C call that never
    returns to Python; the engine then sees a dead worker.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thread: dict[int, float] = {}

    def set(self, seconds: float) -> None:
        with self.lock:
            self.by_thread[threading.get_ident()] = time.monotonic() + seconds
            self._arm()

    def clear(self) -> None:
        with self.lock:
            self.by_thread.pop(threading.get_ident(), None)
            self._arm()

    def _arm(self) -> None:
        if not self.by_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        remaining = min(self.by_thread.values()) - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))


_DEADLINES = _Deadlines()


def arm_default_alarm() -> bool:
    """Make SIGALRM end this process (its default action) if nobody else handles it; True if so.

    Only the main thread may change a handler; elsewhere (a Dask task thread) the current handler is
    accepted when it is already the default one.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return True
    return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)


@contextlib.contextmanager
def item_time_limit(seconds: float) -> Iterator[None]:
    """Kill this worker process if the block runs longer than ``seconds`` (0: no limit)."""
    if seconds <= 0 or not arm_default_alarm():
        yield
        return
    _DEADLINES.set(seconds)
    try:
        yield
    finally:
        _DEADLINES.clear()
