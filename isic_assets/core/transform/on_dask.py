"""``transformed_images`` on a Dask cluster (ISIC_COMPUTE = dask-local or a scheduler address).

The per-image work is the same ``transform_job`` as on the local pool, batched the same way; the
runner keeps owning the state. Workers journal every image to ``_state/`` on the shared data root
(one file per worker thread, named by host, pid and thread, so machines never share a file) and
return small records; the runner records them as they arrive. Hence:

- a worker killed mid-batch: Dask reruns the batch elsewhere; outputs are written atomically and
  are a pure function of the input bytes and settings, so the rerun leaves the same bytes;
- a batch Dask gives up on (it killed ``allowed-failures`` + 1 workers) is split into one-image
  tasks; an image Dask gives up on is run once more alone at the end, and if it kills its workers
  alone too it is reported like the local pool's killer image (status ``failed``, not remembered,
  retried next run); the run goes on;
- a lost scheduler fails the step; what finished is in the state or in the journals, which the
  next run folds in first, so it resumes where this one stopped.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections import deque
from pathlib import Path

import cv2

from ..compute.dask_cluster import ClusterInfo, DaskSession, LostBatch
from . import runner
from .image_ops import TransformSettings

_CV2_READY = threading.local()


def run_batch_on_worker(
    jobs: list[runner.TransformJob], out_dir: Path, state_dir: Path, settings: TransformSettings, fingerprint: str
) -> list[dict]:
    """One batch on a Dask worker: journal, transform, journal; return the records (small)."""
    if not getattr(_CV2_READY, "done", False):
        cv2.setNumThreads(1)  # docs/PERFORMANCE.md 7: one OpenCV thread per worker process
        _CV2_READY.done = True
    name = f"{runner._JOURNAL_PREFIX}{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.jsonl"
    records = []
    # Opened per batch, not kept: the runner deletes journals after each run, and a long-lived worker
    # of an external cluster must not keep appending to a deleted file on the next run.
    with (Path(state_dir) / name).open("a", encoding="utf-8") as journal:
        for job in jobs:
            runner._journal(journal, {"isic_id": job.isic_id, "status": runner._STATUS_STARTED})
            record = runner.transform_job(job, out_dir, settings, fingerprint)
            runner._journal(journal, record)
            records.append(record)
    return records


class DaskRunner(runner._PoolRunner):
    """Runs the jobs through a Dask session and records results as they complete."""

    def __init__(self, session: DaskSession, info: ClusterInfo, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session, self.info = session, info
        self.last_reason = ""

    def run(self, todo: list[runner.TransformJob]) -> None:
        self.jobs_by_id = {job.isic_id: job for job in todo}
        slots = max(1, self.info.threads)
        size = max(1, min(runner._MAX_BATCH, math.ceil(len(todo) / (4 * slots))))
        queue = deque(todo[i : i + size] for i in range(0, len(todo), size))
        suspects = self._map(queue, runner._BATCHES_IN_FLIGHT_PER_WORKER * slots)
        if suspects:
            self.log(f"transform: {len(suspects)} image(s) were on workers that died; retrying them one at a time")
        for job in suspects:
            # Alone on the cluster, so no other image's crash can be blamed on this one: Dask counts a
            # death against every task the dead worker held, running or queued.
            for lost in self._map(deque([[job]]), in_flight=1):
                self._give_up(lost)

    def _map(self, queue: deque, in_flight: int) -> list[runner.TransformJob]:
        """Run the queue; a lost batch is split into one-image tasks, a lost image is returned."""
        args = (self.out_dir, self.state_dir, self.settings, self.settings.fingerprint())
        suspects = []
        for batch, result in self.session.map_batches(run_batch_on_worker, queue, args, in_flight):
            if isinstance(result, LostBatch):
                self.report.worker_restarts += 1
                self.last_reason = result.reason
                if len(batch) > 1:
                    queue.extend([job] for job in batch)
                else:
                    suspects.append(batch[0])
                continue
            for record in result:
                self._record(record)
            self.state.flush()
        return suspects

    def _give_up(self, job: runner.TransformJob) -> None:
        self.log(f"transform: {job.isic_id} killed every worker that transformed it, alone too; set aside")
        self._record({
            "isic_id": job.isic_id,
            "status": runner.STATUS_FAILED,
            "reason": "the worker process died while transforming this image, on every worker that tried, "
                      f"alone too (crash or kill; {self.last_reason}); not remembered, retried on the next run",
        })
        self.state.flush()
