"""The step side of ``transformed_images``: map the jobs over an engine, record results as they come.

Either engine (core/compute/batches.py: the local fork pool, a Dask cluster) runs
``one_image.transform_batch`` on batches of about tasks/(4*slots) images (capped at 16), two per
slot in flight; this module alone writes the state, so the records (and the outputs, a pure function
of input bytes and settings) are the same whatever ran them and in whatever order they came back.

A batch whose worker died (``LostBatch``):

- lost with a pool another batch broke (fork pool, ``suspect=False``): every worker is down, so the
  journals say which of its images finished (recorded), which one its worker was busy with (set
  aside), and which never started (back to the front of the queue);
- given up by Dask after it killed ``allowed-failures`` + 1 workers (``suspect=True``): split into
  one-image batches; a one-image batch given up is set aside.

Images set aside run again one at a time at the end, alone, so no other image's crash can be
blamed on them. One that kills its worker alone too is reported ``failed`` with the reason (a crash,
or the per-image time limit), not remembered: retried on the next run. So an image that kills every
worker is quarantined after a bounded number of deaths (two on the fork pool; on Dask two per
attempt with ``dask-local``'s ``allowed-failures`` of 1) and the run goes on.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..compute.batches import BATCHES_IN_FLIGHT_PER_SLOT, BatchEngine, LostBatch, batch_size
from ..scan_state import SqliteLog
from .image_ops import TransformSettings
from .one_image import transform_batch
from .records import (
    STATE_DIR,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_QUARANTINED,
    QuarantineRow,
    TransformJob,
    TransformReport,
    absorb_journals,
    drop_journals,
    output_name,
)

Log = Callable[[str], None]

_PROGRESS_EVERY_SECONDS = 10.0
# Consecutive pool breakages with no image finished or set aside before the run gives up.
_MAX_FRUITLESS_RESTARTS = 3


class TransformDispatch:
    """Runs the jobs on ``engine`` and records every result into ``state`` and ``report``."""

    def __init__(self, engine: BatchEngine, settings: TransformSettings, out_dir: Path, state: SqliteLog,
                 report: TransformReport, log: Log, total: int, time_limit_s: float) -> None:
        self.engine, self.settings, self.out_dir = engine, settings, Path(out_dir)
        self.state_dir = self.out_dir / STATE_DIR
        self.state, self.report, self.log, self.total = state, report, log, total
        self.time_limit_s = time_limit_s
        self.args = (self.out_dir, self.state_dir, settings, settings.fingerprint(), time_limit_s)
        self.finished: dict[str, dict] = {}  # read from journals after a pool broke
        self.in_progress: set[str] = set()
        self.breakage = -1  # the fork pool's breakage being sorted out
        self.fruitful = True
        self.fruitless = 0
        self.done = 0
        self.started = time.perf_counter()
        self.last_progress = self.started
        self.last_reason = ""
        self.lost_any = False  # a batch came back lost: the journals may hold records not recorded yet

    def run(self, jobs: Sequence[TransformJob], todo: np.ndarray) -> None:
        """Run ``jobs[i]`` for every position ``i`` in ``todo``."""
        size = batch_size(len(todo), self.engine.slots)
        suspects = self._map(LazyBatches(jobs, todo, size), size, BATCHES_IN_FLIGHT_PER_SLOT * self.engine.slots)
        if suspects:
            self.log(f"transform: {len(suspects)} image(s) were on workers that died; retrying them one at a time")
        for job in suspects:
            began = time.monotonic()
            for again in self._map(deque([[job]]), 1, in_flight=1):
                self._give_up(again, timed_out=self.time_limit_s > 0
                              and time.monotonic() - began >= self.time_limit_s)
        if self.lost_any:
            self._absorb()
        else:
            drop_journals(self.state, self.state_dir)

    def _map(self, queue: deque[list[TransformJob]] | LazyBatches, size: int, in_flight: int) -> list[TransformJob]:
        """Run the queue; return the images set aside (their worker died with them)."""
        suspects: list[TransformJob] = []
        for batch, result in self.engine.map_batches(transform_batch, queue, self.args, in_flight):
            if isinstance(result, LostBatch):
                self._lost(batch, result, queue, size, suspects)
                continue
            by_id = {job.isic_id: job for job in batch}
            for record in result:
                self._record(record, by_id[record["isic_id"]])
            # No commit per batch: the state commits a batch of records at a time, and until then the
            # worker journals hold them (a killed run folds them in on the next start).
            self.fruitful = True
        return suspects

    def _lost(self, batch: list[TransformJob], lost: LostBatch, queue: deque[list[TransformJob]] | LazyBatches,
              size: int, suspects: list[TransformJob]) -> None:
        self.last_reason = lost.reason
        self.lost_any = True
        if lost.suspect:  # Dask gave up on this very batch
            self.report.worker_restarts += 1
            if len(batch) > 1:
                queue.extend([job] for job in batch)
            else:
                suspects.append(batch[0])
            return
        breakage = getattr(self.engine, "breakages", 0)
        if breakage != self.breakage:  # the first batch of a newly broken pool: every worker is down
            self.breakage = breakage
            self.report.worker_restarts += 1
            self.fruitless = 0 if self.fruitful else self.fruitless + 1
            if self.fruitless > _MAX_FRUITLESS_RESTARTS:
                raise RuntimeError(
                    f"transform workers keep dying before finishing any image ({self.fruitless} pools in a "
                    f"row); {self.done} of {self.total} images done and recorded, re-run to resume")
            self.fruitful = False
            self._absorb()
            self.log("transform: a worker died; the image it was on is set aside to retry alone")
        requeue = []
        for job in batch:
            record = self.finished.pop(job.isic_id, None)
            if record is not None:
                self._record(record, job)
                self.fruitful = True
            elif job.isic_id in self.in_progress:
                self.in_progress.discard(job.isic_id)
                suspects.append(job)
                self.fruitful = True
            else:
                requeue.append(job)
        self.state.flush()
        for start in reversed(range(0, len(requeue), size)):  # never started: back to the front
            queue.appendleft(requeue[start : start + size])

    def _absorb(self) -> None:
        finished, in_progress = absorb_journals(self.state, self.state_dir, self.log)
        self.finished.update(finished)
        self.in_progress |= in_progress

    def _give_up(self, job: TransformJob, timed_out: bool) -> None:
        record = self.finished.pop(job.isic_id, None)  # finished just before its worker died
        if record is None:
            self.log(f"transform: {job.isic_id} killed its worker again, alone; set aside")
            cause = (f"exceeded the per-image time limit of {self.time_limit_s:g} s, twice (a decoder that "
                     "hangs); its worker was replaced" if timed_out else
                     f"the worker process died while transforming this image, twice, alone too (crash or kill; "
                     f"{self.last_reason})")
            record = {"isic_id": job.isic_id, "status": STATUS_FAILED,
                      "reason": f"{cause}; not remembered, retried on the next run"}
        self._record(record, job)
        self.state.flush()

    def _record(self, record: dict, job: TransformJob) -> None:
        status = record.get("status")
        if status in (STATUS_OK, STATUS_QUARANTINED) and self.state.get(job.isic_id) != record:
            self.state.append(record)  # the worker journals hold it until the state commits it
        if status == STATUS_OK:
            self.report.processed += 1
        else:
            self.report.quarantine.append(QuarantineRow(job.isic_id, str(job.src), record.get("reason", "")))
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / output_name(job.isic_id)).unlink()  # an older output of other bytes
        self.done += 1
        now = time.perf_counter()
        if now - self.last_progress >= _PROGRESS_EVERY_SECONDS:
            rate = self.done / max(now - self.started, 1e-9)
            self.log(f"transform: {self.done}/{self.total} ({rate:.1f} images/s)")
            self.last_progress = now


class LazyBatches:
    """The queue of batches ``engine.map_batches`` takes (``popleft``, truth value) over positions in
    ``jobs``: each batch's ``TransformJob`` objects are made when it is taken, so a first run of
    400,000 images holds 8 bytes a job to do, not a list of jobs. Batches put back go in front
    (``appendleft``) or at the end (``extend``), as on a deque."""

    def __init__(self, jobs: Sequence[TransformJob], positions: np.ndarray, size: int) -> None:
        self.jobs, self.positions, self.size = jobs, positions, size
        self.next = 0
        self.front: deque[list[TransformJob]] = deque()
        self.back: deque[list[TransformJob]] = deque()

    def __len__(self) -> int:
        return len(self.front) + math.ceil((len(self.positions) - self.next) / self.size) + len(self.back)

    def __bool__(self) -> bool:
        return bool(self.front) or self.next < len(self.positions) or bool(self.back)

    def popleft(self) -> list[TransformJob]:
        if self.front:
            return self.front.popleft()
        if self.next < len(self.positions):
            chosen = self.positions[self.next : self.next + self.size]
            self.next += len(chosen)
            return [self.jobs[int(i)] for i in chosen]
        return self.back.popleft()

    def appendleft(self, batch: list[TransformJob]) -> None:
        self.front.appendleft(batch)

    def extend(self, batches: Iterable[list[TransformJob]]) -> None:
        self.back.extend(batches)
