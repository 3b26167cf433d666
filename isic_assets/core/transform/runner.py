"""The runner of ``transformed_images``: every merged image to one small JPEG, incrementally, on all cores.

Layout under ``out_dir`` (``data_transformed/``)::

    images/<isic_id>.jpg            one output per image, written atomically by the worker
    normalization.json              per-channel mean/std over every output, for training code
    _state/transform.jsonl          one record per image: inputs (src_sha256, settings fingerprint),
                                    output facts and its per-channel pixel sums
    _state/transform.worker-<pid>.jsonl   each worker's journal while a run is going on

Incremental: an image whose ``src_sha256`` and settings fingerprint match its record and whose
output exists is skipped; a settings change (or a TRANSFORM_CODE_VERSION bump) changes the
fingerprint and so reprocesses everything; outputs of ids no longer asked for are deleted.

Crash safety: a worker journals "started <id>" before and the full record after each image, so a
killed run loses nothing it finished, whatever the batch size; the next run (or the same run, for a
killed worker) folds the journals into the state. A worker that dies takes the pool down
(``BrokenProcessPool``); the runner then re-runs the images that were in flight one at a time in a
fresh single-worker pool, so an image that reliably kills its decoder is quarantined instead of
failing the whole run, and an image that was merely unlucky (OOM killer) completes.

Parallelism follows docs/PERFORMANCE.md 7 and 12.4: a fork-context ``ProcessPoolExecutor``, OpenCV held to
one thread per worker, batches of about tasks/(4*workers) images (capped), at most two batches per
worker in flight so memory stays flat for any number of images, and workers that return small
records, never pixels.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .. import layout
from ..atomic import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from ..compute.setting import LOCAL, ComputeChoice
from ..operation.disk_space import disk_full_errors, ensure_free_space, format_bytes
from ..scan_state import JsonlLog, read_jsonl
from .image_ops import TRANSFORM_CODE_VERSION, ImageDecodeError, TransformSettings, transform_bytes

Log = Callable[[str], None]

IMAGES_DIR = "images"
STATE_DIR = "_state"
STATE_FILE = "transform.jsonl"
LOCK_FILE = "transform.lock"
NORMALIZATION_FILE = layout.NORMALIZATION_JSON
OUTPUT_SUFFIX = ".jpg"
_JOURNAL_PREFIX = "transform.worker-"
# docs/PERFORMANCE.md 7: batching small tasks lifts 2-process scaling from 1.81x to 2.07x; the cap keeps
# a batch of 6000x4000 images under a second so the tail of a run stays balanced.
_MAX_BATCH = 16
_BATCHES_IN_FLIGHT_PER_WORKER = 2
_PROGRESS_EVERY_SECONDS = 10.0
# Per-image wall-clock limit in a worker. The worst 6000x4000 JPEG measured (noise, q95) took 2.0 s
# at 256 px and 15 s at 1024 px with colour constancy and hair removal, on a 2-vCPU machine under a
# load of about 15 (bench/bench_time_limit.py), so only a decoder that hangs reaches it; the worker
# is then killed by the kernel (SIGALRM's default action works even inside a C call that never
# returns to Python) and replaced.
DEFAULT_IMAGE_TIME_LIMIT_S = 60.0
# Consecutive pool deaths with no image finished or isolated before the run gives up.
_MAX_FRUITLESS_RESTARTS = 3
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"  # undecodable bytes: remembered, not retried until they change
STATUS_FAILED = "failed"  # unreadable source, unexpected error, crash: reported, retried next run
_STATUS_STARTED = "started"  # journal only
STAGE = "transformed_images"
_OK_FIELDS = ("src_sha256", "fingerprint", "out", "out_bytes", "out_sha256", "width", "height", "sum", "sumsq",
              "pixels")


def _valid_record(record: dict) -> bool:
    """A state record the runner can trust: a complete output's facts, or a quarantine with its reason."""
    status = record.get("status")
    if status == STATUS_OK:
        return (all(record.get(k) is not None for k in _OK_FIELDS)
                and len(record["sum"]) == 3 and len(record["sumsq"]) == 3)
    if status == STATUS_QUARANTINED:
        return all(record.get(k) is not None for k in ("src_sha256", "fingerprint", "reason"))
    return status in (STATUS_FAILED, _STATUS_STARTED)


@dataclass(frozen=True)
class TransformJob:
    """One image to transform: its id (output name), source file, source sha256 and EXIF orientation."""

    isic_id: str
    src: Path
    src_sha256: str
    exif_orientation: int = 1


@dataclass(frozen=True)
class QuarantineRow:
    """An image left out of ``images/`` and why (for the asset's quarantine table)."""

    isic_id: str
    src: str
    reason: str


@dataclass(frozen=True)
class TransformedImage:
    """One output: ``path`` relative to ``out_dir``, its size in pixels, bytes and sha256."""

    path: str
    width: int
    height: int
    file_bytes: int
    sha256: str


@dataclass
class TransformReport:
    """What a run did. ``skipped`` counts unchanged images not processed again (remembered
    quarantines included); ``quarantine`` lists every image currently left out, this run's and
    remembered ones; ``images`` has every current output, processed now or earlier."""

    fingerprint: str
    processed: int = 0
    skipped: int = 0
    removed: int = 0
    quarantine: list[QuarantineRow] = field(default_factory=list)
    seconds: float = 0.0
    normalization: dict[str, Any] = field(default_factory=dict)
    images: dict[str, TransformedImage] = field(default_factory=dict)
    worker_restarts: int = 0
    backend: str = "local"  # ISIC_COMPUTE kind: local, dask-local or dask
    compute_workers: int = 0  # worker processes (local) or worker threads of the Dask cluster
    cluster: str = ""  # the Dask cluster that ran it: scheduler, workers, dashboard

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)


# ---------------------------------------------------------------------------------------------
# One image (runs in a worker; also callable directly, e.g. by the bench)


def output_name(isic_id: str) -> str:
    """Relative path of an id's output inside ``out_dir``."""
    return f"{IMAGES_DIR}/{isic_id}{OUTPUT_SUFFIX}"


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


# ---------------------------------------------------------------------------------------------
# Worker process side


@dataclass
class _WorkerContext:
    settings: TransformSettings
    fingerprint: str
    out_dir: Path
    state_dir: Path
    journal: IO[str] | None = None
    time_limit_s: float = 0.0

    def write(self, record: dict) -> None:
        if self.journal is None:
            path = self.state_dir / f"{_JOURNAL_PREFIX}{os.getpid()}.jsonl"
            self.journal = path.open("a", encoding="utf-8")
        _journal(self.journal, record)


def _journal(handle: IO[str], record: dict) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()  # reaches the kernel: survives the death of this process


_WORKER: _WorkerContext | None = None


def _init_worker(
    settings: TransformSettings, out_dir: Path, state_dir: Path, parent_pid: int, lock_fd: int | None,
    time_limit_s: float = 0.0,
) -> None:
    """Pool initializer: one OpenCV thread per process (docs/PERFORMANCE.md 7: its threads add nothing
    here and oversubscribe the cores) and the per-process context. Safe only because the parent
    parked its own cv2 pool before forking (``_parent_cv2_threads_parked``)."""
    global _WORKER
    _die_with_parent(parent_pid)
    if lock_fd is not None:
        os.close(lock_fd)  # the run lock belongs to the parent alone
    cv2.setNumThreads(1)
    # The default action of SIGALRM ends the process: the per-image time limit (see _run_batch).
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    # Terminate and Ctrl-C are the run process's to handle: it shuts the pool down and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = _WorkerContext(settings, settings.fingerprint(), out_dir, state_dir, time_limit_s=time_limit_s)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this worker when the run process dies.

    ProcessPoolExecutor workers of a killed parent otherwise wait forever on their task queue
    (checked: both stayed alive after the parent got SIGKILL), leaking processes on a shared box.
    The parent forks the workers from the thread that runs ``transform_images``, which outlives
    the pool, so the signal cannot fire early. No-op where prctl is unavailable.
    """
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _run_batch(jobs: list[TransformJob]) -> list[dict]:
    worker = _WORKER
    if worker is None:
        raise RuntimeError("transform worker used without its initializer")
    records = []
    for job in jobs:
        worker.write({"isic_id": job.isic_id, "status": _STATUS_STARTED})
        if worker.time_limit_s > 0:
            signal.setitimer(signal.ITIMER_REAL, worker.time_limit_s)
        try:
            record = transform_job(job, worker.out_dir, worker.settings, worker.fingerprint)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        worker.write(record)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# The run


def transform_images(
    jobs: Sequence[TransformJob],
    out_dir: Path,
    settings: TransformSettings,
    workers: int = 2,
    log: Log = print,
    compute: ComputeChoice | None = None,
    time_limit_s: float = DEFAULT_IMAGE_TIME_LIMIT_S,
) -> TransformReport:
    """Bring ``out_dir`` in line with ``jobs`` and ``settings``; see the module docstring.

    ``compute`` picks the engine (core/compute/setting.py): the local fork pool of ``workers``
    processes (default), or Dask (transform/on_dask.py), where ``out_dir`` and the sources must be on
    storage every worker sees at the same path.

    Raises ``ValueError`` for malformed jobs (duplicate or unsafe ids, a missing sha256) and
    propagates errors that are not one image's fault (e.g. a full disk, an unreachable or lost
    scheduler); never raises for a bad or crashing image, which is quarantined instead.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_jobs(jobs)
    out_dir = Path(out_dir)
    images_dir, state_dir = out_dir / IMAGES_DIR, out_dir / STATE_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_run(state_dir / LOCK_FILE) as lock_fd, disk_full_errors(STAGE, out_dir):
        return _transform_locked(jobs, out_dir, settings, workers, log, started, lock_fd,
                                 compute or ComputeChoice(LOCAL), time_limit_s)


@contextlib.contextmanager
def _exclusive_run(lock_path: Path) -> Iterator[int]:
    """One run per ``out_dir`` at a time: a second one would delete the first one's temporaries
    and interleave its state. ``flock`` is released by the kernel when the holder dies; forked
    workers close their inherited copy of the descriptor so they never keep it alive."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(f"another transform run is using {lock_path.parent.parent}") from exc
        try:
            yield handle.fileno()
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _transform_locked(
    jobs: Sequence[TransformJob],
    out_dir: Path,
    settings: TransformSettings,
    workers: int,
    log: Log,
    started: float,
    lock_fd: int,
    compute: ComputeChoice,
    time_limit_s: float = DEFAULT_IMAGE_TIME_LIMIT_S,
) -> TransformReport:
    images_dir, state_dir = out_dir / IMAGES_DIR, out_dir / STATE_DIR
    for folder in (out_dir, images_dir, state_dir):
        remove_stale_temporaries(folder)
    fingerprint = settings.fingerprint()
    report = TransformReport(fingerprint=fingerprint, backend=compute.kind, compute_workers=workers)
    state_missing = not (state_dir / STATE_FILE).exists()
    state = JsonlLog(state_dir / STATE_FILE, ("isic_id",), _valid_record)
    if state.damage:
        log(f"transform: {state.damage}")
    try:
        _absorb_journals(state, state_dir, log)  # what a killed run finished
        if state_missing and not state.records and any(images_dir.iterdir()):
            log(f"transform: state file {state_dir / STATE_FILE} is missing although {images_dir} holds "
                "outputs; every image is transformed again (the outputs come out identical)")
        wanted = {job.isic_id for job in jobs}
        report.removed = _remove_unwanted_outputs(images_dir, wanted)
        todo = _plan(jobs, state, images_dir, fingerprint, report)
        if todo:
            per_image = _bytes_per_output(state, settings)
            free = ensure_free_space(STAGE, out_dir, len(todo) * per_image,
                                     detail=f"{len(todo)} images at about {format_bytes(per_image)} each; ")
            log(f"transform: about {format_bytes(len(todo) * per_image)} to write, {format_bytes(free)} free "
                f"at {out_dir}")
        log(
            f"transform: {len(todo)} to process, {report.skipped} unchanged, {report.removed} removed "
            f"(settings {fingerprint}, {workers} workers)"
        )
        if todo and compute.uses_dask:
            _run_on_dask(compute, todo, settings, out_dir, state, report, workers, log)
        elif todo:
            runner = _PoolRunner(settings, out_dir, state_dir, state, report, workers, log, len(todo))
            runner.lock_fd = lock_fd
            runner.time_limit_s = time_limit_s
            with _parent_cv2_threads_parked():
                runner.run(todo)
    finally:
        state.close()
        remove_stale_temporaries(images_dir)  # pools are down: a killed writer's leftovers only
    if report.removed or state.needs_compaction:
        state.compact(keep=[(job.isic_id,) for job in jobs])
    report.images = _current_outputs(jobs, state, fingerprint)
    report.quarantine.sort(key=lambda row: row.isic_id)
    report.normalization = _normalization(jobs, state, settings, fingerprint)
    atomic_write_json(out_dir / NORMALIZATION_FILE, report.normalization)
    report.seconds = time.perf_counter() - started
    log(
        f"transform: {report.processed} processed, {report.skipped} skipped, {report.removed} removed, "
        f"{report.quarantined} quarantined in {report.seconds:.1f} s"
    )
    return report


def _run_on_dask(compute: ComputeChoice, todo: list[TransformJob], settings: TransformSettings, out_dir: Path,
                 state: JsonlLog, report: TransformReport, workers: int, log: Log) -> None:
    """Reach the cluster, check it sees ``out_dir``, run, then fold the workers' journals in."""
    from ..compute.dask_cluster import open_dask  # Dask is imported only when it is asked for
    from .on_dask import DaskRunner

    state_dir = out_dir / STATE_DIR
    with open_dask(compute, workers, log) as session:
        info = session.info()
        report.compute_workers, report.cluster = info.workers, info.describe()
        log(f"transform: running on the {info.describe()}")
        session.probe(out_dir)
        runner = DaskRunner(session, info, settings, out_dir, state_dir, state, report, workers, log, len(todo))
        runner.run(todo)
    _absorb_journals(state, state_dir, log)  # every task has completed: no worker writes to them now


@contextlib.contextmanager
def _parent_cv2_threads_parked() -> Iterator[None]:
    """Hold the parent's OpenCV thread pool at one thread while forked workers exist.

    OpenCV's pthread pool does not survive ``fork``: a child of a process whose pool has threads
    hangs forever on its first cv2 call, even ``cv2.setNumThreads(1)`` (seen with gdb: the child
    waits in ``pthread_cond_destroy`` on a condition variable the parent's pool thread was waiting
    on). Any earlier cv2 call in the parent (a test, a Dagster op) starts that pool, so the parent
    joins it before forking and restores its thread count afterwards.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _check_jobs(jobs: Sequence[TransformJob]) -> None:
    seen: set[str] = set()
    for job in jobs:
        if not isinstance(job.isic_id, str) or not _SAFE_ID.match(job.isic_id):
            raise ValueError(f"job id {job.isic_id!r} is not a safe file name")
        if job.isic_id in seen:
            raise ValueError(f"job id {job.isic_id} appears more than once")
        if not isinstance(job.src_sha256, str) or not _SHA256_HEX.match(job.src_sha256):
            raise ValueError(
                f"job {job.isic_id}: src_sha256 must be 64 lower-case hex digits, got {job.src_sha256!r}"
            )
        seen.add(job.isic_id)


def _remove_unwanted_outputs(images_dir: Path, wanted: set[str]) -> int:
    """Delete every file in ``images/`` that is not the output of a wanted id; return how many."""
    removed = 0
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix == OUTPUT_SUFFIX and stem in wanted:
                continue
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _bytes_per_output(state: JsonlLog, settings: TransformSettings) -> int:
    """What one output will take: the largest recorded output of these settings (plus a quarter),
    else 0.75 bytes per pixel of a ``size`` x ``size`` JPEG (smooth dermoscopy takes less at q95;
    pure noise takes more, and then the full-disk error covers it), plus a page for journal and
    filesystem slack."""
    fingerprint = settings.fingerprint()
    sizes = [r["out_bytes"] for r in state.values()
             if r.get("status") == STATUS_OK and r.get("fingerprint") == fingerprint]
    largest = max(sizes) * 5 // 4 if sizes else settings.size * settings.size * 3 // 4
    return largest + 4096


def _size_is(entry: os.DirEntry, size: int) -> bool:
    """An output of another size than recorded is stale (or cut short): it is made again."""
    try:
        return entry.stat(follow_symlinks=False).st_size == size
    except OSError:
        return False


def _is_current(record: dict | None, job: TransformJob, fingerprint: str) -> bool:
    return (
        record is not None
        and record.get("src_sha256") == job.src_sha256
        and record.get("fingerprint") == fingerprint
    )


def _plan(
    jobs: Sequence[TransformJob], state: JsonlLog, images_dir: Path, fingerprint: str, report: TransformReport
) -> list[TransformJob]:
    """The jobs to run now; unchanged ones are counted as skipped (remembered quarantines re-reported)."""
    with os.scandir(images_dir) as entries:
        present = {entry.name: entry for entry in entries}
    todo = []
    for job in jobs:
        record = state.get(job.isic_id)
        name = job.isic_id + OUTPUT_SUFFIX
        if record is not None and _is_current(record, job, fingerprint):
            if record.get("status") == STATUS_OK and name in present and _size_is(present[name], record["out_bytes"]):
                report.skipped += 1
                continue
            if record.get("status") == STATUS_QUARANTINED:
                report.skipped += 1
                report.quarantine.append(QuarantineRow(job.isic_id, str(job.src), record["reason"]))
                if name in present:
                    (images_dir / name).unlink()
                continue
        todo.append(job)
    return todo


class _PoolRunner:
    """Runs the jobs on a process pool in bounded windows and records results as they arrive."""

    def __init__(
        self,
        settings: TransformSettings,
        out_dir: Path,
        state_dir: Path,
        state: JsonlLog,
        report: TransformReport,
        workers: int,
        log: Log,
        total: int,
    ) -> None:
        self.settings, self.out_dir, self.state_dir = settings, out_dir, state_dir
        self.state, self.report, self.workers, self.log, self.total = state, report, workers, log, total
        self.jobs_by_id: dict[str, TransformJob] = {}
        self.last_journal: tuple[dict[str, dict], set[str]] = ({}, set())
        self.lock_fd: int | None = None
        self.time_limit_s = 0.0
        self.done = 0
        self.started = time.perf_counter()
        self.last_progress = self.started

    def run(self, todo: list[TransformJob]) -> None:
        self.jobs_by_id = {job.isic_id: job for job in todo}
        batch = max(1, min(_MAX_BATCH, math.ceil(len(todo) / (4 * self.workers))))
        pending = deque(todo[i : i + batch] for i in range(0, len(todo), batch))
        suspects: list[TransformJob] = []
        fruitless = 0
        while pending:
            broken = self._run_pool(pending, self.workers)
            if not broken:
                break
            self.report.worker_restarts += 1
            requeue, isolate, finished = self._sort_out(broken)
            suspects.extend(isolate)
            for start in reversed(range(0, len(requeue), batch)):  # never started: back to the front
                pending.appendleft(requeue[start : start + batch])
            fruitless = 0 if (isolate or finished) else fruitless + 1
            if fruitless > _MAX_FRUITLESS_RESTARTS:
                raise RuntimeError(
                    f"transform workers keep dying before finishing any image ({fruitless} pools in a row); "
                    f"{self.done} of {self.total} images done and recorded, re-run to resume"
                )
            self.log(f"transform: a worker died; {len(isolate)} image(s) set aside to retry one at a time")
        for job in suspects:
            self._isolate(job)

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        # fork: 18 ms to start vs 230-350 ms for forkserver/spawn, which re-import cv2 (docs/PERFORMANCE.md 7).
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_worker,
            initargs=(self.settings, self.out_dir, self.state_dir, os.getpid(), self.lock_fd, self.time_limit_s),
        )

    def _run_pool(self, pending: deque[list[TransformJob]], workers: int) -> list[list[TransformJob]]:
        """Run batches from ``pending`` until it is empty or the pool breaks; return the broken batches."""
        executor = self._pool(workers)
        in_flight: dict[Future, list[TransformJob]] = {}
        broken: list[list[TransformJob]] = []
        try:
            while (pending or in_flight) and not broken:
                while pending and len(in_flight) < _BATCHES_IN_FLIGHT_PER_WORKER * workers:
                    batch = pending.popleft()
                    try:
                        in_flight[executor.submit(_run_batch, batch)] = batch
                    except BrokenProcessPool:
                        broken.append(batch)
                        break
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken.extend(self._collect(done, in_flight))
            if broken and in_flight:
                done, _ = wait(in_flight)  # a broken pool fails every future promptly
                broken.extend(self._collect(done, in_flight))
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self._absorb()
        return broken

    def _collect(
        self, done: set[Future], in_flight: dict[Future, list[TransformJob]]
    ) -> list[list[TransformJob]]:
        broken = []
        for future in done:
            batch = in_flight.pop(future)
            try:
                records = future.result()
            except BrokenProcessPool:
                broken.append(batch)
                continue
            for record in records:
                self._record(record)
        self.state.flush()
        return broken

    def _absorb(self) -> None:
        """Fold the journals of a pool that has shut down into the state; keep what they held."""
        self.last_journal = _absorb_journals(self.state, self.state_dir, self.log)

    def _sort_out(
        self, broken: list[list[TransformJob]]
    ) -> tuple[list[TransformJob], list[TransformJob], int]:
        """Split a dead pool's batches: finished (journaled) are recorded, the image each dead worker
        was busy with is set aside for isolation, the never-started rest goes back in the queue."""
        finished, in_progress = self.last_journal  # absorbed when the dead pool shut down
        requeue, isolate, done = [], [], 0
        for batch in broken:
            for job in batch:
                record = finished.get(job.isic_id)
                if record is not None:
                    self._record(record)
                    done += 1
                elif job.isic_id in in_progress:
                    isolate.append(job)
                else:
                    requeue.append(job)
        self.state.flush()
        return requeue, isolate, done

    def _isolate(self, job: TransformJob) -> None:
        """Run one suspect alone; if its worker dies again, quarantine it (not remembered)."""
        executor = self._pool(1)
        began = time.monotonic()
        try:
            record = executor.submit(_run_batch, [job]).result()[0]
        except BrokenProcessPool:
            record = None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self._absorb()
        timed_out = self.time_limit_s > 0 and time.monotonic() - began >= self.time_limit_s
        if record is None:
            record = self.last_journal[0].get(job.isic_id) or {
                "isic_id": job.isic_id,
                "status": STATUS_FAILED,
                "reason": (f"exceeded the per-image time limit of {self.time_limit_s:g} s, twice (a decoder "
                           "that hangs); its worker was replaced" if timed_out else
                           "the worker process died while transforming this image, twice (crash or kill)")
                + "; not remembered, retried on the next run",
            }
        self._record(record)
        self.state.flush()

    def _record(self, record: dict) -> None:
        job = self.jobs_by_id[record["isic_id"]]
        status = record.get("status")
        if status in (STATUS_OK, STATUS_QUARANTINED) and self.state.get(job.isic_id) != record:
            self.state.append(record)  # flushed per batch; the worker journals already hold it
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


def _absorb_journals(state: JsonlLog, state_dir: Path, log: Log | None = None
                     ) -> tuple[dict[str, dict], set[str]]:
    """Fold worker journals into the state and delete them; only call while no worker runs.

    Returns every finished record found (by id) and the ids a worker had started but not finished
    (what it was doing when it died). Remembered: ``ok`` and ``quarantined`` records only.
    """
    finished: dict[str, dict] = {}
    in_progress: set[str] = set()
    journals = sorted(state_dir.glob(f"{_JOURNAL_PREFIX}*.jsonl"))
    for path in journals:
        current = None
        records, bad = read_jsonl(path)
        usable = [r for r in records if isinstance(r.get("isic_id"), str) and _valid_record(r)]
        bad += len(records) - len(usable)
        if bad and log is not None:
            log(f"transform: worker journal {path.name} had {bad} damaged line(s) (a worker killed mid-write); "
                "ignored, those images are transformed again")
        for record in usable:
            isic_id = record.get("isic_id")
            if record.get("status") == _STATUS_STARTED:
                current = isic_id
                continue
            finished[isic_id] = record
            if current == isic_id:
                current = None
        if current is not None:
            in_progress.add(current)
    for isic_id, record in finished.items():
        if record.get("status") in (STATUS_OK, STATUS_QUARANTINED) and state.get(isic_id) != record:
            state.append(record)
    state.flush()
    for path in journals:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return finished, in_progress


# ---------------------------------------------------------------------------------------------
# Results


def _current_records(jobs: Sequence[TransformJob], state: JsonlLog, fingerprint: str) -> Iterator[dict]:
    for job in jobs:
        record = state.get(job.isic_id)
        if _is_current(record, job, fingerprint) and record is not None and record.get("status") == STATUS_OK:
            yield record


def _current_outputs(
    jobs: Sequence[TransformJob], state: JsonlLog, fingerprint: str
) -> dict[str, TransformedImage]:
    return {
        record["isic_id"]: TransformedImage(
            record["out"], record["width"], record["height"], record["out_bytes"], record["out_sha256"]
        )
        for record in _current_records(jobs, state, fingerprint)
    }


def _normalization(
    jobs: Sequence[TransformJob], state: JsonlLog, settings: TransformSettings, fingerprint: str
) -> dict[str, Any]:
    """Per-channel mean and population std over every current output, from the exact integer sums.

    Variance is (n * sumsq - sum^2) / n^2 in Python integers, exact, then one float division: no
    catastrophic cancellation however many images. Padding pixels count: they are what the network
    sees.
    """
    channels = 3
    sums, squares, count, images = [0] * channels, [0] * channels, 0, 0
    for record in _current_records(jobs, state, fingerprint):
        images += 1
        count += record["pixels"]
        for c in range(channels):
            sums[c] += record["sum"][c]
            squares[c] += record["sumsq"][c]
    result: dict[str, Any] = {
        "channels": ["R", "G", "B"],
        "image_count": images,
        "pixel_count": count,
        "settings": asdict(settings),
        "fingerprint": fingerprint,
        "transform_code_version": TRANSFORM_CODE_VERSION,
        "scope": "every pixel of every stored output (padding included), before JPEG encoding",
    }
    if count == 0:
        return {**result, "mean": None, "std": None, "mean_255": None, "std_255": None}
    mean_255 = [s / count for s in sums]
    std_255 = [math.sqrt((count * q - s * s) / (count * count)) for s, q in zip(sums, squares, strict=True)]
    return {
        **result,
        "mean": [m / 255.0 for m in mean_255],
        "std": [s / 255.0 for s in std_255],
        "mean_255": mean_255,
        "std_255": std_255,
    }


# ---------------------------------------------------------------------------------------------
# Baseline for the bench


def naive_transform(src: Path, dst: Path, size: int, mode: str = "stretch") -> None:
    """The notebook baseline the bench measures against (docs/PERFORMANCE.md 2): ``cv2.imread`` of the full
    image, full-size ``cvtColor``, INTER_AREA resize, ``cv2.imwrite`` q95. ``mode`` gives the same
    geometry as the fast path (stretch, or pad/center_crop done on full-size pixels)."""
    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageDecodeError(f"{src}: cv2.imread cannot decode it")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    if mode == "stretch":
        out = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    elif mode == "center_crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        out = cv2.resize(rgb[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)
    elif mode == "pad":
        scale = size / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        content = cv2.resize(rgb, new, interpolation=cv2.INTER_AREA)
        out = np.zeros((size, size, 3), np.uint8)
        y0, x0 = (size - new[1]) // 2, (size - new[0]) // 2
        out[y0 : y0 + new[1], x0 : x0 + new[0]] = content
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    if not cv2.imwrite(str(dst), cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cv2.imwrite could not write {dst}")
