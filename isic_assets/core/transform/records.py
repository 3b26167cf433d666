"""What ``transformed_images`` remembers: the job and report types, state records, worker journals.

``_state/transform.sqlite`` holds one record per image (``scan_state.SqliteLog``): inputs
(src_sha256, settings fingerprint), output facts and its per-channel pixel sums. The earlier
``_state/transform.jsonl`` is imported into it once and deleted. While a run goes on, every worker process (or Dask
worker thread) appends to its own journal ``_state/transform.worker-<host>-<pid>-<thread>.jsonl``:
"started <id>" before an image and its full record after, flushed to the kernel each time, so a
killed run loses nothing it finished; ``absorb_journals`` folds them into the state.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..scan_state import SqliteLog, iter_jsonl

IMAGES_DIR = "images"
STATE_DIR = "_state"
STATE_FILE = "transform.sqlite"
LEGACY_STATE_FILE = "transform.jsonl"  # the state before it moved to SQLite: imported once
OUTPUT_SUFFIX = ".jpg"
JOURNAL_PREFIX = "transform.worker-"

STATUS_OK = "ok"
STATUS_QUARANTINED = "quarantined"  # undecodable bytes: remembered, not retried until they change
STATUS_FAILED = "failed"  # unreadable source, unexpected error, crash: reported, retried next run
STATUS_STARTED = "started"  # journal only
_OK_FIELDS = ("src_sha256", "fingerprint", "out", "out_bytes", "out_sha256", "width", "height", "sum", "sumsq",
              "pixels")


@dataclass(frozen=True)
class TransformJob:
    """One image to transform: its id (output name), source file, source sha256 and EXIF orientation."""

    isic_id: str
    src: Path
    src_sha256: str
    exif_orientation: int = 1


class JobTable(Sequence[TransformJob]):
    """The jobs of a whole archive as four columns, each ``TransformJob`` made when it is asked for.

    A list of 400,000 jobs, each with its own ``Path``, costs about 250 MB; the columns cost what
    their strings cost (docs/PERFORMANCE.md "ISIC 2024 at archive scale"). The ids stay Python
    strings (every stage step compares them); the image names and hashes are UTF-8 bytes in fixed-width
    numpy columns (about 90 bytes a job instead of about 200 as Python strings), decoded when a job
    is made.
    """

    def __init__(self, base: Path, isic_ids: Sequence[str], images: Sequence[str], sha256: Sequence[str],
                 exif_orientation: Sequence[str | int]) -> None:
        self.base = Path(base)
        self.isic_ids = np.asarray(isic_ids, dtype=object)
        self.images = _utf8_column(images)
        self.sha256 = _utf8_column(sha256)
        # ``or 1``: an empty cell means no EXIF orientation, as upright.
        self.exif = np.asarray([int(v or 1) for v in exif_orientation], dtype=np.int64)
        if not len(self.isic_ids) == len(self.images) == len(self.sha256) == len(self.exif):
            raise ValueError("every column of a JobTable needs one value per job")

    def __len__(self) -> int:
        return len(self.isic_ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return TransformJob(self.isic_ids[index], self.base / self.images[index].decode(), self.sha256_at(index),
                            int(self.exif[index]))

    def sha256_at(self, index: int) -> str:
        return self.sha256[index].decode()

    def __iter__(self) -> Iterator[TransformJob]:
        for i in range(len(self)):
            yield self[i]


def job_columns(jobs: Sequence[TransformJob]) -> tuple[Sequence[str], Callable[[int], str]]:
    """The jobs' ids and their source sha256 by position, without making a ``TransformJob`` per job
    when ``jobs`` is a JobTable (its columns), else gathered from the jobs."""
    if isinstance(jobs, JobTable):
        return jobs.isic_ids, jobs.sha256_at
    digests = [job.src_sha256 for job in jobs]
    return np.asarray([job.isic_id for job in jobs], dtype=object), digests.__getitem__


def _utf8_column(values: Sequence[str]) -> np.ndarray:
    """``values`` as a fixed-width bytes column (an empty table gets width 1)."""
    encoded = [str(value).encode() for value in values]
    return np.array(encoded, dtype=f"S{max(1, max(map(len, encoded), default=1))}")


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


class TransformedOutputs(Mapping[str, TransformedImage]):
    """Every current output by id, as sorted columns (about 100 bytes an image, not 500 as a dict of
    ``TransformedImage``); iterates in id order. ``positions`` looks many ids up at once."""

    def __init__(self, records: Iterator[dict] | Sequence[dict] = ()) -> None:
        ids, width, height, size, digest = [], [], [], [], []
        for record in records:
            ids.append(record["isic_id"])
            width.append(record["width"])
            height.append(record["height"])
            size.append(record["out_bytes"])
            digest.append(record["out_sha256"])
        order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if ids else np.empty(0, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=object)[order]
        self.width = np.asarray(width, dtype=np.int64)[order]
        self.height = np.asarray(height, dtype=np.int64)[order]
        self.file_bytes = np.asarray(size, dtype=np.int64)[order]
        self.sha256 = np.asarray(digest, dtype=object)[order]
        if len(self.ids) > 1 and (self.ids[1:] == self.ids[:-1]).any():
            raise ValueError("an id has two outputs")

    def positions(self, isic_ids: Sequence[str]) -> np.ndarray:
        """Index of each id's output in the columns, -1 where it has none."""
        wanted = np.asarray(isic_ids, dtype=object)
        if not len(self.ids) or not len(wanted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.searchsorted(self.ids, wanted)
        found = (at < len(self.ids)) & (self.ids[np.minimum(at, len(self.ids) - 1)] == wanted)
        return np.where(found, at, -1).astype(np.int64)

    def at(self, position: int) -> TransformedImage:
        return TransformedImage(output_name(self.ids[position]), int(self.width[position]),
                                int(self.height[position]), int(self.file_bytes[position]), self.sha256[position])

    def __getitem__(self, isic_id: str) -> TransformedImage:
        position = int(self.positions([isic_id])[0])
        if position < 0:
            raise KeyError(isic_id)
        return self.at(position)

    def __contains__(self, isic_id: object) -> bool:
        return isinstance(isic_id, str) and int(self.positions([isic_id])[0]) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)


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
    images: TransformedOutputs = field(default_factory=TransformedOutputs)
    worker_restarts: int = 0
    backend: str = "local"  # ISIC_COMPUTE kind: local, dask-local or dask
    compute_workers: int = 0  # worker processes (local) or worker threads of the Dask cluster
    cluster: str = ""  # the Dask cluster that ran it: scheduler, workers, dashboard

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)


def output_name(isic_id: str) -> str:
    """Relative path of an id's output inside ``out_dir``."""
    return f"{IMAGES_DIR}/{isic_id}{OUTPUT_SUFFIX}"


def valid_record(record: dict) -> bool:
    """A state record the runner can trust: a complete output's facts, or a quarantine with its reason."""
    status = record.get("status")
    if status == STATUS_OK:
        return (all(record.get(k) is not None for k in _OK_FIELDS)
                and len(record["sum"]) == 3 and len(record["sumsq"]) == 3)
    if status == STATUS_QUARANTINED:
        return all(record.get(k) is not None for k in ("src_sha256", "fingerprint", "reason"))
    return status in (STATUS_FAILED, STATUS_STARTED)


def journal_line(handle: IO[str], record: dict) -> None:
    handle.write(json.dumps(record, sort_keys=True) + "\n")
    handle.flush()  # reaches the kernel: survives the death of this process


def absorb_journals(state: SqliteLog, state_dir: Path, log: Any = None) -> tuple[dict[str, dict], set[str]]:
    """Fold worker journals into the state and delete them; only call while no worker runs.

    Returns the finished records the state did not hold yet (by id: the results of batches whose
    worker died, and failures) and the ids a worker had started but not finished (what it was doing
    when it died). Remembered: ``ok`` and ``quarantined`` records only. Journals are read a line at
    a time: at the end of a run they hold a record of every image the run did, already recorded.
    """
    finished: dict[str, dict] = {}
    in_progress: set[str] = set()
    journals = sorted(state_dir.glob(f"{JOURNAL_PREFIX}*.jsonl"))
    for path in journals:
        current, bad = None, 0
        for record in iter_jsonl(path):
            if record is None or not isinstance(record.get("isic_id"), str) or not valid_record(record):
                bad += 1
                continue
            isic_id, status = record["isic_id"], record.get("status")
            if status == STATUS_STARTED:
                current = isic_id
                continue
            if current == isic_id:
                current = None
            if status in (STATUS_OK, STATUS_QUARANTINED):
                if state.get(isic_id) == record:
                    finished.pop(isic_id, None)  # recorded already: a later line of the same id wins
                    continue
                state.append(record)
            finished[isic_id] = record
        if bad and log is not None:
            log(f"transform: worker journal {path.name} had {bad} damaged line(s) (a worker killed mid-write); "
                "ignored, those images are transformed again")
        if current is not None:
            in_progress.add(current)
    state.flush()  # committed before the journals that hold the same records go
    for path in journals:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return finished, in_progress


def drop_journals(state: SqliteLog, state_dir: Path) -> None:
    """Commit the state, then delete the worker journals unread: for a run in which every batch came
    back, so every record they hold was recorded from the results (reading them back would parse a
    started line and a record for each image the run did)."""
    state.flush()
    for path in state_dir.glob(f"{JOURNAL_PREFIX}*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
