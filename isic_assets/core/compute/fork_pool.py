"""The ``local`` engine of ``BatchEngine`` (core/compute/batches.py): a fork pool on this machine.

A fork-context ``ProcessPoolExecutor`` (docs/PERFORMANCE.md 7: 18 ms to start against 230-350 ms for
forkserver/spawn, which re-import OpenCV), at most ``in_flight`` batches submitted at a time.

Forking is what makes a worker cheap (it inherits the imported pipeline), and it needs care from the
parent: ``fork_safe_parent`` parks OpenCV's thread pool and keeps descriptors such as a run lock out
of every child. The ``dask-local`` engine forks its workers the same way (dask_cluster.py).

A worker that dies (a crash, the OOM killer, the per-image time limit) breaks the whole pool:
every batch in flight fails with ``BrokenProcessPool``, whichever worker held the culprit. The
engine then waits for the pool to go down completely and yields each of those batches as
``LostBatch(suspect=False)``; while the stage handles them no worker of this engine runs, so it may
read what the workers journaled to find the culprit. The next batch starts a fresh pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .batches import LostBatch, arm_default_alarm

_CLOSE_IN_CHILD: set[int] = set()
_CLOSE_LOCK = threading.Lock()


def _close_inherited() -> None:
    for fd in _CLOSE_IN_CHILD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _CLOSE_IN_CHILD.clear()


os.register_at_fork(after_in_child=_close_inherited)


@contextlib.contextmanager
def fork_safe_parent(close_fds: Sequence[int] = ()) -> Iterator[None]:
    """While it is open, a child forked from this process starts safely.

    - ``close_fds`` are closed in every child right after the fork (a run lock must die with its
      holder, not live on in a worker);
    - OpenCV's pthread pool does not survive ``fork``: a child of a process whose pool has threads
      hangs forever on its first cv2 call, even ``cv2.setNumThreads(1)`` (seen with gdb: the child
      waits in ``pthread_cond_destroy`` on a condition variable the parent's pool thread was waiting
      on). Any earlier cv2 call in the parent (a test, a Dagster op) starts that pool, so the parent
      joins it before forking and restores its thread count afterwards.
    """
    cv2 = sys.modules.get("cv2")
    previous = cv2.getNumThreads() if cv2 is not None else None
    if cv2 is not None:
        cv2.setNumThreads(1)
    with _CLOSE_LOCK:
        _CLOSE_IN_CHILD.update(close_fds)
    try:
        yield
    finally:
        with _CLOSE_LOCK:
            _CLOSE_IN_CHILD.difference_update(close_fds)
        if cv2 is not None and previous is not None:
            cv2.setNumThreads(previous)


POOL_BROKE = "a worker process died (crash, kill or the per-image time limit) and took the pool down"


class ForkPool:
    """``workers`` forked processes; use it inside ``fork_safe_parent``."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.breakages = 0  # pools lost to a dead worker so far

    @property
    def slots(self) -> int:
        return self.workers

    def map_batches(
        self, function: Callable[..., Any], queue: deque[list[Any]], args: tuple[Any, ...], in_flight: int
    ) -> Iterator[tuple[list[Any], Any]]:
        executor: ProcessPoolExecutor | None = None
        pending: dict[Future, list[Any]] = {}
        try:
            while queue or pending:
                if executor is None:
                    executor = self._start(min(self.workers, max(1, in_flight)))
                broken: list[list[Any]] = []
                while queue and len(pending) < in_flight:
                    batch = queue.popleft()
                    try:
                        pending[executor.submit(function, batch, *args)] = batch
                    except BrokenProcessPool:
                        broken.append(batch)
                        break
                done: set[Future] = set()
                if pending and not broken:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                results, lost = _collect(done, pending)
                broken.extend(lost)
                if broken:
                    finished, _ = wait(pending)  # a broken pool fails every future promptly
                    more, lost = _collect(finished, pending)
                    results.extend(more)
                    broken.extend(lost)
                    executor.shutdown(wait=True, cancel_futures=True)
                    executor = None
                    self.breakages += 1
                yield from results
                for batch in broken:
                    yield batch, LostBatch(POOL_BROKE, suspect=False)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def _start(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )


def _collect(done: set[Future], pending: dict[Future, list[Any]]
             ) -> tuple[list[tuple[list[Any], Any]], list[list[Any]]]:
    results, broken = [], []
    for future in done:
        batch = pending.pop(future)
        try:
            results.append((batch, future.result()))
        except BrokenProcessPool:
            broken.append(batch)
    return results, broken


def _init_worker(parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    arm_default_alarm()  # the per-image time limit (batches.item_time_limit) ends the process
    # Terminate and Ctrl-C are the step's to handle: it shuts the pool down and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the step's process dies.

    ProcessPoolExecutor workers of a killed parent otherwise wait forever on their task queue
    (checked: both stayed alive after the parent got SIGKILL), leaking processes on a shared box.
    The parent forks the workers from the thread that runs the stage, which outlives the pool, so
    the signal cannot fire early. No-op where prctl is unavailable.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def forked_results(function: Callable[..., Any], queue: deque[list[Any]], processes: int, what: str
                   ) -> Iterator[Any]:
    """``function(batch)`` of every batch of ``queue`` in ``processes`` forked workers, each result as it
    completes (any order). A worker that dies fails the caller with a sentence naming ``what``; what was
    yielded before is the caller's to keep."""
    with fork_safe_parent():
        for _, result in ForkPool(processes).map_batches(function, queue, (), in_flight=2 * processes):
            if isinstance(result, LostBatch):
                raise RuntimeError(f"{what}: a worker process died ({result.reason}); "
                                   "what was done so far is kept, run the step again")
            yield result

