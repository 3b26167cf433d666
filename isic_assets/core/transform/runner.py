"""The runner of ``transformed_images``: every merged image to one small JPEG, incrementally, on all cores.

Layout under ``out_dir`` (``data_transformed/``)::

    images/<isic_id>.jpg            one output per image, written atomically by the worker
    normalization.json              per-channel mean/std over every output, for training code
    _state/transform.sqlite         one record per image (records.py), on disk, committed in batches
    _state/transform.worker-*.jsonl each worker's journal while a run is going on

Incremental: an image whose ``src_sha256`` and settings fingerprint match its record and whose
output exists is skipped; a settings change (or a TRANSFORM_CODE_VERSION bump) changes the
fingerprint and so reprocesses everything; outputs of ids no longer asked for are deleted.

The stage is cut by concern: this module owns a run (lock, plan, cleanup, which engine, the final
tables); one_image.py is the worker side; dispatch.py maps the jobs over the engine
(core/compute/batches.py: the local fork pool or Dask, per ISIC_COMPUTE) and records the results;
records.py holds the state and the journals; normalization.py reads the results back.

Crash safety: a worker journals "started <id>" before and the full record after each image, so a
killed run loses nothing it finished, whatever the batch size; the next run (or the same run, for a
killed worker) folds the journals into the state. An image that reliably kills its decoder, or
hangs past the per-image time limit, is set aside instead of failing the whole run (dispatch.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import stat
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import layout
from ..atomic import atomic_write_json, has_entries, remove_stale_temporaries
from ..compute.allocator import return_free_memory
from ..compute.dask_cluster import ClusterInfo
from ..compute.engine import open_engine
from ..compute.setting import LOCAL, ComputeChoice
from ..operation.disk_space import disk_full_errors, ensure_free_space, format_bytes
from ..scan_state import SqliteLog
from .dispatch import TransformDispatch
from .image_ops import TransformSettings
from .normalization import outputs_and_normalization
from .records import (
    IMAGES_DIR,
    LEGACY_STATE_FILE,
    OUTPUT_SUFFIX,
    STATE_DIR,
    STATE_FILE,
    STATUS_OK,
    STATUS_QUARANTINED,
    JobTable,
    QuarantineRow,
    TransformJob,
    TransformReport,
    absorb_journals,
    decoded,
    find_sorted,
    valid_record,
)

__all__ = ["DEFAULT_IMAGE_TIME_LIMIT_S", "STAGE", "STATE_DIR", "STATE_FILE", "TransformJob", "TransformReport",
           "transform_images"]

Log = Callable[[str], None]

LOCK_FILE = "transform.lock"
NORMALIZATION_FILE = layout.NORMALIZATION_JSON
# Per-image wall-clock limit in a worker. The worst 6000x4000 JPEG measured (noise, q95) took 2.0 s
# at 256 px and 15 s at 1024 px with colour constancy and hair removal, on a 2-vCPU machine under a
# load of about 15 (bench/bench_time_limit.py), so only a decoder that hangs reaches it; the worker
# is then killed by the kernel (compute/batches.item_time_limit) and replaced.
DEFAULT_IMAGE_TIME_LIMIT_S = 60.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGE = "transformed_images"


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
    processes (default), or Dask (compute/dask_cluster.py), where ``out_dir`` and the sources must be on
    storage every worker sees at the same path.

    Raises ``ValueError`` for malformed jobs (duplicate or unsafe ids, a missing sha256) and
    propagates errors that are not one image's fault (e.g. a full disk, an unreachable or lost
    scheduler); never raises for a bad or crashing image, which is quarantined instead.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    jobs = JobTable.of(jobs)
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
    jobs: JobTable,
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
    state_missing = not (state_dir / STATE_FILE).exists() and not (state_dir / LEGACY_STATE_FILE).exists()
    # A commit (two fsyncs) per 2,000 records: the worker journals hold every record until then.
    state = SqliteLog(state_dir / STATE_FILE, ("isic_id",), valid_record, legacy=state_dir / LEGACY_STATE_FILE,
                      batch=2000)
    if state.damage:
        log(f"transform: {state.damage}")
    if state.imported:
        log(f"transform: {state.imported} record(s) of the earlier state file {LEGACY_STATE_FILE} moved into "
            f"{STATE_FILE}; their images are not transformed again")
    try:
        absorb_journals(state, state_dir, log)  # what a killed run finished
        if state_missing and next(iter(state.values()), None) is None and has_entries(images_dir):
            log(f"transform: state file {state_dir / STATE_FILE} is missing although {images_dir} holds "
                "outputs; every image is transformed again (the outputs come out identical)")
        # The sorted ids live for the sweep only: the workers, forked later, do not inherit them.
        report.removed = _remove_unwanted_outputs(images_dir, np.sort(jobs.isic_ids))
        todo = _plan(jobs, state, images_dir, fingerprint, report)
        if len(todo):
            per_image = _bytes_per_output(state, settings)
            free = ensure_free_space(STAGE, out_dir, len(todo) * per_image,
                                     detail=f"{len(todo)} images at about {format_bytes(per_image)} each; ")
            log(f"transform: about {format_bytes(len(todo) * per_image)} to write, {format_bytes(free)} free "
                f"at {out_dir}")
        log(
            f"transform: {len(todo)} to process, {report.skipped} unchanged, {report.removed} removed "
            f"(settings {fingerprint}, {workers} workers)"
        )
        if len(todo):
            # Workers are forked next and count what this process holds: not the free heap the job
            # table's chunked read and the plan left.
            return_free_memory()
            _run(jobs, todo, compute, workers, lock_fd, settings, out_dir, state, report, log, time_limit_s)
    finally:
        state.close()
        remove_stale_temporaries(images_dir)  # pools are down: a killed writer's leftovers only
    if report.removed or len(state) > len(jobs):  # records of ids no longer asked for: dropped
        state.compact(keep=((isic_id,) for isic_id in decoded(jobs.isic_ids)))
    report.images, report.normalization = outputs_and_normalization(jobs, state, settings, fingerprint)
    state.close()
    report.quarantine.sort(key=lambda row: row.isic_id)
    atomic_write_json(out_dir / NORMALIZATION_FILE, report.normalization)
    report.seconds = time.perf_counter() - started
    log(
        f"transform: {report.processed} processed, {report.skipped} skipped, {report.removed} removed, "
        f"{report.quarantined} quarantined in {report.seconds:.1f} s"
    )
    return report


def _run(jobs: JobTable, todo: np.ndarray, compute: ComputeChoice, workers: int, lock_fd: int,
         settings: TransformSettings, out_dir: Path, state: SqliteLog, report: TransformReport, log: Log,
         time_limit_s: float) -> None:
    """Open the engine ISIC_COMPUTE asks for and dispatch ``todo`` on it."""
    def on_cluster(info: ClusterInfo) -> None:
        report.compute_workers, report.cluster = info.workers, info.describe()
        log(f"transform: running on the {info.describe()}")

    # The run lock belongs to this process alone: no forked worker keeps it.
    with open_engine(compute, workers, out_dir, log, on_cluster, close_fds=(lock_fd,)) as engine:
        TransformDispatch(engine, settings, out_dir, state, report, log, len(todo), time_limit_s).run(jobs, todo)


def _check_jobs(jobs: JobTable) -> None:
    """Refuse malformed jobs (duplicate or unsafe ids, a hash that is not 64 lower-case hex digits).

    The first job in table order that breaks a rule is the one named, as if they were checked one by
    one (its id first, then whether an earlier job has it, then its hash), but no Python object is
    kept per job: ids are matched a chunk at a time, duplicates found by sorting, and the hashes were
    checked as the table was made (``JobTable.bad_sha256``)."""
    ids = jobs.isic_ids
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    repeated = order[1:][ordered[1:] == ordered[:-1]]  # stable: each the later of two equal ids
    del ordered
    duplicate = int(repeated.min()) if len(repeated) else len(ids)
    unsafe = _first_mismatch(ids, _SAFE_ID, duplicate)
    # The hashes were checked as the table was made: the ones that are not hashes are kept aside.
    bad_digest = min((position for position in jobs.bad_sha256 if position < min(unsafe, duplicate)),
                     default=len(ids))
    first = min(unsafe, duplicate, bad_digest)
    if first < len(ids):
        isic_id = ids[first].decode()
        if first == unsafe:
            raise ValueError(f"job id {isic_id!r} is not a safe file name")
        if first == duplicate:
            raise ValueError(f"job id {isic_id} appears more than once")
        raise ValueError(f"job {isic_id}: src_sha256 must be 64 lower-case hex digits, got {jobs.sha256_at(first)!r}")


def _first_mismatch(column: np.ndarray, pattern: re.Pattern[str], stop: int, rows: int = 65_536) -> int:
    """The first position before ``stop`` whose UTF-8 value does not match ``pattern``, else the
    column's length."""
    check = re.compile(pattern.pattern.encode()).match
    for start in range(0, min(stop, len(column)), rows):
        for offset, value in enumerate(column[start : min(start + rows, stop)].tolist()):
            if not check(value):
                return start + offset
    return len(column)


def _remove_unwanted_outputs(images_dir: Path, wanted: np.ndarray, rows: int = 4096) -> int:
    """Delete every file in ``images/`` that is not the output of a wanted id (``wanted``: sorted
    UTF-8 bytes); return how many. The folder is read ``rows`` entries at a time."""
    removed = 0
    with os.scandir(images_dir) as entries:
        while chunk := list(itertools.islice(entries, rows)):
            stems = []
            for entry in chunk:
                stem, suffix = os.path.splitext(entry.name)
                stems.append(os.fsencode(stem) if suffix == OUTPUT_SUFFIX else b"\0")  # \0: never an id
            kept = find_sorted(wanted, stems) >= 0
            for entry, keep in zip(chunk, kept.tolist(), strict=True):
                if keep:
                    continue
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


def _bytes_per_output(state: SqliteLog, settings: TransformSettings) -> int:
    """What one output will take: the largest recorded output of these settings (plus a quarter),
    else 0.75 bytes per pixel of a ``size`` x ``size`` JPEG (smooth dermoscopy takes less at q95;
    pure noise takes more, and then the full-disk error covers it), plus a page for journal and
    filesystem slack."""
    largest = state.largest("out_bytes", status=STATUS_OK, fingerprint=settings.fingerprint())
    largest = largest * 5 // 4 if largest is not None else settings.size * settings.size * 3 // 4
    return largest + 4096


def _size_is(path: str, size: int) -> bool:
    """An output of another size than recorded is stale (or cut short): it is made again; a missing
    one (or a symlink, never written by a worker) is made too."""
    try:
        facts = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(facts.st_mode) and facts.st_size == size


def _plan(
    jobs: JobTable, state: SqliteLog, images_dir: Path, fingerprint: str, report: TransformReport
) -> np.ndarray:
    """The positions in ``jobs`` of the jobs to run now; unchanged ones are counted as skipped
    (remembered quarantines re-reported).

    Positions, not a list of ``TransformJob`` (about 415 bytes each with its ``Path``): the jobs are
    made a batch at a time as they are dispatched. Each output is looked at by its own path, not
    through a listing of ``images/`` held in memory (a dict of 400,000 directory entries is about
    100 MB)."""
    todo = array("q")
    sha256_at = jobs.sha256_at  # no TransformJob (and its Path) made per job
    folder = str(images_dir)
    for position, isic_id in enumerate(decoded(jobs.isic_ids)):
        record = state.get(isic_id)
        path = f"{folder}/{isic_id}{OUTPUT_SUFFIX}"
        if record is not None and record.get("src_sha256") == sha256_at(position) \
                and record.get("fingerprint") == fingerprint:
            if record.get("status") == STATUS_OK and _size_is(path, record["out_bytes"]):
                report.skipped += 1
                continue
            if record.get("status") == STATUS_QUARANTINED:
                report.skipped += 1
                report.quarantine.append(QuarantineRow(isic_id, str(jobs[position].src), record["reason"]))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
        todo.append(position)
    return np.frombuffer(todo, dtype=np.int64) if todo else np.empty(0, dtype=np.int64)


