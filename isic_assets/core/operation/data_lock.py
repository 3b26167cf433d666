"""A lock that lets one run at a time write under a data root, shared by all processes of that run.

Dagster's pools (``concurrency.pools.granularity: run`` in dagster.yaml) hold a queued run back while
another run of the pool is in progress, but only for runs that go through the run queue (the UI,
sensors, schedules, ``dagster job launch``). ``dagster asset materialize`` and ``dg.materialize``
execute at once in the calling process and never ask the queue (verified with 1.13.28, see the
README). This lock closes that gap on one machine: every run holds it while it writes, a second run
of the same data root waits for it, and the kernel releases it when a process dies, so a killed run
never leaves a stale lock behind.

Three files under ``<root>/.lock/``:

* ``guard``: held exclusively for the few microseconds of an acquire, so acquires never race;
* ``holders``: every process of the owning run holds a *shared* ``flock`` on it; it is free exactly
  when no process of any run holds the lock;
* ``owner``: the run id (and pid) of the current owner, for the "waiting for ..." message and so
  that other processes of the same run (the multiprocess executor runs one per step) join it.

POSIX ``fcntl.flock`` only; the project runs on Linux.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

LOCK_DIR = ".lock"
WAIT_LOG_EVERY_S = 30.0


class DataRootLock:
    """The lock of one data root, held for one run id (use :func:`acquire`)."""

    def __init__(self, root: Path, run_id: str, holders_fd: int) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self._fd: int | None = holders_fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop this process's share of the lock; calling it twice is harmless."""
        if self._fd is not None:
            # Unlock explicitly: a child forked during the run (transform workers) shares this open
            # file description, and closing our copy alone would leave the lock held while it lives.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def acquire(root: Path, run_id: str, poll_s: float = 0.5, timeout_s: float | None = None,
            on_wait: Callable[[str], None] | None = None) -> DataRootLock:
    """Hold the lock of ``root`` for ``run_id``, waiting while another run holds it.

    Processes of the same run share it. ``on_wait`` receives a message naming the run being waited
    for, at once and then every 30 s. With ``timeout_s`` a :class:`TimeoutError` names the holder.
    """
    lock_dir = Path(root) / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_told = None
    while True:
        fd, holder = _try_acquire(lock_dir, run_id)
        if fd is not None:
            return DataRootLock(root, run_id, fd)
        message = f"run {holder.get('run_id')} (pid {holder.get('pid')}) is writing to {root}; waiting for it to finish"
        now = time.monotonic()
        if timeout_s is not None and now - started >= timeout_s:
            raise TimeoutError(message.replace("waiting for it to finish", f"gave up after {timeout_s:.0f} s"))
        if on_wait is not None and (last_told is None or now - last_told >= WAIT_LOG_EVERY_S):
            on_wait(message)
            last_told = now
        time.sleep(poll_s)


def current_owner(root: Path) -> dict | None:
    """The run holding the lock of ``root`` now, or None when nobody holds it."""
    lock_dir = Path(root) / LOCK_DIR
    if not (lock_dir / "holders").exists():
        return None
    guard = os.open(lock_dir / "guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        fd = os.open(lock_dir / "holders", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(lock_dir)
        finally:
            os.close(fd)
        return None
    finally:
        os.close(guard)


def _try_acquire(lock_dir: Path, run_id: str) -> tuple[int | None, dict]:
    """One attempt: (descriptor holding a shared lock, {}) or (None, the owner's record)."""
    guard = os.open(lock_dir / "guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        owner = _read_owner(lock_dir)
        holders = os.open(lock_dir / "holders", os.O_RDWR | os.O_CREAT, 0o644)
        if owner.get("run_id") != run_id:
            try:  # succeeds only when no process of any run holds a share
                fcntl.flock(holders, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(holders)
                return None, owner
            _write_owner(lock_dir, run_id)
        # Same run, or the lock was free: take a share. Another acquirer cannot slip in between
        # dropping the exclusive lock and taking the shared one: it would need the guard first.
        fcntl.flock(holders, fcntl.LOCK_SH)
        return holders, {}
    finally:
        os.close(guard)


def _read_owner(lock_dir: Path) -> dict:
    try:
        return json.loads((lock_dir / "owner").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_owner(lock_dir: Path, run_id: str) -> None:
    tmp = lock_dir / f"owner.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"run_id": run_id, "pid": os.getpid(), "since": time.time()}), encoding="utf-8")
    os.replace(tmp, lock_dir / "owner")
